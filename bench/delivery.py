"""What durable audit delivery costs (INBOUND_EVENTS_DELIVERY=durable, the default: a token
is answered only once JetStream acknowledged its audit event) against buffered delivery
(answered at once, the event sent after), on the same stack in the same bench run.

token_issuer (the publisher of token_issued) is restarted in each mode in turn, buffered,
durable, buffered, durable (ROUNDS times each, interleaved, so a drift in the machine's other
load falls on both), each time after the same warm-up; each gets the loaded JWT run (the
bench's connections: CPU per token and p50 under load) and a one-connection run (p50 of a
lone request, which carries the JetStream round trip in durable mode). A mode's figures are
the means over its rounds; ratios are durable over buffered.
"""
from __future__ import annotations

import base64
import time

MODES = ("buffered", "durable")
DELIVERY_ENV = "INBOUND_EVENTS_DELIVERY"
LONE_CONNECTIONS = 1
ROUNDS = 2


def _restart_issuer(stack, mode: str, url: str, headers: dict[str, str]) -> int:
    """token_issuer again, in `mode`; returns its pid once a token comes back through the edge."""
    from bench import run

    stack.stop_service("token_issuer")
    stack.start_service("token_issuer", extra_env={DELIVERY_ENV: mode})
    deadline = time.monotonic() + 30
    while True:  # the grant service's channel reconnects with back-off
        status, body = run._post(url, headers)
        if status == 200:
            return stack.services["token_issuer"].proc.pid
        if time.monotonic() > deadline:
            raise RuntimeError(f"no token after restarting token_issuer ({mode}): {status} {body[:200]}")
        time.sleep(0.1)


def bench(loadgen, stack, roots: dict[str, int], metrics_urls: dict[str, str], client: tuple[str, str],
          args) -> dict:
    from bench import run

    client_id, secret = client
    url = stack.edge_url + run.TOKEN_PATH
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    headers = {**run.CONTENT_TYPE, "Authorization": f"Basic {basic}"}
    rounds: dict = {mode: {"loaded": [], "lone": []} for mode in MODES}
    for _ in range(ROUNDS):
        for mode in MODES:
            pid = _restart_issuer(stack, mode, url, headers)
            mode_roots = {**roots, "token_issuer": pid}
            rounds[mode]["loaded"].append(run.measured_run(
                loadgen, url, headers, mode_roots, connections=args.connections, seconds=args.seconds,
                warmup=args.warmup, metrics_urls=metrics_urls))
            rounds[mode]["lone"].append(run.measured_run(
                loadgen, url, headers, mode_roots, connections=LONE_CONNECTIONS,
                seconds=max(1.0, args.seconds / 2), warmup=min(1.0, args.warmup)))
    return {mode: {kind: mean_run(runs) for kind, runs in kinds.items()} | {"rounds": kinds}
            for mode, kinds in rounds.items()}


def mean_run(runs: list[dict]) -> dict:
    """The figures the table and ratios use, as means over the rounds (CPU per token: all
    CPU over all tokens)."""
    ok = sum(r["ok"] for r in runs)
    names = {n for r in runs for n in r["cpu_s"]}
    return {
        "ok_per_s": sum(r["ok_per_s"] for r in runs) / len(runs),
        "server_cpu_us_per_ok": sum(r["server_cpu_s"] for r in runs) / ok * 1e6 if ok else None,
        "cpu_us_per_ok": {n: sum(r["cpu_s"].get(n, 0.0) for r in runs) / ok * 1e6 if ok else None for n in names},
        "p50_us": sum(r["p50_us"] for r in runs) / len(runs),
        "p99_us": sum(r["p99_us"] for r in runs) / len(runs),
        "non2xx": sum(r["non2xx"] for r in runs),
    }


def _div(a, b):
    return a / b if a is not None and b else None


def ratios(results: dict) -> dict:
    d = results.get("delivery") or {}
    if not all(m in d for m in MODES):
        return {}
    dur, buf = d["durable"], d["buffered"]
    return {
        "durable_over_buffered_cpu_per_token": _div(dur["loaded"]["server_cpu_us_per_ok"],
                                                    buf["loaded"]["server_cpu_us_per_ok"]),
        "durable_over_buffered_issuer_cpu_per_token": _div(dur["loaded"]["cpu_us_per_ok"].get("token_issuer"),
                                                           buf["loaded"]["cpu_us_per_ok"].get("token_issuer")),
        "durable_over_buffered_p50_loaded": _div(dur["loaded"]["p50_us"], buf["loaded"]["p50_us"]),
        "durable_over_buffered_p50_lone": _div(dur["lone"]["p50_us"], buf["lone"]["p50_us"]),
        "durable_over_buffered_rate": _div(dur["loaded"]["ok_per_s"], buf["loaded"]["ok_per_s"]),
    }


RATIO_LABELS = (
    ("durable_over_buffered_cpu_per_token", "total CPU per token", "x"),
    ("durable_over_buffered_issuer_cpu_per_token", "token_issuer CPU per token", "x"),
    ("durable_over_buffered_p50_loaded", "p50, loaded", "x"),
    ("durable_over_buffered_p50_lone", f"p50, {LONE_CONNECTIONS} connection", "x"),
    ("durable_over_buffered_rate", "token rate", ""),
)


def render(results: dict) -> list[str]:
    d = results.get("delivery") or {}
    if not all(m in d for m in MODES):
        return []
    r = results.get("ratios", {})
    lines = ["", "Audit delivery: durable (answered once JetStream acked the event) vs buffered, JWT, same stack",
             f"  (token_issuer restarted in each mode, {ROUNDS} rounds each, interleaved; means)",
             f"{'':<40}{'rate /s':>10}{'µs/op':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}", "-" * 87]
    for mode in MODES:
        for kind, label in (("loaded", f"{mode}, {results['meta']['connections']} connections"),
                            ("lone", f"{mode}, {LONE_CONNECTIONS} connection")):
            run_ = d[mode][kind]
            lines.append(f"  {label:<38}{run_['ok_per_s']:>10,.0f}{_fmt(run_['server_cpu_us_per_ok'], '{:.1f}'):>10}"
                         f"{run_['p50_us'] / 1000:>9.2f}{run_['p99_us'] / 1000:>9.2f}{run_['non2xx']:>9,}")
    lines.append("  durable / buffered:")
    for key, label, suffix in RATIO_LABELS:
        lines.append(f"    {label:<44}{_fmt(r.get(key), '{:.2f}'):>8}{suffix}")
    return lines


def _fmt(value, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)

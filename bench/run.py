"""`make bench` (python -m bench): one run, figures side by side.

1. raw ES256 signing on one core (in this process, before anything else runs)
2. a bare Starlette/uvicorn endpoint in its own process, under the same load
3. client_credentials through the real edge, a JWT client then an opaque one
4. CPU per token of every process from /proc deltas over the measured window
5. ratios: edge rate / bare rate, total CPU per token / raw signing cost

The machine is shared: nothing here asserts a timing; read the ratios.
Results also go to build/bench/results.json.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import procstat, signing
from bench.loadgen import LoadGen

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "bench" / "results.json"
TOKEN_PATH = "/oauth/token"
FORM = "grant_type=client_credentials"
CONTENT_TYPE = {"Content-Type": "application/x-www-form-urlencoded"}
SERVICE_ORDER = ("edge", "client_credentials", "token_issuer", "client_registry", "postgres", "nats")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bare HTTP app exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"bare HTTP app did not listen on {port} within {timeout}s")


def _post(url: str, headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(url, data=FORM.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


# --- one measured load run ---------------------------------------------------------------------------

def scrape_batches(metrics_urls: dict[str, str]) -> dict[str, tuple[float, float]]:
    """'service: call' -> (items, batches) so far, from each service's inbound_batch_size histogram."""
    out: dict[str, list[float]] = {}
    for service, url in metrics_urls.items():
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            for suffix, slot in (("_sum{", 0), ("_count{", 1)):
                if line.startswith("inbound_batch_size" + suffix):
                    labels, _, value = line.rpartition("} ")
                    call = labels.split('call="', 1)[1].split('"', 1)[0]
                    out.setdefault(f"{service}: {call}", [0.0, 0.0])[slot] = float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def measured_run(loadgen: LoadGen, url: str, headers: dict[str, str], roots: dict[str, int], *,
                 connections: int, seconds: float, warmup: float,
                 metrics_urls: dict[str, str] | None = None) -> dict:
    """Warm-up run, then the measured run with CPU snapshots of every root's process tree around it."""
    if warmup > 0:
        loadgen.run(url, FORM, headers, connections, warmup)
    batches0 = scrape_batches(metrics_urls) if metrics_urls else {}
    all0 = procstat.all_processes()
    cpu0, m0, t0 = procstat.snapshot(roots), procstat.machine(), time.monotonic()
    result = loadgen.run(url, FORM, headers, connections, seconds)
    cpu1, m1, t1 = procstat.snapshot(roots), procstat.machine(), time.monotonic()
    all1 = procstat.all_processes()
    batches1 = scrape_batches(metrics_urls) if metrics_urls else {}
    kids = procstat.children_map()
    ours = {pid for root in roots.values() for pid in procstat.tree_pids(root, kids)} | {os.getpid()}
    wall = t1 - t0
    ok = result["ok"]
    cpu = {name: cpu1[name] - cpu0[name] for name in roots}
    result["window_s"] = wall
    result["cpu_s"] = cpu
    result["cpu_us_per_ok"] = {name: (s / ok * 1e6 if ok else None) for name, s in cpu.items()}
    result["server_cpu_s"] = sum(cpu.values())
    result["server_cpu_us_per_ok"] = result["server_cpu_s"] / ok * 1e6 if ok else None
    result["loadgen_cpu_us_per_ok"] = result["loadgen_cpu_s"] / ok * 1e6 if ok else None
    result["batches"] = {}
    for call, (items1, count1) in sorted(batches1.items()):
        items0, count0 = batches0.get(call, (0.0, 0.0))
        items, count = items1 - items0, count1 - count0
        if count > 0:
            result["batches"][call] = {"batches": count, "items": items, "mean_batch": items / count,
                                       "calls_per_token": count / ok if ok else None}
    busy = m1.busy - m0.busy
    result["machine"] = {
        "busy_cores": busy / wall,
        "steal_cores": (m1.steal - m0.steal) / wall,
        "cores": os.cpu_count(),
        # CPU the machine spent on anything but the measured processes and the load generator
        "other_cores": max(0.0, busy - result["server_cpu_s"] - result["loadgen_cpu_s"]) / wall,
        "top_other_processes": procstat.top_others(all0, all1, ours, wall),
        "processes_started": m1.forks - m0.forks,  # wrk itself is one; Postgres backends count too
    }
    return result


# --- bare HTTP -----------------------------------------------------------------------------------------

def bench_bare(loadgen: LoadGen, args) -> dict:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_app", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_port(port, proc)
        url = f"http://127.0.0.1:{port}{TOKEN_PATH}"
        status, body = _post(url, CONTENT_TYPE)
        if status != 200:
            raise RuntimeError(f"bare HTTP app answered {status}: {body[:200]}")
        return measured_run(loadgen, url, CONTENT_TYPE, {"bare_app": proc.pid},
                            connections=args.connections, seconds=args.seconds, warmup=args.warmup)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the real system -----------------------------------------------------------------------------------

async def _db_admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _sibling_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def _create_clients(addr: str) -> dict[str, tuple[str, str]]:
    from inboundlib import grpcx
    from services.client_registry.api import ClientSpec
    from services.client_registry.client import RegistryClient

    channel = grpcx.channel(addr)
    try:
        registry = RegistryClient(channel)
        out = {}
        for fmt in ("jwt", "opaque"):
            record, secret = await registry.create_client(ClientSpec(
                name=f"bench-{fmt}-{secrets.token_hex(3)}", grant_types=["client_credentials"],
                scopes=["api.read", "api.write"], token_format=fmt, comments="created by make bench"))
            out[fmt] = (record.client_id, secret)
        return out
    finally:
        await channel.close()


def _log_offsets(stack) -> dict[str, int]:
    return {name: (sp.log_path.stat().st_size if sp.log_path.exists() else 0) for name, sp in stack.services.items()}


def _log_findings(stack, offsets: dict[str, int]) -> dict[str, dict]:
    """Per service: log lines written since `offsets`, and the warnings/errors among them."""
    findings = {}
    for name, sp in stack.services.items():
        try:
            with open(sp.log_path, "rb") as f:
                f.seek(offsets.get(name, 0))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        lines = [line for line in text.splitlines() if line.strip()]
        problems = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                level = str(entry.get("level", "")).lower()
                if level in ("warning", "error", "critical", "fatal"):
                    extras = {k: v for k, v in entry.items() if k not in ("ts", "level", "service", "logger", "msg")}
                    exc = extras.pop("exc", "")
                    problems.append({"level": level, "msg": entry.get("msg", ""), "extra": extras,
                                     "exc_last_line": exc.strip().splitlines()[-1] if exc else ""})
            elif any(w in line for w in ("Traceback", "Error", "ERROR", "Exception")):
                problems.append({"level": "raw", "msg": line[:300], "extra": {}, "exc_last_line": ""})
        findings[name] = {"lines": len(lines), "problems": len(problems), "first_problems": problems[:5]}
    return findings


def bench_edge(loadgen: LoadGen, args) -> dict:
    from inboundlib.devstack import SERVICES, Stack

    state = Path(tempfile.mkdtemp(prefix="inbound-bench-stack-"))
    env_db = os.environ.get("DATABASE_URL", "")
    fresh_db = None
    database_url = ""
    if env_db:  # never write into the caller's database: a fresh one beside it, dropped afterwards
        fresh_db = "inbound_bench_" + secrets.token_hex(6)
        asyncio.run(_db_admin(env_db, f'CREATE DATABASE "{fresh_db}"'))
        database_url = _sibling_db(env_db, fresh_db)
    stack = Stack(state, fixed_ports=False, echo=False, database_url=database_url,
                  nats_url=os.environ.get("NATS_URL", ""), extra_env={"INBOUND_KEY_ACTIVATION_DELAY": "0"})
    out: dict = {"postgres": "external (DATABASE_URL; not measured)" if env_db else "private",
                 "nats": "external (NATS_URL; not measured)" if os.environ.get("NATS_URL") else "private"}
    metrics_urls = {"edge": stack.edge_url + "/metrics"}
    try:
        t0 = time.monotonic()
        stack.start_infra()  # as Stack.start(), but each service also serves /metrics on a port of its own
        for name in SERVICES:
            extra = {}
            if name != "edge":
                metrics_port = _free_port()
                extra["INBOUND_METRICS_PORT"] = str(metrics_port)
                metrics_urls[name] = f"http://127.0.0.1:{metrics_port}/metrics"
            stack.start_service(name, extra_env=extra)
        stack.wait_ready()
        out["startup_s"] = time.monotonic() - t0
        roots = {name: sp.proc.pid for name, sp in stack.services.items()}  # every service devstack runs
        if stack.postgres is not None:
            pidfile = stack.postgres.directory / "data" / "postmaster.pid"
            roots["postgres"] = int(pidfile.read_text().split()[0])
        if stack.nats is not None and stack.nats.proc is not None:
            roots["nats"] = stack.nats.proc.pid
        clients = asyncio.run(_create_clients(stack.addr("client_registry")))
        url = stack.edge_url + TOKEN_PATH
        for fmt, (client_id, secret) in clients.items():
            basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
            headers = {**CONTENT_TYPE, "Authorization": f"Basic {basic}"}
            status, body = _post(url, headers)
            if status != 200:
                raise RuntimeError(f"{fmt} client: the edge answered {status}: {body[:300]}")
            token = json.loads(body)["access_token"]
            looks_jwt = token.count(".") == 2
            if looks_jwt != (fmt == "jwt"):
                raise RuntimeError(f"{fmt} client got a token that does not look {fmt}: {token[:40]}...")
            offsets = _log_offsets(stack)
            result = measured_run(loadgen, url, headers, roots, connections=args.connections,
                                  seconds=args.seconds, warmup=args.warmup, metrics_urls=metrics_urls)
            result["token_chars"] = len(token)
            result["service_logs"] = _log_findings(stack, offsets)
            dead = {n: sp.proc.returncode for n, sp in stack.services.items() if sp.proc.poll() is not None}
            if dead:
                result["dead_services"] = dead
            out[fmt] = result
    finally:
        stack.stop()
        if fresh_db:
            try:
                asyncio.run(_db_admin(env_db, f'DROP DATABASE IF EXISTS "{fresh_db}"'))
            except Exception as exc:  # noqa: BLE001 - leave it and say so
                print(f"note: could not drop the bench database {fresh_db}: {exc}", file=sys.stderr)
        shutil.rmtree(state, ignore_errors=True)
    return out


# --- output ---------------------------------------------------------------------------------------------

def _f(value, fmt: str = "{:,.0f}", none: str = "—") -> str:
    return none if value is None else fmt.format(value)


def _ms(us) -> str:
    return _f(us / 1000 if us is not None else None, "{:.2f}")


def ratios(results: dict) -> dict:
    sign = results["signing"]
    bare = results["bare_http"]
    out = {}
    for fmt in ("jwt", "opaque"):
        run = results["edge"].get(fmt)
        if not run:
            continue
        out[f"{fmt}_rate_over_bare_http"] = run["ok_per_s"] / bare["ok_per_s"] if bare["ok_per_s"] else None
        out[f"{fmt}_rate_over_raw_signing"] = run["ok_per_s"] / sign["tokens_per_s"]
        total = run["server_cpu_us_per_ok"]
        out[f"{fmt}_total_cpu_over_signing_cpu"] = total / sign["cpu_us_per_token"] if total else None
        edge = run["cpu_us_per_ok"].get("edge")
        bare_cpu = bare["cpu_us_per_ok"].get("bare_app")
        out[f"{fmt}_edge_cpu_over_bare_http_cpu"] = edge / bare_cpu if edge and bare_cpu else None
    return out


def render(results: dict) -> str:
    sign, bare, edge, r = results["signing"], results["bare_http"], results["edge"], results["ratios"]
    meta = results["meta"]
    lines = []
    w = lines.append
    w("")
    w(f"Inbound bench — {meta['cores']} cores, {meta['connections']} connections, {meta['seconds']:.0f} s measured "
      f"after {meta['warmup']:.0f} s warm-up, load generator: {meta['loadgen_note']}")
    w("Shared, noisy machine: compare the rows and ratios of this one run, not absolute numbers across runs.")
    w("")
    head = f"{'':<40}{'rate /s':>10}{'µs/op':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'non-2xx':>9}{'errors':>8}"
    w(head)
    w("-" * len(head))
    w(f"{'raw ES256 sign, 1 core (pyjwt)':<40}{_f(sign['tokens_per_s']):>10}"
      f"{_f(sign['cpu_us_per_token'], '{:.1f}'):>10}{'':>9}{'':>9}{'':>10}{'':>9}{'':>8}")

    def row(label: str, run: dict, cpu_us) -> None:
        w(f"{label:<40}{_f(run['ok_per_s']):>10}{_f(cpu_us, '{:.1f}'):>10}{_ms(run['p50_us']):>9}"
          f"{_ms(run['p99_us']):>9}{_ms(run['p999_us']):>10}{run['non2xx']:>9,}{run['socket_errors']:>8,}")

    row("bare HTTP (Starlette+uvicorn, 1 proc)", bare, bare["cpu_us_per_ok"].get("bare_app"))
    for fmt, label in (("jwt", "edge client_credentials, JWT (ES256)"), ("opaque", "edge client_credentials, opaque")):
        if fmt in edge:
            row(label, edge[fmt], edge[fmt]["server_cpu_us_per_ok"])
    w("  µs/op: CPU time per operation — signing: this thread; bare HTTP: the server process; "
      "edge rows: all server processes summed")
    w("")
    fmts = [f for f in ("jwt", "opaque") if f in edge]
    names = {name for f in fmts for name in edge[f]["cpu_s"]}
    order = [n for n in SERVICE_ORDER[:4]] + sorted(names - set(SERVICE_ORDER)) + list(SERVICE_ORDER[4:])
    head = f"{'CPU µs per token (from /proc)':<40}" + "".join(f"{f:>12}" for f in fmts) + f"{'bare HTTP':>12}"
    w(head)
    w("-" * len(head))
    for name in order:
        cells = []
        for f in fmts:
            v = edge[f]["cpu_us_per_ok"].get(name)
            cells.append(_f(v, "{:.1f}", none=("external" if name in ("postgres", "nats") else "—")))
        bare_cell = _f(bare["cpu_us_per_ok"].get("bare_app"), "{:.1f}") if name == "edge" else ""
        w(f"{name:<40}" + "".join(f"{c:>12}" for c in cells) + f"{bare_cell:>12}")
    w(f"{'TOTAL server side':<40}" + "".join(f"{_f(edge[f]['server_cpu_us_per_ok'], '{:.1f}'):>12}" for f in fmts)
      + f"{_f(bare['server_cpu_us_per_ok'], '{:.1f}'):>12}")
    w(f"{'  (raw ES256 sign, for scale)':<40}" + "".join(f"{sign['cpu_us_per_token']:>12.1f}" for _ in fmts))
    w(f"{'load generator (' + meta['loadgen'] + ')':<40}"
      + "".join(f"{_f(edge[f]['loadgen_cpu_us_per_ok'], '{:.1f}'):>12}" for f in fmts)
      + f"{_f(bare['loadgen_cpu_us_per_ok'], '{:.1f}'):>12}")
    w(f"{'machine busy, cores (of ' + str(meta['cores']) + ')':<40}"
      + "".join(f"{edge[f]['machine']['busy_cores']:>12.2f}" for f in fmts)
      + f"{bare['machine']['busy_cores']:>12.2f}")
    w(f"{'  of which other processes, cores':<40}"
      + "".join(f"{edge[f]['machine']['other_cores']:>12.2f}" for f in fmts)
      + f"{bare['machine']['other_cores']:>12.2f}")
    w(f"{'  steal, cores':<40}"
      + "".join(f"{edge[f]['machine']['steal_cores']:>12.2f}" for f in fmts)
      + f"{bare['machine']['steal_cores']:>12.2f}")
    w("")
    head = f"{'CPU use per process, cores (of ' + str(meta['cores']) + ')':<40}" + "".join(f"{f:>12}" for f in fmts) \
        + f"{'bare HTTP':>12}"
    w(head)
    w("-" * len(head))
    for name in order:
        cells = [_f(edge[f]["cpu_s"][name] / edge[f]["window_s"] if name in edge[f]["cpu_s"] else None, "{:.2f}",
                    none="external" if name in ("postgres", "nats") else "—") for f in fmts]
        bare_cell = f"{bare['cpu_s']['bare_app'] / bare['window_s']:.2f}" if name == "edge" else ""
        w(f"{name:<40}" + "".join(f"{c:>12}" for c in cells) + f"{bare_cell:>12}")
    w(f"{'load generator (' + meta['loadgen'] + ')':<40}"
      + "".join(f"{edge[f]['loadgen_cpu_s'] / edge[f]['window_s']:>12.2f}" for f in fmts)
      + f"{bare['loadgen_cpu_s'] / bare['window_s']:>12.2f}")
    w("  (a process well under 1.00 while the machine has idle cores is waiting, not computing)")
    calls = sorted({c for f in fmts for c in edge[f].get("batches", {})})
    if calls:
        w("")
        head = f"{'Batched calls in the window (/metrics)':<48}" + "".join(f"{f + ' items/batch':>20}" for f in fmts)
        w(head)
        w("-" * len(head))
        for call in calls:
            cells = []
            for f in fmts:
                b = edge[f].get("batches", {}).get(call)
                cells.append(f"{b['mean_batch']:.1f} ({b['calls_per_token']:.2f}/tok)" if b else "—")
            w(f"{call:<48}" + "".join(f"{c:>20}" for c in cells))
    w("")
    w("Ratios (same run)")
    w("-" * 60)
    for f in fmts:
        w(f"  {f:<7} edge token rate / bare HTTP rate       {_f(r[f + '_rate_over_bare_http'], '{:.2f}'):>8}")
        w(f"  {f:<7} edge token rate / raw signing rate     {_f(r[f + '_rate_over_raw_signing'], '{:.2f}'):>8}")
        w(f"  {f:<7} total CPU per token / raw ES256 sign   {_f(r[f + '_total_cpu_over_signing_cpu'], '{:.1f}'):>8}x")
        w(f"  {f:<7} edge CPU per token / bare HTTP per req {_f(r[f + '_edge_cpu_over_bare_http_cpu'], '{:.1f}'):>8}x")
    if results["warnings"]:
        w("")
        for warning in results["warnings"]:
            w("WARNING: " + warning)
    w("")
    w(f"results: {meta['out']}")
    return "\n".join(lines)


def collect_warnings(results: dict) -> list[str]:
    warnings = []
    runs = [("bare HTTP", results["bare_http"])] + \
        [(f"edge {f}", results["edge"][f]) for f in ("jwt", "opaque") if f in results["edge"]]
    for label, run in runs:
        if run["non2xx"] or run["socket_errors"]:
            warnings.append(f"{label}: INVALID RUN — {run['non2xx']} non-2xx answers, {run['socket_errors']} socket "
                            f"errors (connect {run['err_connect']}, read {run['err_read']}, write {run['err_write']}, "
                            f"timeout {run['err_timeout']}); first non-2xx: {run['sample_non2xx'] or '—'}")
        for name, found in (run.get("service_logs") or {}).items():
            if found["problems"]:
                first = found["first_problems"][0]
                warnings.append(f"{label}: {name} logged {found['problems']} warning/error line(s) during the run; "
                                f"first: [{first['level']}] {first['msg']} {first['extra'] or ''} "
                                f"{first['exc_last_line']}".rstrip())
        machine = run["machine"]
        if machine["other_cores"] > 0.25:
            top = ", ".join(f"{p['comm']}[{p['pid']}] {p['cores']:.2f}" for p in machine["top_other_processes"])
            warnings.append(f"{label}: other processes used {machine['other_cores']:.2f} of {machine['cores']} cores "
                            f"during the run (noisy machine: {machine['processes_started']} processes started "
                            f"in the window; top long-lived: {top or 'none'})")
        if run.get("dead_services"):
            warnings.append(f"{label}: services exited during the run: {run['dead_services']}")
    if not results["meta"]["loadgen"] == "wrk":
        warnings.append("wrk was not available: the Python fallback load generator competes with the server "
                        "for the same cores, so rates are lower than wrk would show")
    return warnings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load run (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each run (2)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--sign-seconds", type=float, default=2.0)
    parser.add_argument("--python-loadgen", action="store_true", help="use the Python fallback even if wrk exists")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install wrk when it is missing")
    parser.add_argument("--skip-edge", action="store_true", help="only the machine's limits (no stack)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    started = time.monotonic()
    loadgen = LoadGen.create(install=not args.no_install, prefer_python=args.python_loadgen)
    print(f"load generator: {loadgen.note}", flush=True)
    print(f"1/3 raw ES256 signing for {args.sign_seconds:.0f} s ...", flush=True)
    sign = signing.measure(args.sign_seconds)
    print(f"2/3 bare HTTP endpoint, {args.warmup:.0f}+{args.seconds:.0f} s ...", flush=True)
    bare = bench_bare(loadgen, args)
    edge: dict = {}
    if not args.skip_edge:
        print(f"3/3 the real stack: client_credentials JWT and opaque, {args.warmup:.0f}+{args.seconds:.0f} s "
              f"each ...", flush=True)
        edge = bench_edge(loadgen, args)
    results = {
        "meta": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "python": platform.python_version(), "cores": os.cpu_count(),
            "connections": args.connections, "seconds": args.seconds, "warmup": args.warmup,
            "loadgen": loadgen.kind, "loadgen_note": loadgen.note, "out": str(args.out),
        },
        "signing": sign,
        "bare_http": bare,
        "edge": edge,
    }
    results["ratios"] = ratios(results) if edge else {}
    results["warnings"] = collect_warnings(results)
    results["meta"]["elapsed_s"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(render(results) if edge else json.dumps(results, indent=2))
    print(f"(bench took {results['meta']['elapsed_s']:.0f} s)")

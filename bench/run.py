"""`make bench` (python -m bench): one run, figures side by side.

1. raw ES256 signing and verification on one core (in this process, before anything else runs)
2. a bare Starlette/uvicorn endpoint in its own process, under the same load
3. a bare gRPC echo server (grpc.aio) in its own process, at 64 calls in flight
4. client_credentials through the real edge, a JWT client then an opaque one; then, on the
   same stack, gRPC Introspect on token_issuer at 64 in flight for JWT and opaque tokens,
   through the coalescing IssuerClient and as plain one-item unary calls. JWTs twice: at the
   stack's token_issuer, whose verified-JWT cache holds every pool token (repeat tokens, the
   warm path), and at a second token_issuer replica started for it with
   INBOUND_VERIFIED_JWT_CACHE=0, so every call verifies the ES256 signature (the cold path);
   then audit delivery: token_issuer restarted buffered, then durable, JWT loaded and at one
   connection in each (bench/delivery.py; --skip-delivery leaves it out)
5. client_credentials again, JWT then opaque under the same wrk load, through a second stack in
   single-process mode (services.all_in_one: registry, issuer, grant, audit and edge in one process,
   calling one another in process), with its own Postgres and its own private NATS, started after
   the first stack stopped (--skip-single leaves it out)
6. what mutual TLS on every gRPC hop costs on the token path: two more stacks of separate processes,
   alive together, the same but for INBOUND_GRPC_TLS (mtls, the default; plaintext), each with its
   own Postgres and NATS; JWT client_credentials through one then the other, two rounds, means
   (--skip-plaintext leaves it out)
   Users (bench/passwords.py; --skip-users leaves them out): a bare argon2id hash and verify with the registry's
   parameters beside raw signing in 1.; on the multi-process stack, password-grant logins over many users,
   refresh-token chains (each request presents the previous answer's refresh token) and wrong username against
   wrong password, alternating; on the single process, logins, refresh chains, and client_credentials' p99 alone
   and beside a login burst in the same process
   The browser (bench/codeflow.py; --skip-browser leaves it out): raw RS256 signing (the ID token's) in 1.; on
   each of the two stacks, a public client and one user per connection, each connection's browser signed in and
   consenting once through the pages' own forms (sessions warm), then the whole authorization code flow with PKCE
   (authorize -> code -> token) and the code-for-token exchange alone (codes minted before the window)
   Federation (bench/federation.py; --skip-federation leaves it out): raw RS256 verification in 1.; on each of
   the two stacks, the demo IdP (services/demo_idp.py) registered as an OpenID provider, a JWT-bearer integration
   and a client allowed both grants; JWT bearer grants and token exchanges of the provider's ID tokens (each
   assertion and token used once), and gRPC introspection of the provider's access tokens (keys warm)
7. CPU per operation of every process from /proc deltas over the measured window
8. ratios: edge rate / bare HTTP rate, total CPU per token / raw signing cost,
   single-process rate / multi-process rate, multi-process total CPU per token / single-process,
   single-process CPU per token / raw signing cost,
   introspections/s / echo calls/s, issuer CPU per introspection / echo CPU per call,
   JWT issuer CPU per introspection / raw ES256 verify, cache off / cache on,
   durable / buffered audit delivery (CPU per token, p50), mTLS / plaintext gRPC (CPU per token,
   rate, p50), logins/s/core / bare argon2id verifies/s/core and / Keycloak's published 15 per vCPU,
   refreshes/s/core / Keycloak's 120 per vCPU, client_credentials p99 beside a login burst / alone, and the
   wrong-username / wrong-password difference of medians over their spread, code flows/s/core and
   exchanges/s/core / client_credentials tokens/s/core of the same stack, CPU per flow / raw ES256 + RS256 signing,
   JWT bearer grants/s/core and token exchanges/s/core / client_credentials tokens/s/core, CPU per grant / the raw
   verify + sign it needs, third-party introspections/s / our own JWTs' (cache on and off) and / echo calls/s

The HTTP load comes from wrk; the gRPC load from bench.grpcload, a Python grpc.aio
process (there is no wrk for gRPC) that shares the cores with the servers and whose
own CPU is measured and shown.

The machine is shared: nothing here asserts a timing; read the ratios.
Results also go to build/bench/results.json.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import codeflow, delivery, federation, passwords, procstat, signing
from bench.loadgen import LoadGen
from inboundlib import identity, pgroles
from inboundlib.localservers import free_port, wait_port
from services.modules import ALL_IN_ONE

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "bench" / "results.json"
TOKEN_PATH = "/oauth/token"
FORM = "grant_type=client_credentials"
CONTENT_TYPE = {"Content-Type": "application/x-www-form-urlencoded"}
ECHO_PAYLOAD = 200  # bytes each way per echo call
GRPC_LOADGEN_NOTE = ("Python grpc.aio + uvloop in 1 process of its own (no wrk for gRPC): it shares the "
                     f"{os.cpu_count()} cores with the servers; its CPU is shown")
SERVICE_ORDER = ("edge", "client_credentials", "token_issuer", "client_registry", "postgres", "nats")


def _post(url: str, headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(url, data=FORM.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


# --- one measured load run ---------------------------------------------------------------------------

def _labels(text: str) -> dict[str, str]:
    out = {}
    for part in text.split('",'):
        key, _, value = part.partition('="')
        out[key.strip(",")] = value.rstrip('"')
    return out


def parse_metrics(text: str, service: str, out: dict[str, dict[str, list[float]]] | None = None) -> dict:
    """From one service's /metrics text: "batches" — 'service: call' -> [items, batches] so far, from the
    inbound_batch_size histogram; "rpcs" — 'service: method' -> [seconds, calls] so far of gRPC calls
    served with status OK, from inbound_rpc_server_seconds."""
    out = out if out is not None else {"batches": {}, "rpcs": {}}
    for line in text.splitlines():
        for metric, kind in (("inbound_batch_size", "batches"), ("inbound_rpc_server_seconds", "rpcs")):
            for suffix, slot in (("_sum{", 0), ("_count{", 1)):
                if not line.startswith(metric + suffix):
                    continue
                labels_text, _, value = line[len(metric + suffix):].rpartition("} ")
                labels = _labels(labels_text)
                if kind == "rpcs" and labels.get("code") != "OK":
                    continue
                key = f"{service}: {labels.get('call') or labels.get('method', '')}"
                out[kind].setdefault(key, [0.0, 0.0])[slot] = float(value)
    return out


def scrape_metrics(metrics_urls: dict[str, str]) -> dict[str, dict[str, tuple[float, float]]]:
    """parse_metrics over every service's /metrics (a service that does not answer is left out)."""
    out: dict[str, dict[str, list[float]]] = {"batches": {}, "rpcs": {}}
    for service, url in metrics_urls.items():
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            continue
        parse_metrics(text, service, out)
    return {kind: {k: (v[0], v[1]) for k, v in rows.items()} for kind, rows in out.items()}


def scrape_batches(metrics_urls: dict[str, str]) -> dict[str, tuple[float, float]]:
    """'service: call' -> (items, batches) so far, from each service's inbound_batch_size histogram."""
    return scrape_metrics(metrics_urls)["batches"]


def measure_window(roots: dict[str, int], load, *, metrics_urls: dict[str, str] | None = None,
                   loadgen_pids: tuple[int, ...] = ()) -> dict:
    """Run `load()` (-> a result dict with "ok" and "loadgen_cpu_s") with CPU snapshots of every root's
    process tree, of the machine and of the services' metrics around it."""
    metrics0 = scrape_metrics(metrics_urls) if metrics_urls else {"batches": {}, "rpcs": {}}
    all0 = procstat.all_processes()
    cpu0, m0, t0 = procstat.snapshot(roots), procstat.machine(), time.monotonic()
    result = load()
    cpu1, m1, t1 = procstat.snapshot(roots), procstat.machine(), time.monotonic()
    all1 = procstat.all_processes()
    metrics1 = scrape_metrics(metrics_urls) if metrics_urls else {"batches": {}, "rpcs": {}}
    kids = procstat.children_map()
    ours = {pid for root in roots.values() for pid in procstat.tree_pids(root, kids)} | {os.getpid()} \
        | set(loadgen_pids)
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
    for call, (items1, count1) in sorted(metrics1["batches"].items()):
        items0, count0 = metrics0["batches"].get(call, (0.0, 0.0))
        items, count = items1 - items0, count1 - count0
        if count > 0:
            result["batches"][call] = {"batches": count, "items": items, "mean_batch": items / count,
                                       "calls_per_token": count / ok if ok else None}
    result["rpcs_served"] = {}
    for method, (secs1, count1) in sorted(metrics1["rpcs"].items()):
        secs0, count0 = metrics0["rpcs"].get(method, (0.0, 0.0))
        if count1 - count0 > 0:
            result["rpcs_served"][method] = {"calls": count1 - count0,
                                             "mean_handler_us": (secs1 - secs0) / (count1 - count0) * 1e6}
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


def measured_run(loadgen: LoadGen, url: str, headers: dict[str, str], roots: dict[str, int], *,
                 connections: int, seconds: float, warmup: float,
                 metrics_urls: dict[str, str] | None = None) -> dict:
    """Warm-up run, then the measured run with CPU snapshots of every root's process tree around it."""
    if warmup > 0:
        loadgen.run(url, FORM, headers, connections, warmup)
    return measure_window(roots, lambda: loadgen.run(url, FORM, headers, connections, seconds),
                          metrics_urls=metrics_urls)


def grpc_measured_run(mode: str, target: str, roots: dict[str, int], *, concurrency: int, seconds: float,
                      warmup: float, tokens_file: str = "", metrics_urls: dict[str, str] | None = None,
                      payload: int = ECHO_PAYLOAD, tls_env: dict[str, str] | None = None) -> dict:
    """One bench.grpcload process: it connects and warms up on its own, then runs its measured
    `seconds` when told, inside CPU snapshots of every root (and of its own CPU, by itself).
    `tls_env`: its TLS settings (inboundlib.tls; a stack's `tls_env(caller)`), plaintext when None."""
    cmd = [sys.executable, "-m", "bench.grpcload", "--mode", mode, "--target", target,
           "--concurrency", str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup),
           "--payload", str(payload)]
    if tokens_file:
        cmd += ["--tokens", tokens_file]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_")}
    env.update(tls_env if tls_env is not None else {"INBOUND_GRPC_TLS": "plaintext"})
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
    reader.start()

    def expect(prefix: str) -> dict:
        while True:
            line = proc.stdout.readline()
            if not line:
                proc.wait(10)
                reader.join(2)
                raise RuntimeError(f"gRPC load generator ({mode}) exited {proc.returncode} before {prefix}: "
                                   + "".join(stderr_lines)[-2000:])
            if line.startswith(prefix + " "):
                return json.loads(line[len(prefix) + 1:])

    def load() -> dict:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return expect("GRPC_RESULT")

    try:
        ready = expect("READY")
        result = measure_window(roots, load, metrics_urls=metrics_urls, loadgen_pids=(proc.pid,))
        result["warmup"] = ready
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result["loadgen"] = "python-grpc-aio"
    return result


# --- bare HTTP -----------------------------------------------------------------------------------------

def bench_bare(loadgen: LoadGen, args) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_app", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 20, proc, "bare HTTP app")
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


# --- bare gRPC ------------------------------------------------------------------------------------------

def bench_grpc_echo(args) -> dict:
    """bench.grpc_echo in its own process under bench.grpcload at the same concurrency as introspection."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.grpc_echo", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 20, proc, "bare gRPC echo")
        result = grpc_measured_run("echo", f"127.0.0.1:{port}", {"grpc_echo": proc.pid},
                                   concurrency=args.grpc_concurrency, seconds=args.grpc_seconds,
                                   warmup=args.grpc_warmup)
        result["payload_bytes"] = ECHO_PAYLOAD
        return result
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


async def _create_clients(stack) -> dict[str, tuple[str, str]]:
    from services.client_registry.api import ClientSpec
    from services.client_registry.client import RegistryClient, add_missing_scopes

    channel = stack.channel("client_registry")  # as the operator
    try:
        registry = RegistryClient(channel)
        await add_missing_scopes(registry, ["api.read", "api.write"])
        out = {}
        for fmt in ("jwt", "opaque"):
            record, secret = await registry.create_client(ClientSpec(
                name=f"bench-{fmt}-{secrets.token_hex(3)}", grant_types=["client_credentials"],
                scopes=["api.read", "api.write"], token_format=fmt, comments="created by make bench"))
            out[fmt] = (record.client_id, secret)
        return out
    finally:
        await channel.close()


async def _issue_tokens(stack, clients: dict[str, tuple[str, str]], count: int,
                        lifetime: int) -> dict[str, list[str]]:
    """`count` access tokens of each format, through IssuerClient.issue (coalesced), for the bench clients."""
    from inboundlib import identity
    from services.token_issuer.api import IssueRequest
    from services.token_issuer.client import IssuerClient

    channel = stack.channel("token_issuer", caller=identity.service("client_credentials"))  # as a grant service
    try:
        issuer = IssuerClient(channel)
        gate = asyncio.Semaphore(64)
        out = {}
        for fmt, (client_id, _) in clients.items():
            async def one(client_id: str = client_id, fmt: str = fmt) -> str:
                async with gate:
                    issued = await issuer.issue(IssueRequest(
                        client_id=client_id, subject=client_id, scopes=("api.read",), format=fmt,
                        lifetime_seconds=lifetime, grant_type="client_credentials"))
                    return issued.access_token
            out[fmt] = list(await asyncio.gather(*(one() for _ in range(count))))
        return out
    finally:
        await channel.close()


INTROSPECT_MODES = ("batched", "unary")
# results["introspection"] keys, in the order they run: JWT at the stack's token_issuer (its verified-JWT cache
# on, as deployed: every pool token is in it after the first pass), the same JWTs at a second replica started
# with the cache off (every call verifies the signature), then opaque tokens (no signature to verify).
JWT_COLD = "jwt_cold"
INTROSPECT_KINDS = ("jwt", JWT_COLD, "opaque")
COLD_ISSUER_KEY = "issuer-cold"  # devstack key of the cache-off replica
IDLE_ISSUER = "token_issuer_idle"  # the stack's own token_issuer while the cache-off replica takes the load
INTROSPECT_METHOD = "/inbound.issuer.v1.TokenIssuer/Introspect"
GRPC_ROWS = (("jwt", "batched", "introspect JWT, batched, repeat tokens (verified-JWT cache)"),
             ("jwt", "unary", "introspect JWT, unary, repeat tokens (verified-JWT cache)"),
             (JWT_COLD, "batched", "introspect JWT, batched, verified each call (cache off)"),
             (JWT_COLD, "unary", "introspect JWT, unary, verified each call (cache off)"),
             ("opaque", "batched", "introspect opaque, batched (opaque-token cache)"),
             ("opaque", "unary", "introspect opaque, unary (opaque-token cache)"))
GRPC_LABELS = {(kind, mode): label for kind, mode, label in GRPC_ROWS}
GRPC_COLUMNS = {("jwt", "batched"): "warm batch", ("jwt", "unary"): "warm unary",
                (JWT_COLD, "batched"): "cold batch", (JWT_COLD, "unary"): "cold unary",
                ("opaque", "batched"): "opq batch", ("opaque", "unary"): "opq unary"}
GRPC_TAGS = {"jwt": "JWT warm", JWT_COLD: "JWT cold", "opaque": "opaque"}
JWT_CACHE_STATE = {"jwt": "on (the default, 50,000 entries; every pool token already in it)",
                   JWT_COLD: "off (INBOUND_VERIFIED_JWT_CACHE=0 on a second replica: every call verifies)"}


def _introspect_run(stack, kind: str, mode: str, target: str, roots: dict[str, int], metrics_urls: dict[str, str],
                    tokens_path: Path, tokens: list[str], args) -> dict:
    offsets = _log_offsets(stack)
    result = grpc_measured_run(mode, target, roots, concurrency=args.grpc_concurrency, seconds=args.grpc_seconds,
                               warmup=args.grpc_warmup, tokens_file=str(tokens_path), metrics_urls=metrics_urls,
                               tls_env=stack.tls_env(identity.resource_server("sample")))  # it introspects
    result["label"] = GRPC_LABELS[(kind, mode)]
    result["target"] = target
    if kind in JWT_CACHE_STATE:
        result["verified_jwt_cache"] = JWT_CACHE_STATE[kind]
    result["token_chars"] = sum(len(t) for t in tokens) / len(tokens)
    served = result["rpcs_served"].get(f"token_issuer: {INTROSPECT_METHOD}")
    result["issuer_introspect_rpcs"] = served["calls"] if served else 0
    result["items_per_rpc"] = result["ok"] / served["calls"] if served and served["calls"] else None
    result["service_logs"] = _log_findings(stack, offsets)
    dead = {n: sp.proc.returncode for n, sp in stack.services.items() if sp.proc.poll() is not None}
    if dead:
        result["dead_services"] = dead
    return result


def cold_replica_view(roots: dict[str, int], metrics_urls: dict[str, str], cold_pid: int,
                      cold_metrics_url: str) -> tuple[dict[str, int], dict[str, str]]:
    """Roots and /metrics for a run against the cache-off replica: it is "token_issuer" (the replica under
    load), the stack's own token_issuer stays measured as IDLE_ISSUER (it should serve nothing)."""
    cold_roots = {name: pid for name, pid in roots.items() if name != "token_issuer"}
    cold_roots["token_issuer"] = cold_pid
    cold_metrics = {name: url for name, url in metrics_urls.items() if name != "token_issuer"}
    cold_metrics["token_issuer"] = cold_metrics_url
    if "token_issuer" in roots:
        cold_roots[IDLE_ISSUER] = roots["token_issuer"]
    if "token_issuer" in metrics_urls:
        cold_metrics[IDLE_ISSUER] = metrics_urls["token_issuer"]
    return cold_roots, cold_metrics


def _env_of(pid: int, name: str) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        key, _, value = item.partition(b"=")
        if key.decode(errors="replace") == name:
            return value.decode(errors="replace")
    return None


def bench_cold_jwt(stack, roots: dict[str, int], metrics_urls: dict[str, str], tokens_path: Path,
                   tokens: list[str], args) -> dict:
    """The JWT pool again, at a second token_issuer replica started with its verified-JWT cache off, so every
    introspection verifies the ES256 signature; stopped afterwards."""
    from services.devstack import free_port

    metrics_port = free_port()
    t0 = time.monotonic()
    sp = stack.start_service("token_issuer", port=free_port(), key=COLD_ISSUER_KEY,
                             extra_env={"INBOUND_VERIFIED_JWT_CACHE": "0",
                                        "INBOUND_METRICS_PORT": str(metrics_port)})
    out: dict = {}
    try:
        startup = time.monotonic() - t0
        cache_env = _env_of(sp.proc.pid, "INBOUND_VERIFIED_JWT_CACHE")
        cold_roots, cold_metrics = cold_replica_view(roots, metrics_urls, sp.proc.pid,
                                                     f"http://127.0.0.1:{metrics_port}/metrics")
        target = f"127.0.0.1:{sp.port}"
        for mode in INTROSPECT_MODES:
            result = _introspect_run(stack, JWT_COLD, mode, target, cold_roots, cold_metrics, tokens_path, tokens,
                                     args)
            result["replica"] = {"key": COLD_ISSUER_KEY, "pid": sp.proc.pid, "startup_s": startup,
                                 "INBOUND_VERIFIED_JWT_CACHE": cache_env}
            idle = result["rpcs_served"].get(f"{IDLE_ISSUER}: {INTROSPECT_METHOD}")
            result["idle_issuer_introspect_rpcs"] = idle["calls"] if idle else 0
            out[mode] = result
    finally:
        code = stack.stop_service(COLD_ISSUER_KEY)
    for result in out.values():
        result["replica"]["exit_code"] = code
    return out


def bench_introspection(stack, roots: dict[str, int], metrics_urls: dict[str, str],
                        clients: dict[str, tuple[str, str]], args) -> dict:
    """gRPC Introspect on token_issuer at `grpc_concurrency` in flight: a pool of tokens of each format,
    then for each format the product's coalescing IssuerClient and plain one-item unary calls; JWTs twice:
    at the stack's token_issuer (verified-JWT cache on) and at a second replica with the cache off."""
    t0 = time.monotonic()
    pools = asyncio.run(_issue_tokens(stack, clients, args.introspect_tokens,
                                      args.token_lifetime))
    out: dict = {"tokens_per_format": args.introspect_tokens, "token_lifetime_s": args.token_lifetime,
                 "issue_s": time.monotonic() - t0,
                 "row_labels": {f"{kind}/{mode}": label for kind, mode, label in GRPC_ROWS}}
    with tempfile.TemporaryDirectory(prefix="inbound-bench-tokens-") as tmp:
        for fmt, tokens in pools.items():
            looks_jwt = all(t.count(".") == 2 for t in tokens)
            if looks_jwt != (fmt == "jwt"):
                raise RuntimeError(f"{fmt} client got tokens that do not look {fmt}")
            path = Path(tmp) / f"{fmt}.txt"
            path.write_text("\n".join(tokens) + "\n")
            out[fmt] = {mode: _introspect_run(stack, fmt, mode, stack.addr("token_issuer"), roots, metrics_urls,
                                              path, tokens, args)
                        for mode in INTROSPECT_MODES}
            if fmt == "jwt" and not args.skip_cold_jwt:
                out[JWT_COLD] = bench_cold_jwt(stack, roots, metrics_urls, path, tokens, args)
    return out


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


def log_warnings(label: str, run: dict) -> list[str]:
    """One warning per service that logged warnings or errors during a run (_log_findings)."""
    warnings = []
    for name, found in (run.get("service_logs") or {}).items():
        if found["problems"]:
            first = found["first_problems"][0]
            warnings.append(f"{label}: {name} logged {found['problems']} warning/error line(s) during the run; "
                            f"first: [{first['level']}] {first['msg']} {first['extra'] or ''} "
                            f"{first['exc_last_line']}".rstrip())
    return warnings


def run_warnings(label: str, run: dict) -> list[str]:
    """What any measured run is judged by besides its answers: the services' logged problems,
    services that exited during it, and other processes' share of the machine."""
    warnings = log_warnings(label, run)
    machine = run["machine"]
    if machine["other_cores"] > 0.25:
        top = ", ".join(f"{p['comm']}[{p['pid']}] {p['cores']:.2f}" for p in machine.get("top_other_processes", ()))
        warnings.append(f"{label}: other processes used {machine['other_cores']:.2f} of {machine['cores']} cores "
                        f"during the run (noisy machine: {machine.get('processes_started', 0)} processes started "
                        f"in the window; top long-lived: {top or 'none'})")
    if run.get("dead_services"):
        warnings.append(f"{label}: services exited during the run: {run['dead_services']}")
    return warnings


@contextlib.contextmanager
def _bench_database():
    """Yields (database_url, external): with DATABASE_URL set, a fresh database beside it, dropped afterwards
    (never the caller's own); else "" (the stack starts a private Postgres server of its own)."""
    env_db = os.environ.get("DATABASE_URL", "")
    if not env_db:
        yield "", False
        return
    fresh_db = "inbound_bench_" + secrets.token_hex(6)
    asyncio.run(_db_admin(env_db, f'CREATE DATABASE "{fresh_db}"'))
    try:
        yield _sibling_db(env_db, fresh_db), True
    finally:
        try:
            asyncio.run(_db_admin(env_db, f'DROP DATABASE IF EXISTS "{fresh_db}"'))
            pgroles.drop_roles(env_db, fresh_db)  # the stack's migration and runtime roles of that database
        except Exception as exc:  # noqa: BLE001 - leave it and say so
            print(f"note: could not drop the bench database {fresh_db}: {exc}", file=sys.stderr)


def _infra_roots(stack, roots: dict[str, int]) -> dict[str, int]:
    """`roots` plus the stack's private Postgres and NATS servers (an external one is not measured)."""
    roots = dict(roots)
    if stack.postgres is not None:
        pidfile = stack.postgres.directory / "data" / "postmaster.pid"
        roots["postgres"] = int(pidfile.read_text().split()[0])
    if stack.nats is not None and stack.nats.proc is not None:
        roots["nats"] = stack.nats.proc.pid
    return roots


def _token_runs(loadgen: LoadGen, stack, roots: dict[str, int], metrics_urls: dict[str, str],
                clients: dict[str, tuple[str, str]], args) -> dict:
    """client_credentials through the stack's edge for each bench client (JWT, then opaque): one token
    checked by hand, then measured_run with every root's CPU and the services' /metrics around it."""
    url = stack.edge_url + TOKEN_PATH
    out = {}
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
    return out


def bench_edge(loadgen: LoadGen, args) -> dict:
    from services.devstack import Stack
    from services.modules import NAMES

    state = Path(tempfile.mkdtemp(prefix="inbound-bench-stack-"))
    out: dict = {"nats": "external (NATS_URL; not measured)" if os.environ.get("NATS_URL") else "private"}
    try:
        with _bench_database() as (database_url, external_db):
            out["postgres"] = "external (DATABASE_URL; not measured)" if external_db else "private"
            stack = Stack(state, fixed_ports=False, echo=False, database_url=database_url,
                          nats_url=os.environ.get("NATS_URL", ""),
                          extra_env={"INBOUND_KEY_ACTIVATION_DELAY": "0", **passwords.LOGIN_ENV})
            # every service of the module table, each serving /metrics on its metrics port
            metrics_urls = {name: stack.metrics_url(name) for name in NAMES}
            try:
                t0 = time.monotonic()
                stack.start()
                out["startup_s"] = time.monotonic() - t0
                # every service devstack runs, and its private Postgres and NATS
                roots = _infra_roots(stack, {name: sp.proc.pid for name, sp in stack.services.items()})
                clients = asyncio.run(_create_clients(stack))
                out.update(_token_runs(loadgen, stack, roots, metrics_urls, clients, args))
                if not args.skip_users:
                    print(f"   users: {args.login_users} users, password grant logins at {args.login_connections} "
                          f"in flight ({args.login_seconds:.0f} s), refresh chains, wrong username against wrong "
                          f"password ({args.timing_tries} tries each) ...", flush=True)
                    out["users"] = passwords.bench_stack(stack, roots, metrics_urls, args, timing=True)
                if not args.skip_browser:
                    print(f"   the browser: authorization code + PKCE, {args.flow_connections} browsers with warm sessions "
                          f"(signed in, consent remembered): the whole flow, then the code exchange alone, "
                          f"{args.warmup:.0f}+{args.seconds:.0f} s ...", flush=True)
                    out["browser"] = codeflow.bench_stack(stack, roots, metrics_urls, args)
                if not args.skip_federation:
                    print(f"   federation: {federation_note(args)} ...", flush=True)
                    out["federation"] = federation.bench_stack(stack, roots, metrics_urls, args)
                if not args.skip_introspection:
                    print(f"   introspection over gRPC: {args.introspect_tokens:,} tokens of each format, then "
                          f"{' and '.join(INTROSPECT_MODES)} calls for JWT (verified-JWT cache on"
                          f"{'' if args.skip_cold_jwt else ', then off on a second token_issuer replica'}) and "
                          f"opaque, {args.grpc_warmup:.1f}+{args.grpc_seconds:.0f} s each ...", flush=True)
                    out["introspection"] = bench_introspection(stack, roots, metrics_urls, clients, args)
                if not args.skip_delivery:
                    print(f"   audit delivery: token_issuer restarted buffered, then durable; JWT at "
                          f"{args.connections} and {delivery.LONE_CONNECTIONS} connection(s) each ...", flush=True)
                    out["delivery"] = delivery.bench(loadgen, stack, roots, metrics_urls, clients["jwt"], args)
            finally:
                stack.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return out


def federation_note(args) -> str:
    runs = [name for name, skip in (("JWT bearer grants", args.skip_jwt_bearer),
                                    ("token exchanges", args.skip_token_exchange)) if not skip]
    note = f"{' and '.join(runs) or 'no grants'} at {args.federation_connections} connections, " \
           f"{args.warmup:.0f}+{args.seconds:.0f} s each"
    if not args.skip_foreign_introspection:
        note += f"; gRPC introspection of third-party tokens, batched and unary, {args.grpc_seconds:.0f} s each"
    return note


SINGLE_PROCESS = ALL_IN_ONE  # devstack's key and the module (services.all_in_one) of the single process


def bench_single(loadgen: LoadGen, args) -> dict:
    """The same client_credentials load (JWT, then opaque) through a second stack started in single-process
    mode: services.all_in_one hosts client_registry, token_issuer, the grant, audit and the edge, which call
    one another in process. It has a private NATS of its own (never NATS_URL, never the multi-process stack's:
    audit's durable consumer would split the events between the two) and its own Postgres (a private server,
    or a fresh database beside DATABASE_URL). Started after the multi-process stack stopped, stopped after."""
    from services.devstack import Stack

    state = Path(tempfile.mkdtemp(prefix="inbound-bench-single-"))
    out: dict = {"process": f"services.{SINGLE_PROCESS}", "nats": "a private nats-server of its own"}
    try:
        with _bench_database() as (database_url, external_db):
            out["postgres"] = "a fresh database beside DATABASE_URL; not measured" if external_db \
                else "a private server of its own"
            stack = Stack(state, fixed_ports=False, echo=False, database_url=database_url, nats_url="",
                          single=True, extra_env={"INBOUND_KEY_ACTIVATION_DELAY": "0", **passwords.LOGIN_ENV})
            try:
                t0 = time.monotonic()
                stack.start()
                out["startup_s"] = time.monotonic() - t0
                roots = _infra_roots(stack, {SINGLE_PROCESS: stack.services[SINGLE_PROCESS].proc.pid})
                # the process's one /metrics, on its metrics port
                metrics_urls = {SINGLE_PROCESS: stack.metrics_url(SINGLE_PROCESS)}
                clients = asyncio.run(_create_clients(stack))
                out.update(_token_runs(loadgen, stack, roots, metrics_urls, clients, args))
                if not args.skip_users:
                    print(f"   users, single process: logins, refresh chains, then client_credentials at "
                          f"{min(passwords.BURST_CC_CONNECTIONS, args.connections)} connections alone and beside a "
                          f"login burst ...", flush=True)
                    out["users"] = passwords.bench_stack(stack, roots, metrics_urls, args, timing=False,
                                                         burst_with=(loadgen, clients["jwt"]))
                if not args.skip_browser:
                    print("   the browser, single process: the whole code flow, then the exchange alone ...", flush=True)
                    out["browser"] = codeflow.bench_stack(stack, roots, metrics_urls, args)
                if not args.skip_federation:
                    print(f"   federation, single process: {federation_note(args)} ...", flush=True)
                    out["federation"] = federation.bench_stack(stack, roots, metrics_urls, args)
            finally:
                stack.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return out


TLS_MODES = ("mtls", "plaintext")
TLS_ROUNDS = 2


def bench_tls_cost(loadgen: LoadGen, args) -> dict:
    """JWT client_credentials through two stacks of separate processes, identical but for their gRPC:
    mutual TLS (the default) and plaintext (INBOUND_GRPC_TLS=plaintext). Both are up at once, each with
    its own Postgres and NATS, and take the load in turn, TLS_ROUNDS rounds, so the shared machine's
    drifting load falls on both; the figures are means over the rounds. Connections are long-lived:
    this is TLS's cost per call on the token path (edge → grant → issuer), not handshakes."""
    from bench import delivery
    from services.devstack import Stack
    from services.modules import NAMES

    out: dict = {"rounds": TLS_ROUNDS, "nats": "a private nats-server per stack"}
    with contextlib.ExitStack() as cleanup:
        stacks = {}
        for mode in TLS_MODES:
            state = Path(tempfile.mkdtemp(prefix=f"inbound-bench-{mode}-"))
            cleanup.callback(shutil.rmtree, state, ignore_errors=True)
            database_url, _ = cleanup.enter_context(_bench_database())
            stack = Stack(state, fixed_ports=False, echo=False, database_url=database_url, nats_url="",
                          extra_env={"INBOUND_KEY_ACTIVATION_DELAY": "0", "INBOUND_GRPC_TLS": mode})
            cleanup.enter_context(stack)  # started now, stopped at the end
            roots = _infra_roots(stack, {name: sp.proc.pid for name, sp in stack.services.items()})
            metrics_urls = {name: stack.metrics_url(name) for name in NAMES}
            clients = {"jwt": asyncio.run(_create_clients(stack))["jwt"]}
            stacks[mode] = (stack, roots, metrics_urls, clients)
        runs: dict[str, list[dict]] = {mode: [] for mode in TLS_MODES}
        for _ in range(TLS_ROUNDS):
            for mode, (stack, roots, metrics_urls, clients) in stacks.items():
                runs[mode].append(_token_runs(loadgen, stack, roots, metrics_urls, clients, args)["jwt"])
    for mode in TLS_MODES:
        out[mode] = delivery.mean_run(runs[mode]) | {"runs": runs[mode]}
    return out


def tls_ratios(results: dict) -> dict:
    """The JWT token path with mutual TLS against the same with plaintext gRPC (bench_tls_cost, same run):
    CPU per token of Inbound's processes and of everything measured, rate, p50."""
    tls_cost = results.get("tls") or {}
    tls_run, plain = tls_cost.get("mtls"), tls_cost.get("plaintext")
    if not tls_run or not plain:
        return {}
    return {"jwt_tls_services_cpu_over_plaintext": _div(_services_cpu(tls_run), _services_cpu(plain)),
            "jwt_tls_total_cpu_over_plaintext": _div(tls_run["server_cpu_us_per_ok"], plain["server_cpu_us_per_ok"]),
            "jwt_tls_rate_over_plaintext": _div(tls_run["ok_per_s"], plain["ok_per_s"]),
            "jwt_tls_p50_over_plaintext": _div(tls_run["p50_us"], plain["p50_us"])}


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
    out.update(single_ratios(results))
    out.update(grpc_ratios(results))
    out.update(delivery.ratios(results))
    out.update(tls_ratios(results))
    out.update(passwords.ratios(results))
    out.update(codeflow.ratios(results))
    out.update(federation.ratios(results))
    return out


def _div(a, b):
    return a / b if a is not None and b else None


def single_ratios(results: dict) -> dict:
    """Single process (services.all_in_one) against the multi-process stack of the same run, and against raw
    ES256 signing: rate single / multi, total CPU per token multi / single, CPU per token single / raw sign."""
    sign_cpu = results["signing"]["cpu_us_per_token"]
    out = {}
    for fmt in ("jwt", "opaque"):
        single = (results.get("single") or {}).get(fmt)
        if not single:
            continue
        multi = results["edge"].get(fmt)
        process = single["cpu_us_per_ok"].get(SINGLE_PROCESS)
        total = single["server_cpu_us_per_ok"]
        out[f"{fmt}_single_total_cpu_over_signing_cpu"] = _div(total, sign_cpu)
        out[f"{fmt}_single_process_cpu_over_signing_cpu"] = _div(process, sign_cpu)
        if multi:
            out[f"{fmt}_single_rate_over_multi_rate"] = _div(single["ok_per_s"], multi["ok_per_s"])
            out[f"{fmt}_multi_total_cpu_over_single_total_cpu"] = _div(multi["server_cpu_us_per_ok"], total)
            services = _services_cpu(multi)
            out[f"{fmt}_multi_services_cpu_over_single_process_cpu"] = _div(services, process)
    return out


def _services_cpu(run: dict):
    """CPU µs per token of Inbound's own processes (everything measured but Postgres and NATS)."""
    values = [v for name, v in run["cpu_us_per_ok"].items() if name not in ("postgres", "nats")]
    return sum(values) if values and None not in values else None


def grpc_ratios(results: dict) -> dict:
    """Introspection over gRPC against the bare gRPC echo of the same run, against raw ES256 verification
    (JWT), batched against unary, and JWT with the verified-JWT cache off against on."""
    echo = results.get("grpc_echo")
    intro = results.get("introspection") or {}
    out: dict = {}
    if not echo:
        return out
    echo_cpu = echo["cpu_us_per_ok"].get("grpc_echo")
    verify = results.get("verifying")
    verify_cpu = verify["cpu_us_per_token"] if verify else None
    for kind in INTROSPECT_KINDS:
        for mode in INTROSPECT_MODES:
            run = intro.get(kind, {}).get(mode)
            if not run:
                continue
            key = f"introspect_{kind}_{mode}"
            out[f"{key}_rate_over_grpc_echo"] = run["ok_per_s"] / echo["ok_per_s"] if echo["ok_per_s"] else None
            issuer = run["cpu_us_per_ok"].get("token_issuer")
            out[f"{key}_issuer_cpu_over_echo_cpu"] = issuer / echo_cpu if issuer and echo_cpu else None
            total = run["server_cpu_us_per_ok"]
            out[f"{key}_server_cpu_over_echo_cpu"] = total / echo_cpu if total and echo_cpu else None
            if kind in ("jwt", JWT_COLD) and verify_cpu:
                out[f"{key}_issuer_cpu_over_raw_verify"] = issuer / verify_cpu if issuer else None
        batched, unary = intro.get(kind, {}).get("batched"), intro.get(kind, {}).get("unary")
        if batched and unary:
            out[f"introspect_{kind}_batched_rate_over_unary"] = \
                batched["ok_per_s"] / unary["ok_per_s"] if unary["ok_per_s"] else None
            b, u = batched["cpu_us_per_ok"].get("token_issuer"), unary["cpu_us_per_ok"].get("token_issuer")
            out[f"introspect_{kind}_unary_issuer_cpu_over_batched"] = u / b if u and b else None
    for mode in INTROSPECT_MODES:
        warm, cold = intro.get("jwt", {}).get(mode), intro.get(JWT_COLD, {}).get(mode)
        if not (warm and cold):
            continue
        w, c = warm["cpu_us_per_ok"].get("token_issuer"), cold["cpu_us_per_ok"].get("token_issuer")
        out[f"introspect_jwt_{mode}_cache_on_rate_over_cache_off"] = \
            warm["ok_per_s"] / cold["ok_per_s"] if cold["ok_per_s"] else None
        out[f"introspect_jwt_{mode}_cache_off_issuer_cpu_over_cache_on"] = c / w if c and w else None
        # what the cache saves per call, in raw verifications (about 1 if it saves exactly the signature check)
        out[f"introspect_jwt_{mode}_cache_saving_over_raw_verify"] = \
            (c - w) / verify_cpu if c and w and verify_cpu else None
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
    single = results.get("single") or {}
    for fmt, label in (("jwt", "edge client_credentials, JWT (ES256)"), ("opaque", "edge client_credentials, opaque")):
        if fmt in edge:
            row(label, edge[fmt], edge[fmt]["server_cpu_us_per_ok"])
        if fmt in single:
            row(SINGLE_ROW_LABEL, single[fmt], single[fmt]["server_cpu_us_per_ok"])
    w("  µs/op: CPU time per operation — signing: this thread; bare HTTP: the server process; "
      "edge rows: all server processes summed")
    if single:
        w(f"  single process: the same load at a second stack, every service in services.{SINGLE_PROCESS} (below)")
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
    lines.extend(render_tls(results))
    lines.extend(render_single(results))
    lines.extend(render_grpc(results))
    lines.extend(delivery.render(results))
    lines.extend(passwords.render(results))
    lines.extend(codeflow.render(results))
    lines.extend(federation.render(results))
    if results["warnings"]:
        w("")
        for warning in results["warnings"]:
            w("WARNING: " + warning)
    w("")
    w(f"results: {meta['out']}")
    return "\n".join(lines)


SINGLE_ROW_LABEL = "  same, single process (all_in_one)"


def render_tls(results: dict) -> list[str]:
    """What mutual TLS on every gRPC hop costs on the JWT token path: bench_tls_cost's two stacks."""
    r = results["ratios"]
    if "jwt_tls_total_cpu_over_plaintext" not in r:
        return []
    tls_run, plain = results["tls"]["mtls"], results["tls"]["plaintext"]
    names = [n for n in SERVICE_ORDER if n in tls_run["cpu_us_per_ok"] and n in plain["cpu_us_per_ok"]]
    lines = ["", f"{'mTLS on every gRPC hop, JWT token':<48}{'mTLS':>10}{'plaintext':>10}{'ratio':>8}",
             "-" * 76, f"  (two stacks up at once, load on each in turn, {results['tls']['rounds']} rounds; means)"]

    def line(label: str, a, b, fmt: str = "{:.1f}") -> None:
        lines.append(f"{label:<48}{_f(a, fmt):>10}{_f(b, fmt):>10}{_f(_div(a, b), '{:.2f}'):>8}")

    line("rate /s", tls_run["ok_per_s"], plain["ok_per_s"], "{:,.0f}")
    line("p50 ms", tls_run["p50_us"] / 1000, plain["p50_us"] / 1000, "{:.2f}")
    line("p99 ms", tls_run["p99_us"] / 1000, plain["p99_us"] / 1000, "{:.2f}")
    for name in names:
        line(f"CPU µs per token: {name}", tls_run["cpu_us_per_ok"][name], plain["cpu_us_per_ok"][name])
    line("CPU µs per token: Inbound's processes", _services_cpu(tls_run), _services_cpu(plain))
    line("CPU µs per token: all measured", tls_run["server_cpu_us_per_ok"], plain["server_cpu_us_per_ok"])
    return lines


SINGLE_RATIOS = (("single_rate_over_multi_rate", "token rate, single process / multi-process", ""),
                 ("multi_total_cpu_over_single_total_cpu", "total CPU per token, multi-process / single", "x"),
                 ("multi_services_cpu_over_single_process_cpu",
                  "Inbound processes' CPU per token, multi / single", "x"),
                 ("single_total_cpu_over_signing_cpu", "single: total CPU per token / raw ES256 sign", "x"),
                 ("single_process_cpu_over_signing_cpu", "single: all_in_one CPU per token / raw ES256 sign", "x"))


def render_single(results: dict) -> list[str]:
    """client_credentials in single-process mode (services.all_in_one) beside the multi-process stack."""
    single, edge, r, meta = results.get("single") or {}, results["edge"], results["ratios"], results["meta"]
    fmts = [f for f in ("jwt", "opaque") if f in single]
    if not fmts:
        return []
    lines: list[str] = []
    w = lines.append
    tags = {"jwt": "JWT", "opaque": "opq"}
    cols = [(f, mode) for f in fmts for mode in ("multi", "single")]

    def run_of(f: str, mode: str):
        return (edge if mode == "multi" else single).get(f)

    def cells(value_of, fmt: str, none: str = "—") -> str:
        out = []
        for f, mode in cols:
            run = run_of(f, mode)
            out.append(_f(value_of(run, mode) if run else None, fmt, none=none))
        return "".join(f"{c:>12}" for c in out)

    w("")
    w(f"client_credentials, multi-process (one process per service, gRPC between them) against single process "
      f"(services.{SINGLE_PROCESS}:")
    w(f"registry, issuer, grant, audit and edge in one process, calling one another in process); the same wrk load, "
      f"{meta['connections']} connections, {meta['warmup']:.0f}+{meta['seconds']:.0f} s.")
    w(f"The single process ran after the multi-process stack stopped. Its Postgres: {single.get('postgres', '?')}; "
      f"its NATS: {single.get('nats', '?')}.")
    head = f"{'multi-process / single process':<40}" + "".join(f"{tags[f] + ' ' + mode:>12}" for f, mode in cols)
    w(head)
    w("-" * len(head))
    w(f"{'tokens/s':<40}" + cells(lambda run, _: run["ok_per_s"], "{:,.0f}"))
    w(f"{'p50 ms':<40}" + cells(lambda run, _: run["p50_us"] / 1000, "{:.2f}"))
    w(f"{'p99 ms':<40}" + cells(lambda run, _: run["p99_us"] / 1000, "{:.2f}"))
    w("CPU µs per token (from /proc)")
    counts = sorted({len([n for n in edge[f]["cpu_s"] if n not in ("postgres", "nats")]) for f in fmts if f in edge})
    w(f"{'  Inbound processes (multi ' + '/'.join(map(str, counts or ['—'])) + ', single 1)':<40}" + cells(lambda run, _: _services_cpu(run), "{:.1f}"))
    w(f"{'    of which all_in_one':<40}"
      + cells(lambda run, mode: run["cpu_us_per_ok"].get(SINGLE_PROCESS) if mode == "single" else None, "{:.1f}",
              none=""))
    for name in ("postgres", "nats"):
        w(f"{'  ' + name:<40}" + cells(lambda run, _, name=name: run["cpu_us_per_ok"].get(name), "{:.1f}",
                                none="external"))
    w(f"{'  TOTAL server side':<40}" + cells(lambda run, _: run["server_cpu_us_per_ok"], "{:.1f}"))
    w(f"{'    (raw ES256 sign, for scale)':<40}" + cells(lambda *_: results["signing"]["cpu_us_per_token"], "{:.1f}"))
    w(f"{'  load generator (' + meta['loadgen'] + ')':<40}" + cells(lambda run, _: run["loadgen_cpu_us_per_ok"],
                                                                  "{:.1f}"))
    w(f"{'all_in_one CPU use, cores (of ' + str(meta['cores']) + ')':<40}"
      + cells(lambda run, mode: run["cpu_s"][SINGLE_PROCESS] / run["window_s"] if mode == "single" else None,
              "{:.2f}", none=""))
    w(f"{'machine busy, cores':<40}" + cells(lambda run, _: run["machine"]["busy_cores"], "{:.2f}"))
    w(f"{'  of which other processes, cores':<40}" + cells(lambda run, _: run["machine"]["other_cores"], "{:.2f}"))
    w(f"{'  steal, cores':<40}" + cells(lambda run, _: run["machine"]["steal_cores"], "{:.2f}"))
    calls = sorted({c for f in fmts for c in single[f].get("batches", {})})
    if calls:
        head = f"{'single process: batched calls (/metrics)':<48}" + "".join(f"{f + ' items/batch':>20}" for f in fmts)
        w(head)
        for call in calls:
            row = []
            for f in fmts:
                b = single[f].get("batches", {}).get(call)
                row.append(f"{b['mean_batch']:.1f} ({b['calls_per_token']:.2f}/tok)" if b else "—")
            w(f"{call:<48}" + "".join(f"{c:>20}" for c in row))
    else:
        w("  single process: no batched calls in the window (inbound_batch_size on its /metrics did not move: "
          "no Coalescer on the in-process path)")
    rpcs = {f: sum(v["calls"] for v in single[f].get("rpcs_served", {}).values()) for f in fmts}
    w("  gRPC calls the single process served in the window: "
      + ", ".join(f"{f} {rpcs[f]:,.0f}" for f in fmts) + " (0 expected: the token path is in process)")
    w("")
    w("Ratios (same run), single process")
    w("-" * 72)
    for f in fmts:
        for key, text, suffix in SINGLE_RATIOS:
            w(f"  {f:<7} {text:<52}{_f(r.get(f'{f}_{key}'), '{:.2f}'):>8}{suffix}")
    return lines


STACK_SERVICES = ("edge", "client_credentials", "audit")  # idle during introspection: summed in one row


def render_grpc(results: dict) -> list[str]:
    echo, intro, r, meta = results.get("grpc_echo"), results.get("introspection") or {}, results["ratios"], \
        results["meta"]
    if not echo:
        return []
    lines: list[str] = []
    w = lines.append
    runs = [(kind, mode, label, intro[kind][mode]) for kind, mode, label in GRPC_ROWS
            if mode in intro.get(kind, {})]
    cores = meta["cores"]
    w("")
    w(f"gRPC, {meta['grpc_concurrency']} calls in flight, {meta['grpc_seconds']:.0f} s measured after "
      f"{meta['grpc_warmup']:.1f} s warm-up; load generator: {meta['grpc_loadgen_note']}")
    if intro:
        w(f"Introspection: a pool of {intro['tokens_per_format']:,} tokens per format (lifetime "
          f"{intro['token_lifetime_s']} s) issued through IssuerClient.issue; each call introspects a random one; "
          f"each token was introspected once before the warm-up, so token_issuer's caches hold them all.")
        w("  repeat tokens (verified-JWT cache): the stack's token_issuer, as deployed — a JWT's signature was "
          "verified on its first introspection, later ones find it by SHA-256 (expiry, revocation, client still "
          "checked each call)")
        if JWT_COLD in intro:
            w("  verified each call (cache off): the same JWT pool at a second token_issuer replica started for "
              "these rows with INBOUND_VERIFIED_JWT_CACHE=0 — every call verifies the ES256 signature")
        w("  batched: IssuerClient.introspect, the product's client (concurrent calls coalesced into one RPC); "
          "unary: 1 item per Introspect RPC")
    w("")
    lw = max([44] + [len(label) + 2 for *_, label, _ in runs])
    head = f"{'':<{lw}}{'calls/s':>10}{'µs/op':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'failed':>8}" \
        f"{'items/RPC':>11}"
    w(head)
    w("-" * len(head))

    def row(label: str, run: dict, cpu_us, items) -> None:
        w(f"{label:<{lw}}{_f(run['ok_per_s']):>10}{_f(cpu_us, '{:.1f}'):>10}{_ms(run['p50_us']):>9}"
          f"{_ms(run['p99_us']):>9}{_ms(run['p999_us']):>10}{run['failed']:>8,}{_f(items, '{:.1f}'):>11}")

    verify = results.get("verifying")
    if verify:
        w(f"{'raw ES256 verify, 1 core (pyjwt)':<{lw}}{_f(verify['tokens_per_s']):>10}"
          f"{_f(verify['cpu_us_per_token'], '{:.1f}'):>10}")
    row(f"bare gRPC echo (grpc.aio, 1 proc, {echo.get('payload_bytes', ECHO_PAYLOAD)} B)", echo,
        echo["cpu_us_per_ok"].get("grpc_echo"), 1.0)
    for kind, mode, label, run in runs:
        row(label, run, run["cpu_us_per_ok"].get("token_issuer"), run.get("items_per_rpc"))
    w("  µs/op: CPU per op — verify: this thread; echo: the echo server process; introspect rows: the token_issuer "
      "under load alone (cache off: the second replica; all processes below)")
    w("  items/RPC: introspections per Introspect RPC that token_issuer served (its /metrics); failed: errors or "
      "answers not active=true")
    for kind, mode, label, run in runs:
        if run.get("client_mean_batch"):
            w(f"  {GRPC_TAGS.get(kind, kind)} IssuerClient coalescer: {run['client_batches']:,.0f} batches, "
              f"mean {run['client_mean_batch']:.1f} items (max 32)")
    if not runs:
        return lines
    w("")
    cols = [GRPC_COLUMNS[(kind, mode)] for kind, mode, _, _ in runs]
    legend = "  warm: JWT, repeat tokens (verified-JWT cache on); cold: JWT, verified each call (cache off, " \
        "second replica); opq: opaque"
    has_idle = any(IDLE_ISSUER in run["cpu_s"] for *_, run in runs)
    head = f"{'CPU µs per call (from /proc)':<40}{'echo':>11}" + "".join(f"{c:>11}" for c in cols)
    w(head)
    w("-" * len(head))

    def per_call(run: dict, names: tuple[str, ...]):
        values = [run["cpu_us_per_ok"].get(n) for n in names if n in run["cpu_us_per_ok"]]
        return sum(values) if values and None not in values else None

    def cpu_row(label: str, echo_cell: str, names: tuple[str, ...]) -> None:
        cells = []
        for _, _, _, run in runs:
            present = [n for n in names if n in run["cpu_us_per_ok"]]
            if not present:
                cells.append("external" if set(names) & {"postgres", "nats"} else "—")
            else:
                cells.append(_f(per_call(run, tuple(present)), "{:.1f}"))
        w(f"{label:<40}{echo_cell:>11}" + "".join(f"{c:>11}" for c in cells))

    cpu_row("bare gRPC echo server", _f(echo["cpu_us_per_ok"].get("grpc_echo"), "{:.1f}"), ("grpc_echo",))
    cpu_row("token_issuer (the one under load)", "", ("token_issuer",))
    if has_idle:
        cpu_row("token_issuer of the stack, idle (cold)", "", (IDLE_ISSUER,))
    for name in ("client_registry", "postgres", "nats"):
        cpu_row(name, "", (name,))
    cpu_row("other (" + ", ".join(STACK_SERVICES) + ")", "", STACK_SERVICES)
    w(f"{'TOTAL server side':<40}{_f(echo['server_cpu_us_per_ok'], '{:.1f}'):>11}"
      + "".join(f"{_f(run['server_cpu_us_per_ok'], '{:.1f}'):>11}" for *_, run in runs))
    w(f"{'load generator (Python grpc.aio)':<40}{_f(echo['loadgen_cpu_us_per_ok'], '{:.1f}'):>11}"
      + "".join(f"{_f(run['loadgen_cpu_us_per_ok'], '{:.1f}'):>11}" for *_, run in runs))
    if verify and any(kind in ("jwt", JWT_COLD) for kind, *_ in runs):
        cells = [f"{verify['cpu_us_per_token']:.1f}" if kind in ("jwt", JWT_COLD) else "" for kind, *_ in runs]
        w((f"{'  (raw ES256 verify, for scale)':<40}{'':>11}" + "".join(f"{c:>11}" for c in cells)).rstrip())
    w(legend)
    w("")
    head = f"{'CPU use, cores (of ' + str(cores) + ')':<40}{'echo':>11}" + "".join(f"{c:>11}" for c in cols)
    w(head)
    w("-" * len(head))

    def cores_row(label: str, echo_value, values) -> None:
        w(f"{label:<40}{_f(echo_value, '{:.2f}', none=''):>11}" + "".join(f"{_f(v, '{:.2f}'):>11}" for v in values))

    def share(run: dict, names: tuple[str, ...]):
        present = [run["cpu_s"][n] for n in names if n in run["cpu_s"]]
        return sum(present) / run["window_s"] if present else None

    cores_row("bare gRPC echo server", echo["cpu_s"]["grpc_echo"] / echo["window_s"], [None for _ in runs])
    cores_row("token_issuer (the one under load)", None, [share(run, ("token_issuer",)) for *_, run in runs])
    if has_idle:
        cores_row("token_issuer of the stack, idle (cold)", None, [share(run, (IDLE_ISSUER,)) for *_, run in runs])
    for name in ("client_registry", "postgres", "nats"):
        cores_row(name, None, [share(run, (name,)) for *_, run in runs])
    cores_row("other services", None, [share(run, STACK_SERVICES) for *_, run in runs])
    cores_row("load generator (Python grpc.aio)", echo["loadgen_cpu_s"] / echo["window_s"],
              [run["loadgen_cpu_s"] / run["window_s"] for *_, run in runs])
    cores_row("machine busy", echo["machine"]["busy_cores"], [run["machine"]["busy_cores"] for *_, run in runs])
    cores_row("  of which other processes", echo["machine"]["other_cores"],
              [run["machine"]["other_cores"] for *_, run in runs])
    cores_row("  steal", echo["machine"]["steal_cores"], [run["machine"]["steal_cores"] for *_, run in runs])
    w("")
    w("Ratios (same run), gRPC")
    w("-" * 86)

    def ratio(tag: str, text: str, value, suffix: str = "") -> None:
        w(f"  {tag:<17} {text:<58}{_f(value, '{:.2f}'):>8}{suffix}")

    for kind, mode, _, _ in runs:
        key = f"introspect_{kind}_{mode}"
        tag = f"{GRPC_TAGS.get(kind, kind)} {mode}"
        ratio(tag, "introspections/s / bare gRPC echo calls/s", r.get(key + "_rate_over_grpc_echo"))
        ratio(tag, "issuer CPU per introspection / echo CPU per call", r.get(key + "_issuer_cpu_over_echo_cpu"), "x")
        if kind in ("jwt", JWT_COLD):
            ratio(tag, "issuer CPU per introspection / raw ES256 verify",
                  r.get(key + "_issuer_cpu_over_raw_verify"), "x")
    for kind in INTROSPECT_KINDS:
        if r.get(f"introspect_{kind}_batched_rate_over_unary") is not None:
            tag = GRPC_TAGS.get(kind, kind)
            ratio(tag, "batching: batched rate / unary rate", r[f"introspect_{kind}_batched_rate_over_unary"])
            ratio(tag, "batching: unary issuer CPU / batched issuer CPU",
                  r.get(f"introspect_{kind}_unary_issuer_cpu_over_batched"), "x")
    for mode in INTROSPECT_MODES:
        if f"introspect_jwt_{mode}_cache_on_rate_over_cache_off" in r:
            tag = f"JWT {mode}"
            ratio(tag, "verified-JWT cache: rate on / off", r[f"introspect_jwt_{mode}_cache_on_rate_over_cache_off"])
            ratio(tag, "verified-JWT cache: issuer CPU per call off / on",
                  r.get(f"introspect_jwt_{mode}_cache_off_issuer_cpu_over_cache_on"), "x")
            ratio(tag, "verified-JWT cache: CPU saved per call / raw ES256 verify",
                  r.get(f"introspect_jwt_{mode}_cache_saving_over_raw_verify"), "x")
    return lines


def collect_warnings(results: dict) -> list[str]:
    warnings = []
    single = results.get("single") or {}
    runs = [("bare HTTP", results["bare_http"])] + \
        [(f"edge {f}", results["edge"][f]) for f in ("jwt", "opaque") if f in results["edge"]] + \
        [(f"single process {f}", single[f]) for f in ("jwt", "opaque") if f in single]
    for f in ("jwt", "opaque"):
        served = sum(v["calls"] for v in (single.get(f) or {}).get("rpcs_served", {}).values())
        if served:
            warnings.append(f"single process {f}: {SINGLE_PROCESS} served {served:,.0f} gRPC calls during the run "
                            f"(the token path should be in process, with no gRPC)")
    intro = results.get("introspection") or {}
    grpc_runs = ([("bare gRPC echo", results["grpc_echo"])] if results.get("grpc_echo") else []) + \
        [(intro[k][m].get("label") or f"introspect {k} {m}", intro[k][m]) for k in INTROSPECT_KINDS
         for m in INTROSPECT_MODES if m in intro.get(k, {})]
    for mode in INTROSPECT_MODES:
        cold = intro.get(JWT_COLD, {}).get(mode)
        if not cold:
            continue
        label = cold.get("label") or f"introspect {JWT_COLD} {mode}"
        replica = cold.get("replica") or {}
        if "INBOUND_VERIFIED_JWT_CACHE" in replica and replica["INBOUND_VERIFIED_JWT_CACHE"] != "0":
            warnings.append(f"{label}: INVALID RUN — the second token_issuer ran with INBOUND_VERIFIED_JWT_CACHE="
                            f"{replica['INBOUND_VERIFIED_JWT_CACHE']!r}, not '0': its cache may have been on")
        if cold.get("idle_issuer_introspect_rpcs"):
            warnings.append(f"{label}: the stack's own token_issuer served {cold['idle_issuer_introspect_rpcs']:,.0f} "
                            f"Introspect RPCs during the run (it should have been idle)")
    for label, run in grpc_runs:
        warnings.extend(grpc_failure_warnings(label, run))
    for label, run in runs + grpc_runs:
        if run.get("non2xx") or run.get("socket_errors"):
            warnings.append(f"{label}: INVALID RUN — {run['non2xx']} non-2xx answers, {run['socket_errors']} socket "
                            f"errors (connect {run['err_connect']}, read {run['err_read']}, write {run['err_write']}, "
                            f"timeout {run['err_timeout']}); first non-2xx: {run['sample_non2xx'] or '—'}")
        warnings.extend(run_warnings(label, run))
    idle = results.get("idle_check")
    if idle and idle["busy_cores"] > 0.25:
        top = ", ".join(f"{p['comm']}[{p['pid']}] {p['cores']:.2f}" for p in idle["top_processes"])
        warnings.append(f"before the bench started, the machine was already busy: {idle['busy_cores']:.2f} cores "
                        f"({idle['processes_started']} processes started in 1 s; top: {top or 'none'})")
    warnings.extend(passwords.warnings(results))
    warnings.extend(codeflow.warnings(results))
    warnings.extend(federation.warnings(results))
    if not results["meta"]["loadgen"] == "wrk":
        warnings.append("wrk was not available: the Python fallback load generator competes with the server "
                        "for the same cores, so rates are lower than wrk would show")
    return warnings


def grpc_failure_warnings(label: str, run: dict) -> list[str]:
    """A bench.grpcload run's failed calls, measured and during its warm-up."""
    warnings = []
    if run["failed"] or not run["ok"]:
        warnings.append(f"{label}: INVALID RUN — {run['failed']:,} of {run['requests']:,} calls failed or "
                        f"answered other than active=true; first: {run['sample_failure'] or '—'}")
    warm = run.get("warmup") or {}
    if warm.get("first_pass_failed") or warm.get("warmup_failed"):
        warnings.append(f"{label}: during warm-up {warm.get('first_pass_failed', 0):,} first-pass and "
                        f"{warm.get('warmup_failed', 0):,} later calls failed; first: "
                        f"{warm.get('first_pass_sample') or warm.get('warmup_sample') or '—'}")
    return warnings


def idle_check(seconds: float = 1.0) -> dict:
    """How busy the machine is before the bench starts anything (someone else's tests, say)."""
    all0, m0, t0 = procstat.all_processes(), procstat.machine(), time.monotonic()
    time.sleep(seconds)
    all1, m1, t1 = procstat.all_processes(), procstat.machine(), time.monotonic()
    wall = t1 - t0
    return {"busy_cores": (m1.busy - m0.busy) / wall, "processes_started": m1.forks - m0.forks,
            "top_processes": procstat.top_others(all0, all1, {os.getpid()}, wall)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per HTTP load run (8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each HTTP run (2)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--sign-seconds", type=float, default=2.0)
    parser.add_argument("--grpc-seconds", type=float, default=8.0, help="measured seconds per gRPC run (8)")
    parser.add_argument("--grpc-warmup", type=float, default=1.5, help="warm-up seconds before each gRPC run (1.5)")
    parser.add_argument("--grpc-concurrency", type=int, default=64, help="gRPC calls in flight (64)")
    parser.add_argument("--introspect-tokens", type=int, default=2000, help="tokens of each format to introspect")
    parser.add_argument("--token-lifetime", type=int, default=600, help="lifetime of those tokens, seconds")
    parser.add_argument("--python-loadgen", action="store_true", help="use the Python fallback even if wrk exists")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install wrk when it is missing")
    parser.add_argument("--skip-edge", action="store_true", help="only the machine's limits (no stack)")
    parser.add_argument("--skip-introspection", action="store_true", help="no gRPC introspection runs")
    parser.add_argument("--skip-single", action="store_true",
                        help="no client_credentials runs through the single-process stack (services.all_in_one)")
    parser.add_argument("--skip-plaintext", action="store_true",
                        help="no JWT client_credentials run through a stack with plaintext gRPC (the TLS ratio)")
    parser.add_argument("--skip-cold-jwt", action="store_true",
                        help="no JWT introspection runs at a second token_issuer with its verified-JWT cache off")
    parser.add_argument("--skip-delivery", action="store_true",
                        help="no durable-vs-buffered audit delivery runs (token_issuer restarted in each mode)")
    parser.add_argument("--skip-users", action="store_true",
                        help="no password-grant, refresh, timing or login-burst runs (nor the bare argon2id figure)")
    parser.add_argument("--skip-refresh", action="store_true", help="no refresh-chain runs")
    parser.add_argument("--login-users", type=int, default=64, help="bench users the logins take in turn (64)")
    parser.add_argument("--login-connections", type=int, default=16, help="password-grant logins in flight (16)")
    parser.add_argument("--login-seconds", type=float, default=6.0, help="measured seconds of the login runs (6)")
    parser.add_argument("--timing-tries", type=int, default=100,
                        help="wrong-username and wrong-password tries each, alternating (100; 0: none)")
    parser.add_argument("--argon2-seconds", type=float, default=1.0, help="bare argon2id hash and verify (1)")
    parser.add_argument("--skip-browser", action="store_true",
                        help="no authorization code flow runs (nor the raw RS256 figure)")
    parser.add_argument("--flow-connections", type=int, default=codeflow.FLOW_CONNECTIONS,
                        help=f"browsers with warm sessions in the code flow runs ({codeflow.FLOW_CONNECTIONS})")
    parser.add_argument("--skip-federation", action="store_true",
                        help="no JWT bearer, token exchange or third-party introspection runs (nor raw RS256 verify)")
    parser.add_argument("--skip-jwt-bearer", action="store_true", help="no JWT bearer grant runs")
    parser.add_argument("--skip-token-exchange", action="store_true", help="no token exchange runs")
    parser.add_argument("--skip-foreign-introspection", action="store_true",
                        help="no gRPC introspection runs of third-party tokens")
    parser.add_argument("--federation-connections", type=int, default=None,
                        help="connections of the JWT bearer and token exchange runs (default: --connections)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.federation_connections is None:
        args.federation_connections = args.connections

    started = time.monotonic()
    loadgen = LoadGen.create(install=not args.no_install, prefer_python=args.python_loadgen)
    print(f"load generator: {loadgen.note}; gRPC: {GRPC_LOADGEN_NOTE}", flush=True)
    idle = idle_check()
    steps = 3 if args.skip_edge else 3 + 1 + (not args.skip_single) + (not args.skip_plaintext)
    print(f"1/{steps} raw ES256 signing and verification for {args.sign_seconds * 1.5:.0f} s"
          f"{'' if args.skip_users else ', a bare argon2id hash and verify'}"
          f"{'' if args.skip_browser else ', raw RS256 signing'}"
          f"{'' if args.skip_federation else ', raw RS256 verification'} ...", flush=True)
    sign = signing.measure(args.sign_seconds)
    verify = signing.measure_verify(args.sign_seconds / 2)
    argon2 = {} if args.skip_users else passwords.measure_argon2(args.argon2_seconds)
    rs256 = {} if args.skip_browser else signing.measure_rs256(args.sign_seconds / 2)
    rs256_verify = {} if args.skip_federation else signing.measure_rs256_verify(args.sign_seconds / 2)
    print(f"2/{steps} bare HTTP endpoint, {args.warmup:.0f}+{args.seconds:.0f} s ...", flush=True)
    bare = bench_bare(loadgen, args)
    print(f"3/{steps} bare gRPC echo, {args.grpc_concurrency} in flight, {args.grpc_warmup:.1f}+{args.grpc_seconds:.0f} s "
          f"...", flush=True)
    echo = bench_grpc_echo(args)
    edge: dict = {}
    if not args.skip_edge:
        print(f"4/{steps} the real stack: client_credentials JWT and opaque, {args.warmup:.0f}+{args.seconds:.0f} s "
              f"each ...", flush=True)
        edge = bench_edge(loadgen, args)
    single: dict = {}
    if not args.skip_edge and not args.skip_single:
        print(f"5/{steps} client_credentials JWT and opaque again, every service in one process "
              f"(services.{SINGLE_PROCESS}, its own Postgres and NATS), {args.warmup:.0f}+{args.seconds:.0f} s each "
              f"...", flush=True)
        single = bench_single(loadgen, args)
    tls_cost: dict = {}
    if not args.skip_edge and not args.skip_plaintext:
        print(f"{steps}/{steps} the cost of mutual TLS: client_credentials JWT through two more stacks, mTLS and "
              f"plaintext gRPC, in turn, {TLS_ROUNDS} rounds of {args.warmup:.0f}+{args.seconds:.0f} s each ...",
              flush=True)
        tls_cost = bench_tls_cost(loadgen, args)
    results = {
        "meta": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "python": platform.python_version(), "cores": os.cpu_count(),
            "connections": args.connections, "seconds": args.seconds, "warmup": args.warmup,
            "loadgen": loadgen.kind, "loadgen_note": loadgen.note, "out": str(args.out),
            "grpc_concurrency": args.grpc_concurrency, "grpc_seconds": args.grpc_seconds,
            "grpc_warmup": args.grpc_warmup, "grpc_loadgen_note": GRPC_LOADGEN_NOTE,
        },
        "idle_check": idle,
        "signing": sign,
        "signing_rs256": rs256,
        "verifying": verify,
        "verifying_rs256": rs256_verify,
        "bare_http": bare,
        "grpc_echo": echo,
        "introspection": edge.pop("introspection", {}),
        "delivery": edge.pop("delivery", {}),
        "edge": edge,
        "single": single,
        "tls": tls_cost,
        "argon2": argon2,
        "users": {mode: users for mode, users in (("edge", edge.pop("users", None)),
                                                  ("single", single.pop("users", None))) if users},
        "browser": {mode: flows for mode, flows in (("edge", edge.pop("browser", None)),
                                                    ("single", single.pop("browser", None))) if flows},
        "federation": {mode: runs for mode, runs in (("edge", edge.pop("federation", None)),
                                                     ("single", single.pop("federation", None))) if runs},
    }
    results["ratios"] = ratios(results) if edge else {}
    results["warnings"] = collect_warnings(results)
    results["meta"]["elapsed_s"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(render(results) if edge else json.dumps(results, indent=2))
    print(f"(bench took {results['meta']['elapsed_s']:.0f} s)")

"""`make bench` smoke test: every figure the bench prints can be produced and
parsed, and its paths through the real system (both stacks, both modes) work,
on a very short run. Asserts shapes and correctness, never a timing or how
quiet the machine was (it is shared: other processes' CPU is reported by the
bench as a warning, which is not a failure here)."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys

from bench import procstat, run, signing
from bench.loadgen import LoadGen, lua_script, parse_result

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1/oauth/token
  2 threads and 8 connections
BENCH_RESULT requests=1200 duration_us=1001234 bytes=240000 non2xx=3 err_connect=0 err_read=0 err_write=0 \
err_status=3 err_timeout=0 mean_us=640.5 p50_us=600 p90_us=900 p99_us=1500 p999_us=2100 max_us=3000
BENCH_SAMPLE 401 {"error":"invalid_client"}
"""


def test_parse_wrk_result_line():
    result = parse_result(WRK_OUTPUT)
    assert result["requests"] == 1200 and result["non2xx"] == 3 and result["ok"] == 1197
    assert result["p99_us"] == 1500 and result["valid"] is False
    assert result["sample_non2xx"].startswith("401")
    assert math.isclose(result["ok_per_s"], 1197 / 1.001234)


def test_lua_script_carries_body_and_headers():
    script = lua_script("grant_type=client_credentials", {"Authorization": "Basic YTpi"})
    assert 'wrk.body = "grant_type=client_credentials"' in script
    assert 'wrk.headers["Authorization"] = "Basic YTpi"' in script
    assert "function done(" in script and "function response(" in script


def test_short_run_figures_parse_and_render(tmp_path):
    sign = signing.measure(0.2)
    assert sign["tokens"] > 0 and sign["cpu_us_per_token"] > 0
    assert procstat.snapshot({"self": __import__("os").getpid()})["self"] > 0

    loadgen = LoadGen.create(install=False)  # wrk if present, else the Python fallback; never apt-get here
    bare = run.bench_bare(loadgen, argparse.Namespace(connections=8, seconds=1, warmup=0))
    assert bare["requests"] > 0 and bare["non2xx"] == 0
    assert bare["cpu_us_per_ok"]["bare_app"] is not None and bare["p50_us"] >= 0

    results = {"meta": {"cores": 2, "connections": 8, "seconds": 1, "warmup": 0, "loadgen": loadgen.kind,
                        "loadgen_note": loadgen.note, "out": str(tmp_path / "r.json")},
               "signing": sign, "bare_http": bare, "edge": {"jwt": bare}}
    results["ratios"] = run.ratios(results)
    results["warnings"] = run.collect_warnings(results)
    text = run.render(results)
    assert "TOTAL server side" in text and "bare HTTP rate" in text
    assert results["ratios"]["jwt_rate_over_bare_http"] == 1.0
    assert "single process" not in text  # no single-process runs (--skip-single): no such rows

    # the same load through the single-process stack: its one process is services.all_in_one
    single = as_single_process(bare)
    results["single"] = {"jwt": single, "postgres": "private", "nats": "private (its own nats-server)"}
    results["ratios"] = run.ratios(results)
    results["warnings"] = run.collect_warnings(results)
    assert not _in_process_warnings(results["warnings"]), results["warnings"]
    text = run.render(results)
    assert run.SINGLE_ROW_LABEL in text and "JWT single" in text and "no batched calls" in text
    for _, label, _ in run.SINGLE_RATIOS:
        assert label in text
    ratios = results["ratios"]
    assert ratios["jwt_single_rate_over_multi_rate"] == 1.0
    assert ratios["jwt_multi_total_cpu_over_single_total_cpu"] == 1.0
    assert ratios["jwt_single_total_cpu_over_signing_cpu"] > 0
    assert ratios["jwt_single_process_cpu_over_signing_cpu"] > 0
    assert "opaque_single_rate_over_multi_rate" not in ratios
    json.dumps(results)

    single["rpcs_served"] = {"all_in_one: /inbound.issuer.v1.TokenIssuer/Issue": {"calls": 7, "mean_handler_us": 1}}
    assert any("served 7 gRPC calls" in w for w in _in_process_warnings(run.collect_warnings(results)))


def _in_process_warnings(warnings: list[str]) -> list[str]:
    """The single process's token path went over gRPC: a wiring fault, whatever the load."""
    return [w for w in warnings if w.startswith("single process") and "gRPC calls during the run" in w]


def _wiring_warnings(warnings: list[str]) -> list[str]:
    """Warnings that mean the bench measured the wrong thing (not that the machine was busy)."""
    return [w for w in warnings if "the second token_issuer ran with" in w or "should have been idle" in w
            or "services exited during the run" in w] + _in_process_warnings(warnings)


def as_single_process(run_result: dict) -> dict:
    """A run result as if its one server process were services.all_in_one."""
    (cpu_s,), (per_ok,) = run_result["cpu_s"].values(), run_result["cpu_us_per_ok"].values()
    return {**run_result, "cpu_s": {run.SINGLE_PROCESS: cpu_s}, "cpu_us_per_ok": {run.SINGLE_PROCESS: per_ok},
            "batches": {}, "rpcs_served": {}}


def test_raw_verify_figure():
    verify = signing.measure_verify(0.1)
    assert verify["tokens"] > 0 and verify["cpu_us_per_token"] > 0


METRICS_TEXT = """# HELP inbound_batch_size Items per batched call sent
inbound_batch_size_sum{call="issuer.Introspect"} 640.0
inbound_batch_size_count{call="issuer.Introspect"} 20.0
inbound_rpc_server_seconds_count{method="/inbound.issuer.v1.TokenIssuer/Introspect",code="OK"} 20.0
inbound_rpc_server_seconds_sum{method="/inbound.issuer.v1.TokenIssuer/Introspect",code="OK"} 0.5
inbound_rpc_server_seconds_count{method="/inbound.issuer.v1.TokenIssuer/Introspect",code="UNAVAILABLE"} 3.0
"""


def test_parse_service_metrics():
    out = run.parse_metrics(METRICS_TEXT, "token_issuer")
    assert out["batches"] == {"token_issuer: issuer.Introspect": [640.0, 20.0]}
    assert out["rpcs"] == {"token_issuer: /inbound.issuer.v1.TokenIssuer/Introspect": [0.5, 20.0]}


FAKE_ISSUER = """
import asyncio, grpc
from inbound.issuer.v1 import issuer_pb2 as pb, issuer_pb2_grpc

class Fake(issuer_pb2_grpc.TokenIssuerServicer):
    async def Introspect(self, request, context):
        return pb.IntrospectResults(results=[pb.IntrospectResult(info=pb.TokenInfo(active=r.token != "bad"))
                                             for r in request.requests])

async def main():
    server = grpc.aio.server()
    issuer_pb2_grpc.add_TokenIssuerServicer_to_server(Fake(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


@contextlib.contextmanager
def fake_issuer():
    """A TokenIssuer process answering Introspect: active unless the token is 'bad'. Yields (target, pid)."""
    proc = subprocess.Popen([sys.executable, "-c", FAKE_ISSUER], cwd=run.ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def test_grpc_echo_and_introspection_load_render(tmp_path):
    args = argparse.Namespace(grpc_concurrency=8, grpc_seconds=0.5, grpc_warmup=0.2)
    echo = run.bench_grpc_echo(args)
    assert echo["ok"] > 0 and echo["failed"] == 0 and echo["valid"]
    assert echo["cpu_us_per_ok"]["grpc_echo"] is not None and echo["loadgen_cpu_s"] > 0

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("a\nb\nc\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nbad\n")
    intro: dict = {"tokens_per_format": 3, "token_lifetime_s": 600}
    with fake_issuer() as (target, fake_pid):
        for mode in run.INTROSPECT_MODES:
            result = run.grpc_measured_run(mode, target, {"token_issuer": fake_pid}, concurrency=8, seconds=0.5,
                                           warmup=0.1, tokens_file=str(tokens))
            assert result["ok"] > 0 and result["failed"] == 0, result["sample_failure"]
            assert result["warmup"]["first_pass_ok"] == 3
            result["items_per_rpc"] = 1.0
            intro.setdefault("jwt", {})[mode] = intro.setdefault("opaque", {})[mode] = result
            # as against the cache-off replica: the loaded one is "token_issuer", the stack's own one idle
            cold_roots, _ = run.cold_replica_view({"token_issuer": os.getpid()}, {}, fake_pid, "")
            cold = run.grpc_measured_run(mode, target, cold_roots, concurrency=8, seconds=0.3, warmup=0,
                                         tokens_file=str(tokens))
            assert set(cold["cpu_s"]) == {"token_issuer", run.IDLE_ISSUER}
            cold.update(label=run.GRPC_LABELS[(run.JWT_COLD, mode)], items_per_rpc=1.0, idle_issuer_introspect_rpcs=0,
                        replica={"INBOUND_VERIFIED_JWT_CACHE": "0"})
            intro.setdefault(run.JWT_COLD, {})[mode] = cold
        assert intro["jwt"]["batched"]["client_mean_batch"] >= 1
        failing = run.grpc_measured_run("unary", target, {"token_issuer": os.getpid()}, concurrency=4,
                                        seconds=0.3, warmup=0, tokens_file=str(bad))
        assert failing["failed"] > 0 and failing["sample_failure"] == "active=false"
        assert failing["warmup"]["first_pass_failed"] == 1

    sign = signing.measure(0.1)
    results = {"meta": {"cores": 2, "connections": 8, "seconds": 1, "warmup": 0, "loadgen": "wrk",
                        "loadgen_note": "wrk", "out": str(tmp_path / "r.json"), "grpc_concurrency": 8,
                        "grpc_seconds": 0.5, "grpc_warmup": 0.2, "grpc_loadgen_note": run.GRPC_LOADGEN_NOTE},
               "signing": sign, "verifying": signing.measure_verify(0.1), "bare_http": echo_as_http(echo),
               "grpc_echo": echo, "introspection": intro, "edge": {}}
    results["ratios"] = run.grpc_ratios(results)
    results["warnings"] = run.collect_warnings(results)
    assert not _wiring_warnings(results["warnings"]), results["warnings"]
    text = "\n".join(run.render_grpc(results))
    for _, _, label in run.GRPC_ROWS:
        assert label in text
    assert "bare gRPC echo" in text and "introspections/s / bare gRPC echo calls/s" in text
    assert "INBOUND_VERIFIED_JWT_CACHE=0" in text and "token_issuer of the stack, idle" in text
    assert "JWT cold batched  issuer CPU per introspection / raw ES256 verify" in text
    assert "verified-JWT cache: issuer CPU per call off / on" in text
    ratios = results["ratios"]
    assert ratios["introspect_jwt_batched_rate_over_grpc_echo"] > 0
    assert ratios["introspect_jwt_cold_batched_issuer_cpu_over_raw_verify"] > 0
    assert ratios["introspect_jwt_batched_cache_off_issuer_cpu_over_cache_on"] > 0
    widths = {len(line) for line in text.splitlines() if line.startswith("introspect ")}
    assert len(widths) == 1, widths  # the labels fit their column
    json.dumps(results)  # results.json must be able to hold it

    intro[run.JWT_COLD]["unary"] = {**intro[run.JWT_COLD]["unary"], "idle_issuer_introspect_rpcs": 5,
                                    "replica": {"INBOUND_VERIFIED_JWT_CACHE": "50000"}}
    warnings = run.collect_warnings(results)
    assert any("INVALID RUN" in w and "INBOUND_VERIFIED_JWT_CACHE='50000'" in w for w in warnings)
    assert any("served 5 Introspect RPCs" in w for w in warnings)


def test_cold_replica_view():
    roots = {"edge": 1, "token_issuer": 2, "client_registry": 3}
    urls = {"edge": "e", "token_issuer": "t", "client_registry": "r"}
    cold_roots, cold_urls = run.cold_replica_view(roots, urls, 9, "cold")
    assert cold_roots == {"edge": 1, "client_registry": 3, "token_issuer": 9, run.IDLE_ISSUER: 2}
    assert cold_urls == {"edge": "e", "client_registry": "r", "token_issuer": "cold", run.IDLE_ISSUER: "t"}
    assert roots["token_issuer"] == 2  # the stack's view is left as it was
    assert run._env_of(os.getpid(), "PATH") == os.environ["PATH"]
    assert run._env_of(os.getpid(), "INBOUND_NO_SUCH_VARIABLE") is None


def echo_as_http(run_result: dict) -> dict:
    """A bare-HTTP-shaped result, so collect_warnings can look at it."""
    return {**run_result, "non2xx": 0, "socket_errors": 0, "service_logs": {}}


def test_the_whole_bench_runs_through_both_stacks(tmp_path):
    """`python -m bench` end to end, every run a fraction of a second: the multi-process stack
    (tokens of both formats, gRPC introspection warm and cold) and the single process read the
    module table, start, serve real tokens and are measured; the JSON has every figure."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--seconds", "0.3", "--warmup", "0.1", "--connections", "4",
         "--sign-seconds", "0.1", "--grpc-seconds", "0.2", "--grpc-warmup", "0.1", "--grpc-concurrency", "4",
         "--introspect-tokens", "8", "--login-users", "4", "--login-connections", "2", "--login-seconds", "0.3",
         "--timing-tries", "3", "--argon2-seconds", "0.05", "--flow-connections", "2", "--federation-connections", "2",
         "--no-install",
         "--out", str(out)],
        cwd=run.ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    from services.modules import NAMES

    for mode, processes in (("edge", set(NAMES)), ("single", {run.SINGLE_PROCESS})):
        for fmt in ("jwt", "opaque"):
            figures = results[mode][fmt]
            assert figures["ok"] > 0 and figures["token_chars"] > 0, (mode, fmt)
            assert processes <= set(figures["cpu_s"]), (mode, fmt, sorted(figures["cpu_s"]))
            assert {"p50_us", "p99_us", "ok_per_s", "server_cpu_us_per_ok"} <= set(figures)
            assert not figures.get("dead_services"), figures["dead_services"]
    assert results["single"]["jwt"]["rpcs_served"] == {}, "the single process's token path used gRPC"
    assert any(k.startswith("edge: ") for k in results["edge"]["jwt"]["batches"]), "no batch figures scraped"
    for kind in run.INTROSPECT_KINDS:
        for mode in run.INTROSPECT_MODES:
            assert results["introspection"][kind][mode]["ok"] > 0, (kind, mode)
    # The TLS cost: JWT runs through two more stacks, mutual TLS and plaintext gRPC, in turn.
    for mode in run.TLS_MODES:
        figures = results["tls"][mode]
        assert figures["ok_per_s"] > 0 and set(NAMES) <= set(figures["cpu_us_per_ok"]), mode
        assert len(figures["runs"]) == run.TLS_ROUNDS and not any(r.get("dead_services") for r in figures["runs"])
    for key in ("jwt_single_rate_over_multi_rate", "jwt_rate_over_raw_signing", "introspect_jwt_batched_rate_over_unary",
                "jwt_tls_total_cpu_over_plaintext", "jwt_tls_services_cpu_over_plaintext"):
        assert results["ratios"][key] > 0, key
    assert "mTLS on every gRPC hop" in proc.stdout
    # Users: logins and refresh chains through both stacks, the timing and the login burst, and their ratios.
    assert results["argon2"]["verify"]["per_core_s"] > 0
    for mode in ("edge", "single"):
        users = results["users"][mode]
        for kind in ("logins", "refresh"):
            figures = users[kind]
            assert figures["ok"] > 0 and figures["non2xx"] == 0 and figures["per_core_s"] > 0, (mode, kind)
            assert not figures.get("chains_broken") and not figures.get("dead_services"), (mode, kind)
        assert results["ratios"][f"{mode}_logins_per_core_over_keycloak"] > 0
        assert results["ratios"][f"{mode}_refresh_per_core_over_keycloak"] > 0
    timing = results["users"]["edge"]["timing"]
    assert timing["same_answer"] and timing["wrong_username"]["n"] == timing["wrong_password"]["n"] == 3, timing
    assert timing["answers"]["wrong_username"][0].startswith("400 ") and "invalid_grant" in \
        timing["answers"]["wrong_username"][0]
    burst = results["users"]["single"]["burst"]
    assert burst["alone"]["ok"] > 0 and burst["burst"]["ok"] > 0 and burst["logins"]["ok"] > 0, burst["logins"]
    assert results["ratios"]["single_cc_p99_burst_over_alone"] > 0
    assert "password grant logins, multi-process" in proc.stdout
    assert not [w for w in results["warnings"] if w.startswith("users ") and "INVALID RUN" in w], results["warnings"]
    assert not _wiring_warnings(results["warnings"]), results["warnings"]
    assert "single process" in proc.stdout and "TOTAL server side" in proc.stdout
    # The browser: the whole code flow and the exchange alone through both stacks, beside client_credentials.
    assert results["signing_rs256"]["cpu_us_per_token"] > 0
    for mode in ("edge", "single"):
        browser = results["browser"][mode]
        for kind in ("flow", "exchange"):
            figures = browser[kind]
            assert figures["ok"] > 0 and figures["non2xx"] == 0 and figures["per_core_s"] > 0, (mode, kind, figures)
            assert not figures.get("dead_services"), (mode, kind)
        assert browser["minted"]["codes"] >= browser["exchange"]["ok"]
        for key in ("flow_per_core_over_cc_per_core", "exchange_per_core_over_cc_per_core",
                    "flow_cpu_over_raw_signatures"):
            assert results["ratios"][f"{mode}_{key}"] > 0, (mode, key)
    assert "whole flow (authorize -> code -> token), multi-process" in proc.stdout
    assert not [w for w in results["warnings"] if w.startswith("browser ") and ("INVALID RUN" in w or "exited" in w
                                                                               or "failed" in w)], results["warnings"]
    # Federation: JWT bearer grants, token exchanges and third-party introspection through both stacks.
    assert results["verifying_rs256"]["cpu_us_per_token"] > 0
    for mode in ("edge", "single"):
        federation = results["federation"][mode]
        for kind in ("jwt_bearer", "exchange"):
            figures = federation[kind]
            assert figures["ok"] > 0 and figures["non2xx"] == 0 and figures["per_core_s"] > 0, (mode, kind, figures)
            assert not figures.get("dead_services"), (mode, kind)
            assert results["ratios"][f"{mode}_{kind}_per_core_over_cc_per_core"] > 0, (mode, kind)
        for intro_mode in ("batched", "unary"):
            figures = federation["introspection"][intro_mode]
            assert figures["ok"] > 0 and figures["failed"] == 0, (mode, intro_mode, figures["sample_failure"])
        assert federation["idp_fetches"].get("/jwks"), federation["idp_fetches"]  # the keys came from the IdP
    assert results["ratios"]["edge_foreign_batched_rate_over_own_warm"] > 0
    assert "JWT bearer grants (RFC 7523), multi-process" in proc.stdout
    assert not [w for w in results["warnings"] if w.startswith("federation ") and ("INVALID RUN" in w or "exited" in w
                                                                                  or "ran out" in w)], \
        results["warnings"]


def test_delivery_ratios_and_rows_render():
    from bench import delivery

    def fake(cpu: float, p50: float) -> dict:
        return {"ok_per_s": 1000.0, "server_cpu_us_per_ok": cpu, "cpu_us_per_ok": {"token_issuer": cpu / 4},
                "p50_us": p50, "p99_us": p50 * 3, "non2xx": 0}
    results = {"meta": {"connections": 64},
               "delivery": {"buffered": {"loaded": fake(400, 2000), "lone": fake(900, 1000)},
                            "durable": {"loaded": fake(440, 2400), "lone": fake(950, 1300)}}}
    results["ratios"] = delivery.ratios(results)
    assert results["ratios"]["durable_over_buffered_cpu_per_token"] == 1.1
    mean = delivery.mean_run([{"ok": 100, "ok_per_s": 10.0, "server_cpu_s": 0.01, "cpu_s": {"edge": 0.01},
                               "p50_us": 1000, "p99_us": 3000, "non2xx": 1},
                              {"ok": 300, "ok_per_s": 30.0, "server_cpu_s": 0.07, "cpu_s": {"edge": 0.07},
                               "p50_us": 2000, "p99_us": 5000, "non2xx": 0}])
    assert mean["server_cpu_us_per_ok"] == 200 and mean["p50_us"] == 1500 and mean["non2xx"] == 1
    assert results["ratios"]["durable_over_buffered_p50_lone"] == 1.3
    text = "\n".join(delivery.render(results))
    for _, label, _ in delivery.RATIO_LABELS:
        assert label in text
    assert delivery.ratios({"delivery": {}}) == {} and delivery.render({"ratios": {}}) == []


class _FakeTokenEndpoint:
    """A token endpoint over HTTP/1.1 keep-alive: a refresh token is good once and answered with a new one
    (rotation); any other body is recorded and answered 200."""

    def __init__(self):
        import http.server
        import threading

        self.valid: set[str] = set()
        self.bodies: list[str] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                from urllib.parse import parse_qs

                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                status, answer = 200, {"access_token": "a"}
                with fake.lock:
                    fake.bodies.append(body)
                    if form.get("grant_type") == "refresh_token":
                        if form.get("refresh_token") in fake.valid:
                            fake.valid.discard(form["refresh_token"])
                            answer["refresh_token"] = fake.issue()
                        else:
                            status, answer = 400, {"error": "invalid_grant"}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth/token"

    def issue(self) -> str:
        import secrets as _secrets

        token = "ibr_" + _secrets.token_urlsafe(8)
        self.valid.add(token)
        return token

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_pyload_refresh_chains_present_each_answer_s_token(tmp_path):
    """bench.pyload's chain mode: every request presents the refresh token of its chain's previous answer
    (the fake endpoint takes each token once), and a run continues where the last one left off; a spent
    token breaks its chain and is counted."""
    from bench import passwords

    fake = _FakeTokenEndpoint()
    try:
        first = tmp_path / "c0.txt"
        first.write_text("".join(fake.issue() + "\n" for _ in range(3)))
        mid, end = tmp_path / "c1.txt", tmp_path / "c2.txt"
        warm = passwords.run_pyload(fake.url, {}, 3, 0.3, chain_in=str(first), chain_out=str(mid))
        assert warm["requests"] > 3 and warm["non2xx"] == 0 and warm["chains_broken"] == 0
        result = passwords.run_pyload(fake.url, {}, 3, 0.3, chain_in=str(mid), chain_out=str(end))
        assert result["requests"] > 3 and result["non2xx"] == 0 and result["chains_broken"] == 0
        assert set(end.read_text().split()) == fake.valid  # the last answer's token of each chain
        spent = passwords.run_pyload(fake.url, {}, 3, 0.3, chain_in=str(first), chain_out=str(tmp_path / "x"))
        assert spent["chains_broken"] == 3 and spent["non2xx"] == 3 and spent["requests"] == 3

        bodies = tmp_path / "bodies.txt"
        bodies.write_text("grant_type=password&username=u1\ngrant_type=password&username=u2\n")
        fake.bodies.clear()
        logins = passwords.run_pyload(fake.url, {}, 2, 0.2, bodies_file=str(bodies))
        assert logins["ok"] > 2 and {"grant_type=password&username=u1", "grant_type=password&username=u2"} \
            == set(fake.bodies)

        # --once: single-use bodies (assertions with a jti) are each sent exactly once, then the run stops
        single_use = [f"grant_type=x&assertion=a{i}" for i in range(5)]
        bodies.write_text("".join(b + "\n" for b in single_use))
        fake.bodies.clear()
        once = passwords.run_pyload(fake.url, {}, 2, 30, bodies_file=str(bodies), once=True)
        assert sorted(fake.bodies) == sorted(single_use) and once["ok"] == 5 and once["bodies_left"] == 0
        assert once["seconds"] < 30  # it stopped when they ran out, not at the time
    finally:
        fake.close()


def test_users_figures_ratios_and_render():
    from bench import passwords

    argon = passwords.measure_argon2(0.05)
    assert argon["memory_kib"] == 19456 and argon["time_cost"] == 2 and argon["parallelism"] == 1
    assert argon["verify"]["per_core_s"] > 0 and argon["hash"]["count"] >= 3

    timing = passwords.timing_summary([10.0, 12.0, 11.0, 13.0], [11.0, 12.0, 10.0, 14.0])
    assert timing["wrong_username"]["median_us"] == 11.5 and timing["median_diff_us"] == 0.0
    assert timing["median_diff_over_spread"] == 0.0
    assert timing["paired_median_diff_us"] == -0.5  # pairs: -1, 0, 1, -1

    def fake(per_s: float, cpu_us: float) -> dict:
        return {"ok_per_s": per_s, "ok": 100, "server_cpu_us_per_ok": cpu_us, "per_core_s": 1e6 / cpu_us,
                "per_inbound_core_s": 2e6 / cpu_us, "cpu_us_per_ok": {"edge": cpu_us / 2, "postgres": cpu_us / 2},
                "p50_us": 1000, "p99_us": 3000, "non2xx": 0, "socket_errors": 0, "connections": 16,
                "machine": {"other_cores": 0.0, "cores": 2, "busy_cores": 1.0}, "service_logs": {}}
    verify_per_core = argon["verify"]["per_core_s"]
    burst = {"cc_connections": 8, "alone": fake(1000, 500), "burst": {**fake(800, 600), "p99_us": 6000},
             "logins": {"ok_per_s": 30.0, "connections": 32, "non2xx": 0}, "p99_ratio": 2.0, "p50_ratio": 1.0}
    results = {"argon2": argon,
               "users": {"edge": {"logins": fake(40, 1e6 / 45), "refresh": {**fake(700, 1e6 / 900), "chains": 64},
                                  "timing": {**timing, "tries_each": 4, "same_answer": True, "answers": {}}},
                         "single": {"logins": fake(40, 1e6 / 40), "burst": burst}}}
    r = passwords.ratios(results)
    assert math.isclose(r["edge_logins_per_core_over_keycloak"], 3.0)
    assert math.isclose(r["edge_refresh_per_core_over_keycloak"], 7.5)
    assert math.isclose(r["edge_logins_per_core_over_bare_argon2"], 45 / verify_per_core)
    assert r["single_cc_p99_burst_over_alone"] == 2.0 and "single_refresh_per_core_over_keycloak" not in r
    results["ratios"] = r
    text = "\n".join(passwords.render(results))
    for label in ("bare argon2id verify", "password grant logins, multi-process", "refresh_token grants (chains)",
                  "Keycloak's ~15 per vCPU", "Keycloak's ~120 per vCPU", "Wrong username against wrong password",
                  "while 32 logins in flight"):
        assert label in text, label
    assert passwords.warnings(results) == []
    results["users"]["edge"]["refresh"]["chains_broken"] = 2
    assert any("2 chains broken" in w for w in passwords.warnings(results))
    json.dumps(results)


# --- the browser's flow (bench/codeflow.py, bench/flowload.py) ---------------------------------------------

SIGN_IN_PAGE = """<html><body><form method="post" action="/oauth/authorize/sign-in">
<input type="hidden" name="csrf_token" value="csrf-1"><input type="hidden" name="request_id" value="req-1">
<label for="u">Username</label><input id="u" name="username" type="text" autocomplete="username">
<label for="p">Password</label><input id="p" name="password" type="password">
<button type="submit">Sign in</button></form></body></html>"""
CONSENT_PAGE = """<html><body><form method="post" action="/account/sign-out"><input type="hidden" name="csrf_token"
value="csrf-2"><button type="submit">Sign out</button></form>
<form method="post" action="/oauth/authorize/consent"><input type="hidden" name="csrf_token" value="csrf-2">
<input type="hidden" name="request_id" value="req-1"><button type="submit" name="decision" value="0">Deny</button>
<button type="submit" name="decision" value="1"><span>Allow</span></button></form></body></html>"""


def test_the_browser_s_forms_are_filled_as_a_person_would():
    from bench import codeflow

    (sign_in,) = codeflow.page_forms(SIGN_IN_PAGE)
    fields = codeflow._submission(sign_in, "alice", "pw-1")
    assert sign_in["action"] == "/oauth/authorize/sign-in" and sign_in["method"] == "post"
    assert fields == {"csrf_token": "csrf-1", "request_id": "req-1", "username": "alice", "password": "pw-1"}
    sign_out, consent = codeflow.page_forms(CONSENT_PAGE)
    assert codeflow._submission(sign_out, "alice", "pw-1") is None  # never signs itself out
    assert codeflow._submission(consent, "alice", "pw-1") == {"csrf_token": "csrf-2", "request_id": "req-1",
                                                              "decision": "1"}


class _FakeAuthorizationServer:
    """GET /oauth/authorize answers 302 to the redirect URI with a fresh code bound to the S256 challenge
    (only for a browser with the session cookie); POST /oauth/token takes each code once, with its verifier."""

    def __init__(self):
        import http.server
        import secrets as _secrets
        import threading
        from urllib.parse import parse_qs, urlencode, urlsplit

        from inboundlib.oauth import pkce

        self.codes: dict[str, str] = {}
        self.exchanged = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                             **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                if "session=warm" not in (self.headers.get("Cookie") or ""):
                    return self.answer(200, {"page": "sign in"})
                code = "ibc_" + _secrets.token_urlsafe(8)
                with fake.lock:
                    fake.codes[code] = query["code_challenge"]
                location = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
                self.answer(302, {}, {"Location": location})

            def do_POST(self):
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                        .items()}
                with fake.lock:
                    challenge = fake.codes.pop(form.get("code", ""), None)
                    good = challenge is not None and pkce.s256(form.get("code_verifier", "")) == challenge
                    fake.exchanged += good
                if not good:
                    return self.answer(400, {"error": "invalid_grant"})
                self.answer(200, {"access_token": "a", "id_token": "i", "token_type": "Bearer"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_flowload_runs_the_flow_mints_and_exchanges_each_code_once(tmp_path):
    from types import SimpleNamespace

    from bench import codeflow

    fake = _FakeAuthorizationServer()
    try:
        stack = SimpleNamespace(edge_url=fake.url)
        setup_ = {"client_id": "c1"}
        sessions = tmp_path / "sessions.txt"
        sessions.write_text("session=warm; csrf=x\nsession=warm\n")
        flow = codeflow.run_flowload(stack, setup_, sessions, "flow", 2, 0.3)
        assert flow["ok"] > 0 and flow["non2xx"] == 0 and fake.exchanged == flow["ok"]
        codes = tmp_path / "codes.txt"
        # Each run ends when its codes are made or spent (the 60 s are a backstop, never reached):
        # minting stops at the count (each of the 2 connections may finish the one it had begun),
        # by the number made, not by a clock.
        minted = codeflow.run_flowload(stack, setup_, sessions, "mint", 2, 60, count="20", codes_out=str(codes))
        assert 20 <= minted["ok"] <= 21 and len(codes.read_text().splitlines()) == minted["ok"]
        before = fake.exchanged
        exchange = codeflow.run_flowload(stack, setup_, sessions, "exchange", 2, 60, codes_in=str(codes))
        assert exchange["ok"] == len(codes.read_text().splitlines()) and fake.exchanged - before == exchange["ok"]
        assert exchange["codes_left"] == 0
        again = codeflow.run_flowload(stack, setup_, sessions, "exchange", 2, 60, codes_in=str(codes))
        assert again["ok"] == 0 and again["non2xx"] == exchange["ok"]  # spent codes fail, and are counted
        cold = tmp_path / "cold.txt"
        cold.write_text("session=cold\n")  # a browser without a session: the flow fails, counted with a sample
        failed = codeflow.run_flowload(stack, setup_, cold, "flow", 1, 0.2)
        assert failed["ok"] == 0 and failed["non2xx"] > 0 and failed["sample_non2xx"].startswith("authorize 200")
    finally:
        fake.close()


def test_browser_figures_ratios_and_render():
    from bench import codeflow

    def fake(per_s: float, cpu_us: float) -> dict:
        return {"ok_per_s": per_s, "ok": 100, "server_cpu_us_per_ok": cpu_us, "per_core_s": 1e6 / cpu_us,
                "per_inbound_core_s": 2e6 / cpu_us, "cpu_us_per_ok": {"edge": cpu_us / 2, "postgres": cpu_us / 2},
                "p50_us": 1000, "p99_us": 3000, "non2xx": 0, "socket_errors": 0, "seconds": 1.0,
                "machine": {"other_cores": 0.0, "cores": 2, "busy_cores": 1.0}, "service_logs": {}}
    results = {"signing": {"cpu_us_per_token": 60.0}, "signing_rs256": {"cpu_us_per_token": 340.0},
               "edge": {"jwt": fake(3000, 400)}, "single": {"jwt": fake(3500, 300)},
               "browser": {"edge": {"connections": 16, "flow": fake(300, 4000), "exchange": fake(700, 2000)},
                           "single": {"connections": 16, "flow": fake(350, 3000)}}}
    r = codeflow.ratios(results)
    assert math.isclose(r["edge_flow_per_core_over_cc_per_core"], 0.1)
    assert math.isclose(r["edge_exchange_per_core_over_cc_per_core"], 0.2)
    assert math.isclose(r["edge_flow_cpu_over_raw_signatures"], 10.0)
    assert math.isclose(r["single_flow_per_core_over_cc_per_core"], 0.1)
    assert "single_exchange_per_core_over_cc_per_core" not in r
    results["ratios"] = r
    text = "\n".join(codeflow.render(results))
    for label in ("whole flow (authorize -> code -> token), multi-process", "code exchange alone, multi-process",
                  "client_credentials JWT, same stack and run", "whole flows/s/core / client_credentials/s/core",
                  "CPU per flow / raw ES256 + RS256 sign"):
        assert label in text, label
    assert codeflow.warnings(results) == []
    results["browser"]["edge"]["flow"]["non2xx"] = 3
    assert any("browser edge flow: INVALID RUN" in w for w in codeflow.warnings(results))
    json.dumps(results)


# --- federation (bench/federation.py) ------------------------------------------------------------------------

def test_federation_figures_ratios_and_render():
    from bench import federation

    def fake(per_s: float, cpu_us: float, **extra) -> dict:
        return {"ok_per_s": per_s, "ok": 100, "requests": 100, "server_cpu_us_per_ok": cpu_us,
                "per_core_s": 1e6 / cpu_us, "per_inbound_core_s": 2e6 / cpu_us,
                "cpu_us_per_ok": {"jwt_bearer": cpu_us / 2, "token_issuer": cpu_us / 4,
                                  "third_party_token": cpu_us / 4},
                "p50_us": 1000, "p99_us": 3000, "non2xx": 0, "socket_errors": 0, "failed": 0, "seconds": 8.0,
                "planned_s": 8.0, "bodies_left": 10, "connections": 64,
                "machine": {"other_cores": 0.0, "cores": 2, "busy_cores": 1.0}, "service_logs": {}, **extra}
    intro = {mode: fake(2000, 400, label=f"introspect third-party JWT, {mode} (keys warm)", tokens=50)
             for mode in federation.INTROSPECT_MODES}
    results = {"meta": {"grpc_concurrency": 64}, "signing": {"cpu_us_per_token": 100.0},
               "verifying": {"cpu_us_per_token": 200.0}, "verifying_rs256": {"cpu_us_per_token": 50.0},
               "grpc_echo": {"ok_per_s": 4000.0},
               "introspection": {"jwt": {"batched": {"ok_per_s": 8000.0}}, "jwt_cold": {"batched": {"ok_per_s": 1000.0}}},
               "edge": {"jwt": fake(1000, 1000)},
               "federation": {"edge": {"jwt_bearer": fake(300, 3000), "exchange": fake(250, 2000),
                                       "introspection": intro}}}
    r = federation.ratios(results)
    assert math.isclose(r["edge_jwt_bearer_per_core_over_cc_per_core"], 1 / 3)
    assert math.isclose(r["edge_jwt_bearer_cpu_over_raw_signatures"], 3000 / 300)  # ES256 verify + sign
    assert math.isclose(r["edge_exchange_cpu_over_raw_signatures"], 2000 / 150)  # RS256 verify + ES256 sign
    assert r["edge_foreign_batched_rate_over_own_warm"] == 0.25 and r["edge_foreign_batched_rate_over_own_cold"] == 2
    assert r["edge_foreign_unary_rate_over_grpc_echo"] == 0.5 and "edge_foreign_unary_rate_over_own_warm" not in r
    assert math.isclose(r["edge_foreign_batched_issuer_and_third_party_cpu_over_raw_rs256_verify"], 200 / 50)
    results["ratios"] = r
    text = "\n".join(federation.render(results))
    for label in ("JWT bearer grants (RFC 7523), multi-process", "token exchanges of ID tokens (RFC 8693)",
                  "introspect third-party JWT, batched (keys warm)", "client_credentials JWT, same stack and run",
                  "JWT bearer grants/s/core / client_credentials/s/core", "third-party introspections/s / own JWTs'"):
        assert label in text, label
    assert federation.warnings(results) == []
    results["federation"]["edge"]["exchange"].update(bodies_left=0, seconds=2.0)
    results["federation"]["edge"]["jwt_bearer"].update(non2xx=3, sample_non2xx='400 {"error":"invalid_grant"}')
    intro["unary"].update(failed=2, sample_failure="active=false")
    found = federation.warnings(results)
    assert any("exchange: the minted tokens ran out" in w for w in found), found
    assert any("jwt_bearer: INVALID RUN" in w and "invalid_grant" in w for w in found), found
    assert any("introspection unary: INVALID RUN" in w for w in found), found
    assert federation.render({"federation": {}}) == [] and federation.ratios({}) == {}
    json.dumps(results)


def test_federation_bodies_are_single_use_grants():
    from urllib.parse import parse_qs

    import jwt

    from bench import federation

    key, kid, jwks = federation.assertion_key()
    assertions = federation.mint_assertions(key, kid, "iss-1", "http://127.0.0.1:1/oauth/token", ["u1", "u2"], 4)
    claims = [jwt.decode(a, key.public_key(), algorithms=["ES256"], audience="http://127.0.0.1:1/oauth/token")
              for a in assertions]
    assert [c["sub"] for c in claims] == ["u1", "u2", "u1", "u2"] and len({c["jti"] for c in claims}) == 4
    assert all(c["iss"] == "iss-1" and c["exp"] - c["iat"] == federation.ASSERTION_LIFETIME for c in claims)
    assert json.loads(jwks)["keys"][0]["kid"] == kid == jwt.get_unverified_header(assertions[0])["kid"]
    body = parse_qs(federation.jwt_bearer_body(assertions[0]))
    assert body == {"grant_type": ["urn:ietf:params:oauth:grant-type:jwt-bearer"], "assertion": [assertions[0]],
                    "scope": [federation.SCOPE]}
    body = parse_qs(federation.exchange_body("tok"))
    assert body["grant_type"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    assert body["subject_token_type"] == ["urn:ietf:params:oauth:token-type:id_token"]

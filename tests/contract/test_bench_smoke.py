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
         "--introspect-tokens", "8", "--no-install", "--out", str(out)],
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
    assert not _wiring_warnings(results["warnings"]), results["warnings"]
    assert "single process" in proc.stdout and "TOTAL server side" in proc.stdout


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

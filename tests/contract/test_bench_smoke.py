"""`make bench` smoke test: every figure the bench prints can be produced and
parsed, on a very short run. Asserts no timing (the machine is shared)."""
from __future__ import annotations

import argparse
import math

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

"""The result line the Python load generators print (bench.loadgen.result_lines, used by
bench.pyload and bench.flowload) is the one wrk prints: parse_result reads every figure
back, the extra counters included, and the first non-2xx sample."""
from __future__ import annotations

from bench.loadgen import parse_result, percentile, result_lines


def test_the_result_line_reads_back_through_parse_result():
    latencies = [float(us) for us in range(1, 1001)]
    printed = result_lines(requests=1000, seconds=2.0, latencies_us=latencies[::-1], bytes_read=5, non2xx=3,
                           err_connect=1, err_read=2, err_status=3, sample="400 bad\r\nbody", chains_broken=4,
                           codes_left=7)
    result = parse_result(printed)
    assert (result["requests"], result["duration_us"], result["bytes"], result["non2xx"]) == (1000, 2_000_000, 5, 3)
    assert (result["err_connect"], result["err_read"], result["err_status"]) == (1, 2, 3)
    assert (result["p50_us"], result["p99_us"], result["max_us"], result["mean_us"]) == (501, 991, 1000, 500.5)
    assert (result["chains_broken"], result["codes_left"]) == (4, 7)
    assert result["sample_non2xx"] == "400 bad  body" and result["ok"] == 997


def test_no_latencies_are_zeros_and_no_sample_line():
    printed = result_lines(requests=0, seconds=1.0, latencies_us=[])
    assert "BENCH_SAMPLE" not in printed and percentile([], 50) == 0.0
    assert parse_result(printed)["p999_us"] == 0

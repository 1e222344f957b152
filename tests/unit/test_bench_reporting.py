"""The bench's reports: the result line the Python load generators print
(bench.loadgen.result_lines, used by bench.pyload and bench.flowload) is the one wrk
prints, and parse_result reads every figure back; every kind of run is warned about
in one wording (bench.run.run_warnings, used by bench.passwords and bench.codeflow)."""
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


NOISY_RUN = {"non2xx": 0, "socket_errors": 0, "dead_services": ["edge"], "service_logs": {
    "edge": {"problems": 1, "first_problems": [{"level": "ERROR", "msg": "boom", "extra": {}, "exc_last_line": ""}]}},
    "machine": {"other_cores": 0.9, "cores": 2, "processes_started": 3,
                "top_other_processes": [{"comm": "cc1", "pid": 7, "cores": 0.8}]}}


def test_every_kind_of_run_is_judged_alike():
    """bench.run's rates, the users' runs (bench.passwords) and the browser's (bench.codeflow):
    a service's logged error, a service that exited and a busy machine each warn, in one wording."""
    from bench import codeflow, passwords, run

    expected = ["edge logged 1 warning/error line(s)", "other processes used 0.90 of 2 cores during the run "
                "(noisy machine: 3 processes started in the window; top long-lived: cc1[7] 0.80)",
                "services exited during the run: ['edge']"]
    assert [w.split(": ", 1)[1][:len(e)] for w, e in zip(run.run_warnings("x", NOISY_RUN), expected)] == expected
    browser = codeflow.warnings({"browser": {"multi": {"flow": NOISY_RUN}}})
    users = passwords.warnings({"users": {"multi": {"logins": NOISY_RUN}}})
    for label, found in (("browser multi flow", browser), ("users multi logins", users)):
        assert found == run.run_warnings(label, NOISY_RUN), found

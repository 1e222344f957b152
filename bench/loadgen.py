"""The load generator: wrk (C, with a Lua script for the POST body, headers,
non-2xx counting and a done() that prints percentiles), or, where wrk cannot be
had, a Python asyncio fallback that prints the same result line.

Both print one line `BENCH_RESULT key=value ...` (and `BENCH_SAMPLE <status>
<body>` for the first non-2xx answer) which `parse_result` turns into a dict.
"""
from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_LUA_TEMPLATE = r"""
wrk.method = "POST"
wrk.body = %(body)s
%(headers)s

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  sample = ""
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if sample == "" then
      sample = tostring(status) .. " " .. string.sub(body or "", 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local n, s = 0, ""
  for _, t in ipairs(threads) do
    n = n + (t:get("non2xx") or 0)
    local ts = t:get("sample")
    if s == "" and ts ~= nil and ts ~= "" then s = ts end
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%%d duration_us=%%d bytes=%%d non2xx=%%d err_connect=%%d err_read=%%d " ..
    "err_write=%%d err_status=%%d err_timeout=%%d mean_us=%%.1f p50_us=%%d p90_us=%%d p99_us=%%d " ..
    "p999_us=%%d max_us=%%d\n",
    summary.requests, summary.duration, summary.bytes, n, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
  if s ~= "" then
    local flat = string.gsub(s, "[\r\n]", " ")
    io.write("BENCH_SAMPLE " .. flat .. "\n")
  end
end
"""

_INT_KEYS = ("requests", "duration_us", "bytes", "non2xx", "err_connect", "err_read", "err_write", "err_status",
             "err_timeout", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "chains_broken", "bodies_left")


def _lua_string(value: str) -> str:
    if any(not (32 <= ord(ch) < 127) for ch in value):
        raise ValueError(f"only printable ASCII in a load-generator string: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lua_script(body: str, headers: dict[str, str]) -> str:
    header_lines = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
    return _LUA_TEMPLATE % {"body": _lua_string(body), "headers": header_lines}


def percentile(sorted_values: list[float], p: float) -> float:
    """The p-th percentile of already sorted values (0 when there are none)."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def result_lines(*, requests: int, seconds: float, latencies_us: list[float], bytes_read: int = 0, non2xx: int = 0,
                 err_connect: int = 0, err_read: int = 0, err_status: int = 0, sample: str = "", **extra: int) -> str:
    """What a Python load generator (bench.pyload, bench.flowload) prints: the BENCH_RESULT
    line wrk's done() prints (`extra` keys appended), and BENCH_SAMPLE when a non-2xx
    answer was kept. parse_result reads it back."""
    lat = sorted(latencies_us)
    mean = sum(lat) / len(lat) if lat else 0.0
    pcts = " ".join(f"{name}={int(percentile(lat, p))}" for name, p in
                    (("p50_us", 50), ("p90_us", 90), ("p99_us", 99), ("p999_us", 99.9)))
    line = (f"BENCH_RESULT requests={requests} duration_us={int(seconds * 1e6)} bytes={bytes_read} non2xx={non2xx} "
            f"err_connect={err_connect} err_read={err_read} err_write=0 err_status={err_status} err_timeout=0 "
            f"mean_us={mean:.1f} {pcts} max_us={int(lat[-1]) if lat else 0}")
    line += "".join(f" {key}={value}" for key, value in extra.items())
    if sample:
        line += "\nBENCH_SAMPLE " + sample.replace("\r", " ").replace("\n", " ")
    return line


def parse_result(output: str) -> dict:
    """The dict from a load generator's output; raises ValueError if the result line is missing."""
    result: dict = {}
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                result[key] = int(float(value)) if key in _INT_KEYS else float(value)
        elif line.startswith("BENCH_SAMPLE "):
            result["sample_non2xx"] = line[len("BENCH_SAMPLE "):].strip()
    if "requests" not in result:
        raise ValueError("no BENCH_RESULT line in the load generator's output:\n" + output[-2000:])
    result.setdefault("sample_non2xx", "")
    socket_errors = sum(result[k] for k in ("err_connect", "err_read", "err_write", "err_timeout"))
    result["socket_errors"] = socket_errors
    result["ok"] = max(0, result["requests"] - result["non2xx"])
    seconds = result["duration_us"] / 1e6
    result["seconds"] = seconds
    result["ok_per_s"] = result["ok"] / seconds if seconds else 0.0
    result["valid"] = result["non2xx"] == 0 and socket_errors == 0 and result["requests"] > 0
    return result


def _apt_install_wrk() -> str:
    """Install wrk with apt-get (update first only if the install fails); '' on success, else why not."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if first.returncode == 0:
        return ""
    subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if second.returncode == 0:
        return ""
    return (second.stderr or second.stdout).strip().splitlines()[-1:][0] if (second.stderr or second.stdout) \
        else f"apt-get exited {second.returncode}"


def find_wrk(install: bool) -> tuple[str | None, str]:
    """(path to wrk or None, a note on how it was found or why it is missing)."""
    found = shutil.which("wrk") or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)
    if found:
        return found, "wrk"
    if not install:
        return None, "wrk not installed"
    print("wrk is missing: apt-get install -y wrk ...", flush=True)
    why = _apt_install_wrk()
    found = shutil.which("wrk") or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)
    if found:
        return found, "wrk (installed by this run with apt-get)"
    return None, f"wrk could not be installed ({why})"


@dataclass
class LoadGen:
    wrk: str | None
    note: str
    threads: int = field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))

    @classmethod
    def create(cls, install: bool = True, prefer_python: bool = False) -> "LoadGen":
        if prefer_python:
            return cls(None, "Python asyncio fallback (asked for)")
        path, note = find_wrk(install)
        if path is None:
            note += "; FALLBACK: Python asyncio load generator (it shares the 2 cores with the server)"
        return cls(path, note)

    @property
    def kind(self) -> str:
        return "wrk" if self.wrk else "python-asyncio"

    def run(self, url: str, body: str, headers: dict[str, str], connections: int, seconds: float) -> dict:
        """One load run; returns the parsed result plus the load generator's own CPU seconds."""
        with tempfile.TemporaryDirectory(prefix="inbound-bench-") as tmp:
            if self.wrk:
                script = Path(tmp) / "post.lua"
                script.write_text(lua_script(body, headers))
                duration = max(1, round(seconds))
                cmd = [self.wrk, f"-t{min(self.threads, connections)}", f"-c{connections}", f"-d{duration}s",
                       "--timeout", "10s", "-s", str(script), url]
            else:
                cmd = [sys.executable, "-m", "bench.pyload", "--url", url, "--body", body,
                       "--connections", str(connections), "--seconds", str(seconds)]
                for k, v in headers.items():
                    cmd += ["--header", f"{k}: {v}"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 60)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"load generator exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        result = parse_result(done.stdout)
        result["loadgen_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        result["loadgen"] = self.kind
        return result


def run_on_uvloop(main) -> None:
    """Run a load generator's (or bare server's) coroutine on uvloop, as every service runs,
    or on asyncio's loop where uvloop is missing."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)

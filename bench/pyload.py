"""Fallback load generator when wrk cannot be installed: N keep-alive HTTP/1.1
connections on asyncio (uvloop), each POSTing in a loop for a fixed time.
Prints the same BENCH_RESULT line as the wrk Lua script.

    python -m bench.pyload --url URL --body BODY --header 'K: V' --connections 64 --seconds 10
"""
from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import urlsplit


async def _worker(host: str, port: int, request: bytes, deadline: float, stats: dict) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats["err_connect"] += 1
        return
    latencies = stats["latencies"]
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                stats["err_read"] += 1
                return
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:].strip())
            body = await reader.readexactly(length) if length else b""
            latencies.append((time.perf_counter() - t0) * 1e6)
            stats["requests"] += 1
            stats["bytes"] += len(head) + len(body)
            if not 200 <= status <= 299:
                stats["non2xx"] += 1
                if status > 399:
                    stats["err_status"] += 1
                if not stats["sample"]:
                    stats["sample"] = f"{status} {body[:300].decode(errors='replace')}"
    finally:
        writer.close()


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


async def _main(args) -> None:
    url = urlsplit(args.url)
    headers = {"Host": url.netloc, "Content-Length": str(len(args.body.encode()))}
    for h in args.header:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    request = (f"POST {url.path or '/'} HTTP/1.1\r\n" +
               "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n" + args.body).encode()
    stats = {"requests": 0, "bytes": 0, "non2xx": 0, "err_connect": 0, "err_read": 0, "err_status": 0,
             "latencies": [], "sample": ""}
    start = time.perf_counter()
    deadline = start + args.seconds
    await asyncio.gather(*(_worker(url.hostname, url.port or 80, request, deadline, stats)
                           for _ in range(args.connections)))
    duration = time.perf_counter() - start
    lat = sorted(stats["latencies"])
    mean = sum(lat) / len(lat) if lat else 0.0
    print(f"BENCH_RESULT requests={stats['requests']} duration_us={int(duration * 1e6)} bytes={stats['bytes']} "
          f"non2xx={stats['non2xx']} err_connect={stats['err_connect']} err_read={stats['err_read']} err_write=0 "
          f"err_status={stats['err_status']} err_timeout=0 mean_us={mean:.1f} p50_us={int(_pct(lat, 50))} "
          f"p90_us={int(_pct(lat, 90))} p99_us={int(_pct(lat, 99))} p999_us={int(_pct(lat, 99.9))} "
          f"max_us={int(lat[-1]) if lat else 0}")
    if stats["sample"]:
        print("BENCH_SAMPLE " + stats["sample"].replace("\r", " ").replace("\n", " "))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pyload")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", default="")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.run(_main(args))
    except ImportError:
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()

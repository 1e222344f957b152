"""The Python asyncio load generator: N keep-alive HTTP/1.1 connections on asyncio
(uvloop), each POSTing in a loop for a fixed time. Prints the same BENCH_RESULT line
as the wrk Lua script. It is wrk's fallback for the fixed-body runs, and the load
generator of the runs whose body changes per request (wrk's is fixed):

- `--bodies-file F`: one form body a line, taken in turn by every request (the
  password grant over many users: one user's sign-ins are serialized by design);
  with `--once`, each body is sent once and the run stops when they run out (bodies
  that carry a single-use JWT: a JWT-bearer assertion or a token to exchange, whose
  `jti` a second use would replay); `bodies_left` says how many were not sent;
- `--chain-in F --chain-out F --chain-body B`: refresh-token chains, one a
  connection: connection i starts from line i of F, posts `B&refresh_token=<t>`,
  and posts the refresh token of each answer in the next request (RFC 6749 §6
  with rotation: a used one is spent); the last token of each chain is written to
  `--chain-out`, so a measured run continues the chains of its warm-up. A chain
  whose answer is not 2xx, or has no refresh_token, stops (counted as non-2xx).

    python -m bench.pyload --url URL --body BODY --header 'K: V' --connections 64 --seconds 10
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

from bench.loadgen import result_lines, run_on_uvloop


def _request(url, headers: dict[str, str], body: str) -> bytes:
    data = body.encode()
    head = {**headers, "Content-Length": str(len(data))}
    return (f"POST {url.path or '/'} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
            + "\r\n").encode() + data


async def _worker(host: str, port: int, next_body, deadline: float, stats: dict, chain: list[str] | None,
                  chain_body: str, url, headers: dict[str, str]) -> None:
    """`chain`: [refresh token] for a refresh chain (updated in place with each answer's), else None."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats["err_connect"] += 1
        return
    latencies = stats["latencies"]
    try:
        while time.perf_counter() < deadline:
            try:
                body = f"{chain_body}&refresh_token={quote(chain[0], safe='')}" if chain is not None else next_body()
            except IndexError:  # --once: every body was sent
                return
            request = _request(url, headers, body)
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
            answer = await reader.readexactly(length) if length else b""
            latencies.append((time.perf_counter() - t0) * 1e6)
            stats["requests"] += 1
            stats["bytes"] += len(head) + len(answer)
            ok = 200 <= status <= 299
            if ok and chain is not None:
                try:
                    chain[0] = json.loads(answer)["refresh_token"]
                except (ValueError, KeyError, TypeError):
                    ok = False  # a refresh answer without a successor ends the chain
            if not ok:
                stats["non2xx"] += 1
                if status > 399:
                    stats["err_status"] += 1
                if not stats["sample"]:
                    stats["sample"] = f"{status} {answer[:300].decode(errors='replace')}"
                if chain is not None:
                    stats["chains_broken"] += 1
                    return
    finally:
        writer.close()


async def _main(args) -> None:
    url = urlsplit(args.url)
    headers = {"Host": url.netloc}
    for h in args.header:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    stats = {"requests": 0, "bytes": 0, "non2xx": 0, "err_connect": 0, "err_read": 0, "err_status": 0,
             "latencies": [], "sample": "", "chains_broken": 0}
    chains: list[list[str]] = []
    if args.chain_in:
        tokens = [t for t in Path(args.chain_in).read_text().split() if t]
        if len(tokens) < args.connections:
            raise SystemExit(f"{len(tokens)} refresh tokens in {args.chain_in} for {args.connections} connections")
        chains = [[t] for t in tokens[:args.connections]]
    bodies: list[str] = []
    if args.bodies_file:
        bodies = [b for b in Path(args.bodies_file).read_text().splitlines() if b]
        if args.once:
            bodies.reverse()
            next_body = bodies.pop
        else:
            next_body = itertools.cycle(bodies).__next__
    else:
        next_body = itertools.repeat(args.body).__next__
    start = time.perf_counter()
    deadline = start + args.seconds
    await asyncio.gather(*(_worker(url.hostname, url.port or 80, next_body, deadline, stats,
                                   chains[i] if chains else None, args.chain_body, url, headers)
                           for i in range(args.connections)))
    duration = time.perf_counter() - start
    if args.chain_out:
        Path(args.chain_out).write_text("".join(c[0] + "\n" for c in chains))
    print(result_lines(requests=stats["requests"], seconds=duration, latencies_us=stats["latencies"],
                       bytes_read=stats["bytes"], non2xx=stats["non2xx"], err_connect=stats["err_connect"],
                       err_read=stats["err_read"], err_status=stats["err_status"], sample=stats["sample"],
                       chains_broken=stats["chains_broken"], bodies_left=len(bodies) if args.once else 0))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pyload")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", default="")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bodies-file", default="", help="one body a line, taken in turn by every request")
    parser.add_argument("--once", action="store_true",
                        help="with --bodies-file: each body once, then stop (single-use assertions)")
    parser.add_argument("--chain-in", default="", help="refresh tokens, one a line: one chain per connection")
    parser.add_argument("--chain-out", default="", help="where the last refresh token of each chain goes")
    parser.add_argument("--chain-body", default="grant_type=refresh_token",
                        help="the form before &refresh_token=... in a chain")
    args = parser.parse_args()
    run_on_uvloop(_main(args))


if __name__ == "__main__":
    main()

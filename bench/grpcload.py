"""The gRPC load generator (there is no wrk for gRPC): N concurrent callers on
grpc.aio + uvloop in a process of its own, each calling in a loop. Python, so it
competes with the servers for the machine's cores; its own CPU is measured and
printed beside theirs.

Modes:
- echo      /bench.Echo/Echo on bench.grpc_echo, a fixed payload of bytes
- batched   IssuerClient.introspect(token) — the product's client path: the
            Coalescer gathers concurrent calls into batched Introspect RPCs
- unary     TokenIssuer/Introspect with one item per RPC (no coalescing), to
            show what batching buys

Each introspection takes a random token from --tokens (one a line); an answer
that is not active=True counts as a failure, as does any exception.

Protocol with the parent (bench.run), so that its CPU snapshots frame exactly
the measured window: connect, warm up (introspection: first one pass over every
token, so the opaque cache is warm and every token has been seen — and, unless
that token_issuer runs with INBOUND_VERIFIED_JWT_CACHE=0, every JWT is in its
verified-JWT cache — then
--warmup seconds of load), print `READY <json>`, wait for a line on stdin, run
--seconds, print `GRPC_RESULT <json>` and exit.

    python -m bench.grpcload --mode batched --target 127.0.0.1:50052 --tokens FILE
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time

from bench.loadgen import percentile, run_on_uvloop

CALL_TIMEOUT = 3.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process, grpc's core threads too
    return r.ru_utime + r.ru_stime


def _batch_metric() -> tuple[float, float]:
    """(items, batches) the IssuerClient's Coalescer has sent so far (inbound_batch_size histogram)."""
    from prometheus_client import REGISTRY

    labels = {"call": "issuer.Introspect"}
    return (REGISTRY.get_sample_value("inbound_batch_size_sum", labels) or 0.0,
            REGISTRY.get_sample_value("inbound_batch_size_count", labels) or 0.0)


def make_call(mode: str, target: str, payload_bytes: int):
    """(channel, async one(token) -> None on success or a failure description)."""
    import grpc

    if mode == "echo":
        from bench.grpc_echo import METHOD

        channel = grpc.aio.insecure_channel(target)
        echo = channel.unary_unary(METHOD)  # no (de)serializers: bytes in, bytes out
        payload = b"e" * payload_bytes

        async def one(_token: str) -> str | None:
            reply = await echo(payload, timeout=CALL_TIMEOUT)
            return None if reply == payload else f"echo answered {len(reply)} bytes"

        return channel, one

    from inboundlib import grpcx, tls
    from inboundlib.config import Env

    # The product's channel (round robin, keepalives, mutual TLS with the INBOUND_TLS_* files of the environment).
    channel = grpcx.channel(target, tls.TlsConfig.from_env(Env()), server_name="token-issuer")
    if mode == "batched":
        from services.token_issuer.client import IssuerClient

        client = IssuerClient(channel)

        async def one(token: str) -> str | None:
            info = await client.introspect(token)
            return None if info.active else "active=false"

        return channel, one

    if mode == "unary":
        from inbound.issuer.v1 import issuer_pb2 as pb
        from inbound.issuer.v1 import issuer_pb2_grpc
        from inboundlib.wire import meta

        stub = issuer_pb2_grpc.TokenIssuerStub(channel)

        async def one(token: str) -> str | None:
            batch = pb.IntrospectBatch(requests=[pb.IntrospectRequest(meta=meta("", CALL_TIMEOUT), token=token)])
            reply = await stub.Introspect(batch, timeout=CALL_TIMEOUT)
            if len(reply.results) != 1:
                return f"{len(reply.results)} results for 1 request"
            result = reply.results[0]
            if result.HasField("error"):
                return f"error {result.error.code}"
            return None if result.info.active else "active=false"

        return channel, one

    raise ValueError(f"unknown mode {mode!r}")


class Phase:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.sample = ""
        self.latencies: list[float] = []

    def record(self, seconds: float, failure: str | None) -> None:
        self.latencies.append(seconds)
        if failure is None:
            self.ok += 1
        else:
            self.failed += 1
            if not self.sample:
                self.sample = failure[:300]


async def _call(one, token: str, phase: Phase) -> None:
    t0 = time.perf_counter()
    try:
        failure = await one(token)
    except Exception as exc:  # noqa: BLE001 - every failure is counted and one is shown
        failure = f"{type(exc).__name__}: {str(exc)[:200]}"
    phase.record(time.perf_counter() - t0, failure)


async def timed(one, tokens: list[str], concurrency: int, seconds: float) -> tuple[Phase, float]:
    """Each caller in a loop until `seconds` have passed, each call with a random token of the pool."""
    phase = Phase()
    start = time.perf_counter()
    deadline = start + seconds
    pool = tokens or [""]
    choice = random.choice

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await _call(one, choice(pool), phase)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return phase, time.perf_counter() - start


async def each_once(one, tokens: list[str], concurrency: int) -> Phase:
    """One call per token, `concurrency` at a time."""
    phase = Phase()
    queue = list(reversed(tokens))

    async def worker() -> None:
        while queue:
            await _call(one, queue.pop(), phase)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return phase


async def _main(args) -> None:
    tokens = [t for t in open(args.tokens).read().split() if t] if args.tokens else []
    if args.mode != "echo" and not tokens:
        raise SystemExit("--tokens is required (and may not be empty) for introspection")
    channel, one = make_call(args.mode, args.target, args.payload)
    ready: dict = {}
    if tokens:
        # Every token once: warms token_issuer's opaque and verified-JWT caches (when on) and shows a bad
        # pool before any timing.
        t0 = time.perf_counter()
        first = await each_once(one, tokens, args.concurrency)
        ready["first_pass_s"] = time.perf_counter() - t0
        ready["first_pass_ok"], ready["first_pass_failed"] = first.ok, first.failed
        ready["first_pass_sample"] = first.sample
    if args.warmup > 0:
        warm, _ = await timed(one, tokens, args.concurrency, args.warmup)
        ready["warmup_ok"], ready["warmup_failed"], ready["warmup_sample"] = warm.ok, warm.failed, warm.sample
    print("READY " + json.dumps(ready), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)

    items0, batches0 = _batch_metric()
    cpu0 = _cpu_s()
    phase, duration = await timed(one, tokens, args.concurrency, args.seconds)
    cpu = _cpu_s() - cpu0
    items1, batches1 = _batch_metric()
    await channel.close()

    lat = sorted(x * 1e6 for x in phase.latencies)
    calls = phase.ok + phase.failed
    result = {
        "mode": args.mode, "concurrency": args.concurrency, "requests": calls, "ok": phase.ok,
        "failed": phase.failed, "sample_failure": phase.sample, "seconds": duration,
        "ok_per_s": phase.ok / duration if duration else 0.0,
        "mean_us": sum(lat) / len(lat) if lat else 0.0, "p50_us": percentile(lat, 50), "p90_us": percentile(lat, 90),
        "p99_us": percentile(lat, 99), "p999_us": percentile(lat, 99.9), "max_us": lat[-1] if lat else 0.0,
        "loadgen_cpu_s": cpu, "valid": phase.failed == 0 and phase.ok > 0,
    }
    if args.mode == "batched":
        result["client_batches"] = batches1 - batches0
        result["client_items"] = items1 - items0
        result["client_mean_batch"] = (items1 - items0) / (batches1 - batches0) if batches1 > batches0 else None
    print("GRPC_RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpcload")
    parser.add_argument("--mode", choices=("echo", "batched", "unary"), required=True)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--tokens", default="", help="file with one token a line (introspection modes)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--payload", type=int, default=200, help="echo payload bytes")
    args = parser.parse_args()
    run_on_uvloop(_main(args))


if __name__ == "__main__":
    main()

"""Measure the batches-in-flight default (inboundlib.batching) on this machine.

The real three-hop chain (HTTP -> edge -> client_credentials -> token_issuer),
JWT tokens under wrk at 64 connections, with INBOUND_BATCHES_IN_FLIGHT set to 1
and 2 in the edge and the grant service (the two hops that batch), alternating
rounds on one stack so that drift from other load on the machine falls on both.
Prints tokens/s, latency and the services' CPU per token for each round and the
medians per setting. Nothing is asserted; read the ratio.

    .venv/bin/python -m tools.measure_batches_in_flight [--rounds 3] [--seconds 8] [--connections 64]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import tempfile
from pathlib import Path

from bench import procstat
from bench.loadgen import LoadGen
from services.client_registry.api import ClientSpec
from services.client_registry.client import RegistryClient
from services.devstack import Stack

RESTARTED = ("client_credentials", "edge")  # the edge restarts last: it reads the grant's address at start


async def _client(stack: Stack) -> tuple[str, str]:
    channel = stack.channel("client_registry")  # as the operator
    client, secret = await RegistryClient(channel).create_client(ClientSpec(name="in-flight-bench",
                                                                            grant_types=["client_credentials"],
                                                                            scopes=["api.read"], token_format="jwt"))
    await channel.close()
    return client.client_id, secret


def _configure(stack: Stack, in_flight: int) -> None:
    for name in RESTARTED:
        stack.stop_service(name)
    for name in RESTARTED:
        stack.start_service(name, extra_env={"INBOUND_BATCHES_IN_FLIGHT": str(in_flight)})
    stack.wait_ready()


def _run(stack: Stack, loadgen: LoadGen, headers: dict[str, str], connections: int, seconds: float) -> dict:
    url = stack.edge_url + "/oauth/token"
    body = "grant_type=client_credentials"
    loadgen.run(url, body, headers, connections, 2)  # warm-up: caches, connections, JIT-free but still
    roots = {key: sp.proc.pid for key, sp in stack.services.items()}
    cpu0 = procstat.snapshot(roots)
    result = loadgen.run(url, body, headers, connections, seconds)
    cpu1 = procstat.snapshot(roots)
    ok = result["requests"] - result["non2xx"]
    cpu = sum(cpu1[k] - cpu0[k] for k in roots)
    return {"rate": ok / (result["duration_us"] / 1e6), "p50_ms": result["p50_us"] / 1000,
            "p99_ms": result["p99_us"] / 1000, "cpu_us": cpu / ok * 1e6 if ok else float("nan"),
            "non2xx": result["non2xx"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    loadgen = LoadGen.create(install=False)
    print(f"load generator: {loadgen.note}")
    with tempfile.TemporaryDirectory(prefix="inbound-inflight-") as tmp:
        stack = Stack(Path(tmp), fixed_ports=False, echo=False, database_url="", nats_url="")
        try:
            stack.start()
            client_id, secret = asyncio.run(_client(stack))
            basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
            headers = {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"}
            results: dict[int, list[dict]] = {1: [], 2: []}
            for round_no in range(args.rounds):
                for in_flight in (1, 2) if round_no % 2 == 0 else (2, 1):
                    _configure(stack, in_flight)
                    r = _run(stack, loadgen, headers, args.connections, args.seconds)
                    results[in_flight].append(r)
                    print(f"round {round_no + 1} in_flight={in_flight}: {r['rate']:,.0f} tokens/s  "
                          f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                          f"services' CPU {r['cpu_us']:.0f} us/token  non-2xx {r['non2xx']}", flush=True)
        finally:
            stack.stop()
    print("\nmedians")
    for in_flight, runs in results.items():
        print(f"in_flight={in_flight}: {statistics.median(r['rate'] for r in runs):,.0f} tokens/s  "
              f"p50 {statistics.median(r['p50_ms'] for r in runs):.2f} ms  "
              f"p99 {statistics.median(r['p99_ms'] for r in runs):.2f} ms  "
              f"CPU {statistics.median(r['cpu_us'] for r in runs):.0f} us/token")
    one, two = (statistics.median(r["rate"] for r in results[n]) for n in (1, 2))
    print(f"two in flight / one: {two / one:.2f}x tokens/s")


if __name__ == "__main__":
    main()

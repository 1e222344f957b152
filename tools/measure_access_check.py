"""Measure what the per-call access check (inboundlib.authz via grpcx's interceptor) costs.

Two figures, both in this process:
1. the check alone, per call: `context.auth_context()` as gRPC gives it for an mTLS
   peer, then `Gate.decide` (a dict lookup once the peer was seen);
2. unary calls over mutual TLS through the same interceptor, with the check and
   without it, alternating rounds: CPU per call (client and server, this process)
   and the ratio. The gRPC hop, not the check, is what costs: expect a ratio near 1.

    .venv/bin/python -m tools.measure_access_check [--calls 4000] [--rounds 3] [--concurrency 16]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from inboundlib import authz, grpcx, identity, pki
from services import access

METHOD = "/inbound.issuer.v1.TokenIssuer/Introspect"
EDGE = identity.service("edge")


async def echo(request: bytes, context) -> bytes:
    return request


class Server:
    def __init__(self, files: pki.CertFiles, gate: authz.Gate | None):
        self.server = grpc.aio.server(interceptors=[grpcx._ServerInterceptor((), gate)])
        self.auth_contexts: list = []
        service, name = METHOD[1:].split("/")
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {name: grpc.unary_unary_rpc_method_handler(self.handle)}),))
        creds = grpc.ssl_server_credentials([(files.key.read_bytes(), files.cert.read_bytes())],
                                            root_certificates=files.ca.read_bytes(), require_client_auth=True)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)

    async def handle(self, request: bytes, context) -> bytes:
        if not self.auth_contexts:
            self.auth_contexts.append(context.auth_context())
        return request


async def cpu_per_call(port: int, files: pki.CertFiles, calls: int, concurrency: int) -> float:
    """CPU µs per call of this process (client and server both): steadier than calls/s
    on a machine other work shares."""
    creds = grpc.ssl_channel_credentials(files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds,
                                       options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        call = channel.unary_unary(METHOD)
        await call(b"warm-up")
        started = time.process_time()

        async def worker(n: int) -> None:
            for _ in range(n):
                await call(b"x")

        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        return (time.process_time() - started) / (calls // concurrency * concurrency) * 1e6


async def main(calls: int, rounds: int, concurrency: int) -> None:
    ca = pki.DevCA(Path(tempfile.mkdtemp(prefix="access-check-")))
    server_files = ca.issue("server", dns_names=("localhost",))
    client_files = ca.issue_for(EDGE)
    gate = authz.Gate(access.POLICY, 0, lambda *_: None)
    checked, unchecked = Server(server_files, gate), Server(server_files, None)
    await checked.server.start()
    await unchecked.server.start()
    try:
        await cpu_per_call(unchecked.port, client_files, 10, 1)
        auth_context = unchecked.auth_contexts[0]
        n = 200_000
        started = time.perf_counter()
        for _ in range(n):
            gate.decide(METHOD, auth_context)
        decide_us = (time.perf_counter() - started) / n * 1e6
        print(f"Gate.decide, peer seen before: {decide_us:.2f} µs per call")
        with_check, without = [], []
        for i in range(rounds):
            # Alternate which goes first: load from elsewhere drifts, and must fall on both.
            for server, results in ((unchecked, without), (checked, with_check))[::1 if i % 2 else -1]:
                results.append(await cpu_per_call(server.port, client_files, calls, concurrency))
            print(f"round {i + 1}: CPU per call without the check {without[-1]:.0f} µs, with it {with_check[-1]:.0f} µs")
        ratio = statistics.median(with_check) / statistics.median(without)
        print(f"median CPU per call: with/without = {ratio:.3f} ({concurrency} concurrent callers, mTLS, "
              "client and server in one process)")
    finally:
        await checked.server.stop(0)
        await unchecked.server.stop(0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    a = parser.parse_args()
    asyncio.run(main(a.calls, a.rounds, a.concurrency))

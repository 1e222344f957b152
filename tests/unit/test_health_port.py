"""The plaintext health port (grpcx.HealthServer) answers probes without a certificate,
and nothing a peer could hold open: its Watch is refused."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inboundlib import grpcx


async def test_the_health_port_answers_check_and_refuses_watch():
    server = grpcx.HealthServer("127.0.0.1", 0)
    await server.start()
    try:
        await server.serving()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Watch(health_pb2.HealthCheckRequest(), timeout=10):
                    pass
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.server.stop(0)

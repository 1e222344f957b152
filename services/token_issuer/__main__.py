"""token_issuer process."""
from __future__ import annotations

import asyncio

from inboundlib import grpcx, metrics, service
from inboundlib.config import Env
from inboundlib.events import EventBus
from services.client_registry.client import RegistryClient
from services.token_issuer import server
from services.token_issuer.assembly import IssuerSettings, start_token_service


async def main(stop: asyncio.Event) -> None:
    env = Env()
    settings = IssuerSettings.from_env(env)
    registry_addr = env.addr("INBOUND_REGISTRY_ADDR", "127.0.0.1:50051")
    nats_url = env.str("NATS_URL", "nats://127.0.0.1:4222")
    port = env.int("INBOUND_GRPC_PORT", 50052, minimum=0, maximum=65535)
    host = env.str("INBOUND_BIND_HOST", "0.0.0.0")
    metrics_port = env.int("INBOUND_METRICS_PORT", 0, minimum=0, maximum=65535)
    # A second port serving Introspect only, for resource servers outside Inbound (0: none).
    introspection_port = env.int("INBOUND_INTROSPECTION_PORT", 0, minimum=0, maximum=65535)

    registry_channel = grpcx.channel(registry_addr)
    events = EventBus(nats_url, "token_issuer")
    await events.start()
    tokens = await start_token_service(settings, RegistryClient(registry_channel), events, stop)
    issuer, checker = tokens.issuer, tokens.checker
    grpc_server = grpcx.GrpcServer(host, port, [server.SERVICE_NAME])
    server.add_to_server(issuer, checker, grpc_server.server)
    introspection_server = None
    if introspection_port:
        introspection_server = grpcx.GrpcServer(host, introspection_port, [server.SERVICE_NAME])
        server.add_to_server(issuer, checker, introspection_server.server, introspection_only=True)
        await introspection_server.start()
    metrics.serve(metrics_port)
    await grpc_server.start()

    await stop.wait()
    await tokens.stop()
    if introspection_server is not None:
        await introspection_server.stop(grace=5)
    await grpc_server.stop(grace=5)
    await events.close()
    await registry_channel.close()


if __name__ == "__main__":
    service.run("token_issuer", main)

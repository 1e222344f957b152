"""The process around a grant handler, the same for every grant service:
registry client with a client cache kept current over NATS, issuer client,
gRPC server with health and metrics, graceful stop."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from inboundlib import grpcx, metrics, service
from inboundlib.config import Env
from inboundlib.events import EventBus
from inboundlib.grants import server
from inboundlib.grants.api import GrantHandler
from services.client_registry.cache import ClientCache, client_cache_settings
from services.client_registry.client import RegistryClient
from services.token_issuer.client import IssuerClient


@dataclass
class GrantDeps:
    """What a grant handler may use: cached client records, the issuer, events, config."""
    clients: ClientCache
    registry: RegistryClient
    issuer: IssuerClient
    events: EventBus
    env: Env


def run(name: str, default_port: int, build: Callable[[GrantDeps], GrantHandler]) -> None:
    async def main(stop: asyncio.Event) -> None:
        env = Env()
        registry_addr = env.addr("INBOUND_REGISTRY_ADDR", "127.0.0.1:50051")
        issuer_addr = env.addr("INBOUND_ISSUER_ADDR", "127.0.0.1:50052")
        nats_url = env.str("NATS_URL", "nats://127.0.0.1:4222")
        port = env.int("INBOUND_GRPC_PORT", default_port, minimum=0, maximum=65535)
        host = env.str("INBOUND_BIND_HOST", "0.0.0.0")
        metrics_port = env.int("INBOUND_METRICS_PORT", 0, minimum=0, maximum=65535)
        client_cache = client_cache_settings(env)

        registry_channel = grpcx.channel(registry_addr)
        issuer_channel = grpcx.channel(issuer_addr)
        events = EventBus(nats_url, name)
        await events.start()
        registry = RegistryClient(registry_channel)
        clients = ClientCache(registry, client_cache)
        await clients.attach(events)
        handler = build(GrantDeps(clients=clients, registry=registry, issuer=IssuerClient(issuer_channel),
                                  events=events, env=env))
        grpc_server = grpcx.GrpcServer(host, port, [server.SERVICE_NAME])
        server.add_to_server(handler, grpc_server.server, events)
        metrics.serve(metrics_port)
        await grpc_server.start()
        await stop.wait()
        await grpc_server.stop(grace=5)
        await events.close()
        await registry_channel.close()
        await issuer_channel.close()

    service.run(name, main)

"""edge process: uvicorn serving the HTTP app, gRPC clients to the services behind it."""
from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health_pb2, health_pb2_grpc

from inboundlib import grpcx, service
from inboundlib.config import Env
from inboundlib.events import EventBus
from inboundlib.grants.client import GrantClient
from services.edge.app import EdgeConfig, create_app
from services.edge.jwks import JwksCache, jwks_cache_settings
from services.edge.server import serve
from services.token_issuer.client import IssuerClient

log = logging.getLogger("edge")


async def main(stop: asyncio.Event) -> None:
    env = Env()
    issuer_url = env.url("INBOUND_ISSUER", "http://127.0.0.1:8080")
    port = env.int("INBOUND_HTTP_PORT", 8080, minimum=0, maximum=65535)
    host = env.str("INBOUND_BIND_HOST", "0.0.0.0")
    issuer_addr = env.addr("INBOUND_ISSUER_ADDR", "127.0.0.1:50052")
    grant_addrs = env.addr_map("INBOUND_GRANT_ADDRS", "client_credentials=127.0.0.1:50061")
    nats_url = env.str("NATS_URL", "nats://127.0.0.1:4222")
    jwks_cache = jwks_cache_settings(env)

    channels = {"token_issuer": grpcx.channel(issuer_addr)}
    grants = {}
    for grant_type, addr in grant_addrs.items():
        channels[grant_type] = grpcx.channel(addr)
        grants[grant_type] = GrantClient(grant_type, channels[grant_type])
    issuer = IssuerClient(channels["token_issuer"])
    jwks = JwksCache(issuer, jwks_cache)
    events = EventBus(nats_url, "edge")
    await events.start()
    await jwks.attach(events)

    async def ready() -> bool:
        try:
            for channel in channels.values():
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
            return True
        except Exception:
            return False

    app = create_app(EdgeConfig(issuer=issuer_url, grants=grants, jwks=jwks.get, tokens=issuer, events=events,
                                ready=ready))
    await serve(app, host, port, stop)
    await events.close()
    for channel in channels.values():
        await channel.close()


if __name__ == "__main__":
    service.run("edge", main)

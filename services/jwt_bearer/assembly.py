"""The jwt_bearer service's settings and start-up (see libs/inboundlib/hosting.py).

One component on its gRPC port: `inbound.grant.v1.GrantService` (the JWT bearer grant,
grant.py, inside the GrantRunner every grant service runs). Its `api` (in process) and
`connect()` (over gRPC) offer the grant's `handle(TokenRequest)`: the edge finds it among
its grants."""
from __future__ import annotations

from dataclasses import dataclass

import grpc

from inboundlib.config import Env
from inboundlib.grants.client import GrantClient
from inboundlib.hosting import GRPC, Context, Module
from services import grant_process
from services.client_registry.cache import ClientCache
from services.jwt_bearer import grant


@dataclass(frozen=True)
class Settings:
    grant: grant_process.Settings

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        return cls(grant=grant_process.Settings.from_env(env))


@dataclass
class JwtBearerService:
    grant: grant_process.GrantService

    def __post_init__(self) -> None:
        self.api = self.grant.api

    def add_to_server(self, port: str, grpc_server: grpc.aio.Server) -> list[str]:
        assert port == GRPC, port
        return self.grant.add_to_server(port, grpc_server)

    async def stop(self) -> None:
        await self.grant.stop()


async def start(settings: Settings, ctx: Context) -> JwtBearerService:
    registry = await ctx.dependency("client_registry")
    clients = ClientCache(registry, settings.grant.client_cache)
    await clients.attach(ctx.events)
    handler = grant.build()
    return JwtBearerService(grant=grant_process.GrantService(handler=handler, clients=clients, events=ctx.events))


def connect(channel: grpc.aio.Channel, module: Module) -> GrantClient:
    return GrantClient(module.grant_type, channel)

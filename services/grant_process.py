"""The assembly every grant service shares (see libs/inboundlib/hosting.py): a
client cache kept current over NATS, the issuer, the grant handler from the
service's own `grant.py`, and the grant servicer with the GrantRunner around it.

A grant service is a folder `services/<name>/` whose `grant.py` has
`build(deps: GrantDeps) -> GrantHandler`, and a row in services/modules.py
with its grant type; nothing here changes for a new one.

Client assertions (RFC 7523 §2.2: private_key_jwt, client_secret_jwt) are verified
by jwt_bearer: a grant service whose row says it calls jwt_bearer hands them to it
(in process, or through its batched ClientAssertions client)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import grpc

from inboundlib.cache import CacheSettings
from inboundlib.config import Env
from inboundlib.events import EventBus
from inboundlib.grants import server
from inboundlib.grants.api import GrantHandler
from inboundlib.grants.client import GrantClient
from inboundlib.grants.runner import GrantRunner
from inboundlib.hosting import GRPC, Context, Module
from inboundlib.oauth.client_auth import ClientAssertionVerifier, ClientAuthenticator
from services.client_registry.api import ClientRegistryApi
from services.client_registry.cache import ClientCache, client_cache_settings
from services.token_issuer.api import TokenIssuerApi


@dataclass
class GrantDeps:
    """What a grant handler may use: cached client records, the registry, the issuer, events, its settings."""
    clients: ClientCache
    registry: ClientRegistryApi
    issuer: TokenIssuerApi
    events: EventBus
    env: Env


@dataclass(frozen=True)
class Settings:
    client_cache: CacheSettings
    env: Env  # the grant's own settings are read by its build() through deps.env

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        return cls(client_cache=client_cache_settings(env), env=env)


@dataclass
class GrantService:
    handler: GrantHandler
    # Client records for the runner's client authentication (every grant's, once).
    clients: ClientCache
    events: EventBus
    # jwt_bearer's client assertion verifier (None: private_key_jwt / client_secret_jwt unsupported).
    assertions: ClientAssertionVerifier | None = None

    def __post_init__(self) -> None:
        self.authenticator = ClientAuthenticator(self.clients, verifier=self.assertions)
        # What the edge calls in the same process: the handler with the runner's checks, metrics and events.
        self.api = GrantRunner(self.handler, self.authenticator, self.events)

    def add_to_server(self, port: str, grpc_server: grpc.aio.Server) -> list[str]:
        assert port == GRPC, port
        server.add_to_server(self.handler, grpc_server, self.authenticator, self.events)
        return [server.SERVICE_NAME]

    async def stop(self) -> None:
        pass


async def start(settings: Settings, ctx: Context) -> GrantService:
    registry = await ctx.dependency("client_registry")
    clients = ClientCache(registry, settings.client_cache)
    await clients.attach(ctx.events)
    deps = GrantDeps(clients=clients, registry=registry, issuer=await ctx.dependency("token_issuer"),
                     events=ctx.events, env=settings.env)
    handler = importlib.import_module(f"services.{ctx.module.name}.grant").build(deps)
    if handler.grant_type != ctx.module.grant_type:
        raise RuntimeError(f"services.{ctx.module.name}.grant serves {handler.grant_type!r}, "
                           f"the module table says {ctx.module.grant_type!r}")
    return GrantService(handler=handler, clients=clients, events=ctx.events, assertions=await client_assertions(ctx))


# The service that verifies client assertions (RFC 7523 §2.2) for the others.
CLIENT_ASSERTIONS = "jwt_bearer"


async def client_assertions(ctx: Context) -> ClientAssertionVerifier | None:
    """jwt_bearer's verifier, when this service's row says it calls jwt_bearer."""
    if CLIENT_ASSERTIONS in ctx.module.depends_on:
        return await ctx.dependency(CLIENT_ASSERTIONS)
    if CLIENT_ASSERTIONS in ctx.module.calls_later:
        return ctx.later(CLIENT_ASSERTIONS)
    return None


def connect(channel: grpc.aio.Channel, module: Module) -> GrantClient:
    return GrantClient(module.grant_type, channel)

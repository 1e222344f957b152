"""The jwt_bearer service's settings and start-up (see libs/inboundlib/hosting.py).

One component on its gRPC port: `inbound.grant.v1.GrantService` (the JWT bearer grant,
grant.py, inside the GrantRunner every grant service runs). Its `api` (in process) and
`connect()` (over gRPC) offer the grant's `handle(TokenRequest)`: the edge finds it among
its grants.

It is one of the two services that make outgoing HTTPS requests (issue 10; the other is
third_party_token): the integrations' `jwks_uri`, through one guarded fetcher
(inboundlib.jose.fetch) that answers from its cache and fetches in the background. The
keys are warmed at start and whenever an integration changes (RegistryChanged), so an
assertion rarely finds them missing (KeysPending)."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from inboundlib.config import Env
from inboundlib.events import EventBus, registry_subject
from inboundlib.grants.client import GrantClient
from inboundlib.hosting import GRPC, Context, Module
from inboundlib.jose.fetch import Fetcher, FetchPolicy
from inboundlib.jose.validator import JwtValidator
from services import grant_process
from services.client_registry.cache import ClientCache
from services.jwt_bearer import grant
from services.jwt_bearer.grant import GrantSettings, Integrations, SecretOpener
from services.token_issuer.assembly import key_encryption_keys
from services.token_issuer.keys import KeyEncryptor

log = logging.getLogger(__name__)

# RegistryChanged about JWT-bearer integrations (client_registry publishes them).
INTEGRATION_CHANGED = registry_subject("integration")
KEK_SETTINGS = ("INBOUND_KEY_ENCRYPTION_KEYS_FILE", "INBOUND_KEY_ENCRYPTION_KEYS", "INBOUND_KEY_ENCRYPTION_KEY")


@dataclass(frozen=True)
class Settings:
    grant: grant_process.Settings
    jwt_bearer: GrantSettings
    fetch: FetchPolicy
    # The key-encryption keys (as token_issuer's): they open HS256 integrations' secrets.
    # None when none is configured: such integrations are then refused.
    key_encryption_keys: tuple[bytes, ...] | None

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        keks = key_encryption_keys(env) if any(env.str(name, "") for name in KEK_SETTINGS) else None
        return cls(grant=grant_process.Settings.from_env(env), jwt_bearer=GrantSettings.from_env(env),
                   fetch=FetchPolicy.from_env(env), key_encryption_keys=keks)


@dataclass
class JwtBearerService:
    grant: grant_process.GrantService
    fetcher: Fetcher
    integrations: Integrations
    warming: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.api = self.grant.api

    def add_to_server(self, port: str, grpc_server: grpc.aio.Server) -> list[str]:
        assert port == GRPC, port
        return self.grant.add_to_server(port, grpc_server)

    async def attach(self, events: EventBus) -> None:
        """Integrations change: forget them and fetch the keys of the current ones, within a
        second of the event; a NATS reconnection may have missed some: the same."""
        async def changed(_event=None) -> None:
            self.integrations.invalidate()
            self.warm()

        events.on_reconnect(changed)
        await events.subscribe(INTEGRATION_CHANGED, changed)

    def warm(self) -> None:
        """Prefetch every active integration's keys, in the background (the registry may be away)."""
        if self.warming is not None and not self.warming.done():
            return
        self.warming = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            started = await self.integrations.warm()
            log.info("integration keys being prefetched", extra={"count": started})
        except Exception as exc:  # the first grant fetches them instead (KeysPending, then the keys)
            log.warning("integration keys not prefetched", extra={"error": type(exc).__name__})

    async def stop(self) -> None:
        await self.grant.stop()
        if self.warming is not None:
            self.warming.cancel()
        await self.fetcher.close()


async def start(settings: Settings, ctx: Context) -> JwtBearerService:
    registry = await ctx.dependency("client_registry")
    issuer = await ctx.dependency("token_issuer")
    clients = ClientCache(registry, settings.grant.client_cache)
    await clients.attach(ctx.events)
    fetcher = Fetcher(settings.fetch)
    opener: SecretOpener | None = None
    if settings.key_encryption_keys:
        opener = KeyEncryptor(*settings.key_encryption_keys)
    else:
        log.warning("no key-encryption key configured: HS256 integrations are refused")
    integrations = Integrations(registry, fetcher, opener)
    # The registry's batched used-jti store (its first_use, in process or over gRPC).
    validator = JwtValidator(jtis=registry)
    handler = grant.build(integrations, validator, registry, issuer, settings.jwt_bearer)
    service = JwtBearerService(
        grant=grant_process.GrantService(handler=handler, clients=clients, events=ctx.events),
        fetcher=fetcher, integrations=integrations)
    await service.attach(ctx.events)
    service.warm()
    return service


def connect(channel: grpc.aio.Channel, module: Module) -> GrantClient:
    return GrantClient(module.grant_type, channel)

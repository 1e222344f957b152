"""The jwt_bearer service's settings and start-up (see libs/inboundlib/hosting.py).

RFC 7523 as a whole, two gRPC services on its port: `inbound.grant.v1.GrantService` (the
JWT bearer grant, grant.py, inside the GrantRunner every grant service runs; the edge
routes the grant type here) and `inbound.federation.v1.ClientAssertions` (client
authentication by private_key_jwt / client_secret_jwt, client_assertions.py, asked by the
grant services and token_issuer). Its `api` (in process) and `connect()` (over gRPC) both
offer `handle(TokenRequest)` and `verify_client_assertion` (client_assertions.JwtBearerApi).

It is one of the two services that make outgoing HTTPS requests (issue 10; the other is
third_party_token): clients' and integrations' `jwks_uri`, through one guarded fetcher
(inboundlib.jose.fetch) shared by both halves, which answers from its cache and fetches in
the background. The keys are warmed at start (integrations) and whenever an integration or
a client changes (RegistryChanged), so a request rarely finds them missing (KeysPending).
Only this service opens sealed secrets (client_secret_jwt, HS256 integrations) with the
key-encryption keys."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from inboundlib.config import Env
from inboundlib.events import CLIENT_CHANGED, INTEGRATION_CHANGED, EventBus
from inboundlib.hosting import GRPC, Context, Module
from inboundlib.jose.fetch import Fetcher, FetchPolicy
from inboundlib.jose.validator import JwtValidator
from inboundlib.kek import KeyEncryptor, key_encryption_keys
from services import grant_process
from services.client_registry.cache import ClientCache
from services.jwt_bearer import client_assertions, grant
from services.jwt_bearer.client_assertions import AssertionSettings, ClientAssertionChecker, JwtBearerApi
from services.jwt_bearer.grant import Integrations, SecretOpener

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    grant: grant_process.Settings
    # Both halves' aud (the issuer, the token endpoint), skew and client assertions' lifetime.
    assertions: AssertionSettings
    fetch: FetchPolicy
    # The key-encryption keys (the same as token_issuer's and client_registry's): they open
    # client_secret_jwt clients' and HS256 integrations' sealed secrets. () when none is
    # configured: those are then refused.
    key_encryption_keys: tuple[bytes, ...]

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        return cls(grant=grant_process.Settings.from_env(env), assertions=AssertionSettings.from_env(env),
                   fetch=FetchPolicy.from_env(env),
                   key_encryption_keys=key_encryption_keys(env, required=False))


@dataclass
class JwtBearerService:
    grant: grant_process.GrantService
    assertions: ClientAssertionChecker
    fetcher: Fetcher
    integrations: Integrations
    warming: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.api = JwtBearerApi(self.grant.api, self.assertions)

    def add_to_server(self, port: str, grpc_server: grpc.aio.Server) -> list[str]:
        assert port == GRPC, port
        return [*self.grant.add_to_server(port, grpc_server),
                *client_assertions.add_to_server(self.assertions, grpc_server)]

    async def attach(self, events: EventBus) -> None:
        """Integrations change: forget them and fetch the keys of the current ones, within a
        second of the event; a NATS reconnection may have missed some: the same. A client
        changes (registered for private_key_jwt with a jwks_uri, say): fetch its keys."""
        async def integrations_changed(_event=None) -> None:
            self.integrations.invalidate()
            self.warm()

        async def client_changed(event) -> None:
            if event.HasField("registry_changed"):
                self.assertions.forget(event.registry_changed.id)
                try:
                    client = await self.grant.clients.get_client(event.registry_changed.id)
                except Exception:  # the registry away: its first assertion fetches the keys instead
                    return
                if client is not None:
                    self.assertions.warm(client)

        events.on_reconnect(integrations_changed)
        await events.subscribe(INTEGRATION_CHANGED, integrations_changed)
        await events.subscribe(CLIENT_CHANGED, client_changed)

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
        log.warning("no key-encryption key configured: HS256 integrations and client_secret_jwt are refused")
    integrations = Integrations(registry, fetcher, opener)
    # The registry's batched used-jti store (its first_use, in process or over gRPC).
    validator = JwtValidator(jtis=registry)
    checker = ClientAssertionChecker(settings.assertions, clients=clients, secrets=registry, opener=opener,
                                     fetcher=fetcher, validator=validator)
    handler = grant.build(integrations, validator, registry, issuer, settings.assertions)
    service = JwtBearerService(
        # Its own grant's clients may authenticate by assertion too: checked here, in process.
        grant=grant_process.GrantService(handler=handler, clients=clients, events=ctx.events, assertions=checker),
        assertions=checker, fetcher=fetcher, integrations=integrations)
    await service.attach(ctx.events)
    service.warm()
    return service


def connect(channel: grpc.aio.Channel, module: Module) -> JwtBearerApi:
    return client_assertions.connect(channel, module.grant_type)

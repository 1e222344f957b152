"""token_issuer's settings and start-up (see libs/inboundlib/hosting.py), the
same for its own process and for the single process that hosts every service.

Ports: the full TokenIssuer API on `grpc`; Introspect and the JWKS only on
`introspection`, for resource servers outside Inbound."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc

from inboundlib import service
from inboundlib.cache import CacheSettings
from inboundlib.config import Env
from inboundlib.events import EventBus
from inboundlib.hosting import GRPC, INTROSPECTION, Context, Module
from inboundlib.kek import KeyEncryptor, key_encryption_keys
from inboundlib.oauth.client_auth import ClientAssertionVerifier, ClientCredentials
from inboundlib.oauth.oidc import id_token_alg
from services.client_registry.api import ClientRegistryApi
from services.client_registry.cache import ClientCache, client_cache_settings
from services.token_issuer import server
from services.token_issuer.api import TokenInfo
from services.token_issuer.client import IssuerClient
from services.token_issuer.introspection import VERIFIED_CACHE_ENTRIES, ForeignTokenSource, TokenChecker
from services.token_issuer.issuer import DEFAULT_ID_TOKEN_LIFETIME, MAX_ACCESS_TOKEN_LIFETIME, TokenIssuer
from services.token_issuer.keys import ALGORITHMS
from services.token_issuer.opaque_cache import OpaqueTokenCache, opaque_token_cache_settings
from services.token_issuer.revocations import RevocationSet, RevocationSync


@dataclass(frozen=True)
class Settings:
    issuer_url: str
    # The first encrypts, every one decrypts; never in a repr (a log line, a traceback's locals).
    key_encryption_keys: tuple[bytes, ...] = field(repr=False)
    alg: str
    id_token_alg: str
    id_token_lifetime: int
    activation_delay: int
    audience: str
    client_cache: CacheSettings
    opaque_token_cache: CacheSettings
    revocation_resync: float
    verified_jwt_cache: int

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        issuer_url = env.url("INBOUND_ISSUER", "http://127.0.0.1:8080")
        return cls(
            issuer_url=issuer_url,
            key_encryption_keys=key_encryption_keys(env),
            alg=env.choice("INBOUND_SIGNING_ALG", "ES256", ALGORITHMS),
            id_token_alg=id_token_alg(env),
            id_token_lifetime=env.int("INBOUND_ID_TOKEN_LIFETIME", DEFAULT_ID_TOKEN_LIFETIME, minimum=1,
                                      maximum=MAX_ACCESS_TOKEN_LIFETIME),
            # Long enough for resource servers' JWKS caches to refresh before a new key signs.
            activation_delay=env.int("INBOUND_KEY_ACTIVATION_DELAY", 3600, minimum=0),
            audience=env.str("INBOUND_ACCESS_TOKEN_AUDIENCE", issuer_url.rstrip("/") + "/api"),
            client_cache=client_cache_settings(env),
            opaque_token_cache=opaque_token_cache_settings(env),
            revocation_resync=env.float("INBOUND_REVOCATION_RESYNC_SECONDS", 5.0, minimum=0.1),
            # JWTs remembered as verified (0: verify every time).
            verified_jwt_cache=env.int("INBOUND_VERIFIED_JWT_CACHE", VERIFIED_CACHE_ENTRIES, minimum=0,
                                       maximum=10_000_000),
        )


KEY_RELOAD_SECONDS = 60


class LocalIssuer:
    """token_issuer for callers in the same process, with IssuerClient's interface
    (what grants and the edge call)."""

    def __init__(self, issuer: TokenIssuer, checker: TokenChecker):
        self.issuer = issuer
        self.checker = checker
        self.issue = issuer.issue
        self.jwks = issuer.jwks
        self.list_keys = issuer.list_keys
        self.rotate_key = issuer.rotate_key
        self.rewrap_keys = issuer.rewrap_keys

    async def introspect(self, token: str, caller: ClientCredentials | None = None, *,
                         request_id: str = "", endpoint_url: str = "") -> TokenInfo:
        return await self.checker.introspect(token, caller, internal=caller is None, endpoint_url=endpoint_url)

    async def revoke(self, token: str, caller: ClientCredentials | None, *, token_type_hint: str = "",
                     request_id: str = "", endpoint_url: str = "") -> None:
        await self.checker.revoke(token, caller, endpoint_url=endpoint_url)

    async def revoke_client_tokens(self, client_id: str) -> int:
        return await self.checker.revoke_client_tokens(client_id)


@dataclass
class TokenService:
    issuer: TokenIssuer
    checker: TokenChecker
    clients: ClientCache
    sync: RevocationSync
    reloader: asyncio.Task

    @property
    def api(self) -> LocalIssuer:
        return LocalIssuer(self.issuer, self.checker)

    @property
    def bearer_callers(self) -> dict:
        """The introspection port serves resource servers outside Inbound. It asks for
        no client certificate (resource servers with one use the main port), so there
        a caller is the client whose client-credentials token, carrying
        `inbound.introspect`, it presents (checked by this issuer, revocation included)."""
        return {INTROSPECTION: self.checker.resource_server_of}

    def add_to_server(self, port: str, grpc_server: grpc.aio.Server) -> list[str]:
        assert port in (GRPC, INTROSPECTION), port
        server.add_to_server(self.issuer, self.checker, grpc_server, introspection_only=port == INTROSPECTION)
        return [server.SERVICE_NAME]

    async def stop(self) -> None:
        self.reloader.cancel()
        await self.sync.stop()


async def _reload_keys_periodically(issuer: TokenIssuer) -> None:
    """A backstop for a missed keys-rotated event."""
    while True:
        await asyncio.sleep(KEY_RELOAD_SECONDS)
        try:
            await issuer.reload_keys()
        except Exception:
            pass  # the registry is away for now; the next round tries again


# Third-party tokens' introspection (RFC 7662 for a registered OpenID provider's tokens).
FOREIGN_TOKENS = "third_party_token"
# Client assertions (RFC 7523 §2.2) of introspecting and revoking clients.
CLIENT_ASSERTIONS = "jwt_bearer"


async def start(settings: Settings, ctx: Context) -> TokenService:
    # third_party_token and jwt_bearer issue through this service, so they start after it:
    # reached at first use.
    foreign = ctx.later(FOREIGN_TOKENS) if FOREIGN_TOKENS in ctx.module.calls_later else None
    assertions = ctx.later(CLIENT_ASSERTIONS) if CLIENT_ASSERTIONS in ctx.module.calls_later else None
    return await start_token_service(settings, await ctx.dependency("client_registry"), ctx.events, ctx.stop,
                                     foreign=foreign, assertions=assertions)


def connect(channel: grpc.aio.Channel, module: Module) -> IssuerClient:
    return IssuerClient(channel)


async def start_token_service(settings: Settings, registry: ClientRegistryApi, events: EventBus,
                              stop: asyncio.Event, foreign: ForeignTokenSource | None = None,
                              assertions: ClientAssertionVerifier | None = None) -> TokenService:
    """Keys loaded (the first replica ever creates one), client cache attached, and
    every revocation made so far known: a late replica must honour them before it serves."""
    issuer = TokenIssuer(registry, KeyEncryptor(*settings.key_encryption_keys), issuer=settings.issuer_url,
                         default_audience=settings.audience, alg=settings.alg,
                         id_token_alg=settings.id_token_alg, id_token_lifetime=settings.id_token_lifetime,
                         activation_delay=settings.activation_delay, events=events)
    await service.retry_until_ready("registry", issuer.start, stop)
    clients = ClientCache(registry, settings.client_cache)
    await clients.attach(events)
    revocations = RevocationSet()
    sync = RevocationSync(revocations, registry, events, resync_seconds=settings.revocation_resync)
    await service.retry_until_ready("registry", sync.start, stop)
    checker = TokenChecker(issuer=settings.issuer_url, keyring=lambda: issuer.keyring, revocations=revocations,
                           clients=clients, registry=registry, events=events,
                           verified_cache_entries=settings.verified_jwt_cache,
                           opaque=OpaqueTokenCache(registry, settings.opaque_token_cache), foreign=foreign,
                           assertions=assertions)
    return TokenService(issuer=issuer, checker=checker, clients=clients, sync=sync,
                        reloader=asyncio.create_task(_reload_keys_periodically(issuer)))

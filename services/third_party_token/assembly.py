"""The third_party_token service's settings and start-up (see libs/inboundlib/hosting.py).

One component, two gRPC services on its port: `inbound.grant.v1.GrantService` (the RFC
8693 token-exchange grant, grant.py, inside the GrantRunner every grant service runs)
and `inbound.federation.v1.ForeignTokens` (a registered provider's token accepted
as-is, for token_issuer's introspection). Both share the provider directory, the
fetcher (the only outgoing HTTPS besides jwt_bearer's: discovery documents and JWKS
of the registered providers) and the mapped users. Its `api` (in process) and
`connect()` (over gRPC) both offer the grant's `handle(TokenRequest)` and
`introspect_foreign`.
"""
from __future__ import annotations

from dataclasses import dataclass

import grpc

from inboundlib.cache import CacheSettings
from inboundlib.config import Env
from inboundlib.grants.api import TokenRequest, TokenResponse
from inboundlib.hosting import GRPC, Context, Module
from inboundlib.jose.fetch import Fetcher, FetchPolicy
from inboundlib.jose.validator import JwtValidator
from services import grant_process
from services.client_registry.cache import ClientCache
from services.third_party_token import grant as grant_module
from services.third_party_token import server
from services.third_party_token.client import ThirdPartyTokenClient
from services.third_party_token.foreign_tokens import ForeignTokens
from services.third_party_token.providers import (
    USER_CACHE,
    FederatedUserCache,
    ForeignTokenVerifier,
    ProviderDirectory,
    max_token_lifetime,
)
from services.token_issuer.api import TokenInfo


@dataclass(frozen=True)
class Settings:
    grant: grant_process.Settings
    issuer_url: str
    fetch: FetchPolicy
    max_token_lifetime: int
    user_cache: CacheSettings

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        return cls(grant=grant_process.Settings.from_env(env),
                   issuer_url=env.url("INBOUND_ISSUER", "http://127.0.0.1:8080"),
                   fetch=FetchPolicy.from_env(env), max_token_lifetime=max_token_lifetime(env),
                   user_cache=CacheSettings.from_env(env, "federated_user", USER_CACHE))


@dataclass
class ExchangeDeps:
    """What the token-exchange grant uses (grant.build)."""
    verifier: ForeignTokenVerifier
    issuer: object  # token_issuer: issue, introspect
    issuer_url: str


class LocalThirdPartyToken:
    """The component's `api`, what the edge (the grant) and token_issuer (ForeignTokens)
    call in the same process, with ThirdPartyTokenClient's interface."""

    def __init__(self, grant: grant_process.GrantService, foreign: ForeignTokens):
        self.grant_type = grant.api.grant_type
        self._runner = grant.api
        self._foreign = foreign

    async def handle(self, request: TokenRequest) -> TokenResponse:
        return await self._runner.handle(request)

    async def introspect_foreign(self, token: str, *, request_id: str = "") -> TokenInfo:
        return await self._foreign.introspect_foreign(token, request_id=request_id)


@dataclass
class ThirdPartyTokenService:
    grant: grant_process.GrantService
    foreign: ForeignTokens
    directory: ProviderDirectory
    fetcher: Fetcher

    def __post_init__(self) -> None:
        self.api = LocalThirdPartyToken(self.grant, self.foreign)

    def add_to_server(self, port: str, grpc_server: grpc.aio.Server) -> list[str]:
        assert port == GRPC, port
        names = self.grant.add_to_server(port, grpc_server)
        server.add_to_server(self.foreign, grpc_server)
        return [*names, server.SERVICE_NAME]

    async def stop(self) -> None:
        await self.grant.stop()
        await self.directory.stop()
        await self.fetcher.close()


async def start(settings: Settings, ctx: Context) -> ThirdPartyTokenService:
    registry = await ctx.dependency("client_registry")
    issuer = await ctx.dependency("token_issuer")
    fetcher = Fetcher(settings.fetch)
    directory = ProviderDirectory(registry, fetcher)
    users = FederatedUserCache(registry, settings.user_cache)
    await users.attach(ctx.events)
    # The registry's batched used-jti store (its first_use, in process or over gRPC).
    verifier = ForeignTokenVerifier(directory, users, JwtValidator(jtis=registry),
                                    max_lifetime=settings.max_token_lifetime)
    # Providers loaded and their keys prefetched before the first token arrives.
    await directory.start(ctx.events)
    clients = ClientCache(registry, settings.grant.client_cache)
    await clients.attach(ctx.events)
    handler = grant_module.build(ExchangeDeps(verifier=verifier, issuer=issuer, issuer_url=settings.issuer_url))
    if handler.grant_type != ctx.module.grant_type:
        raise RuntimeError(f"third_party_token serves {handler.grant_type!r}, "
                           f"the module table says {ctx.module.grant_type!r}")
    grant = grant_process.GrantService(handler=handler, clients=clients, events=ctx.events,
                                       assertions=await grant_process.client_assertions(ctx))
    return ThirdPartyTokenService(grant=grant, foreign=ForeignTokens(verifier), directory=directory, fetcher=fetcher)


def connect(channel: grpc.aio.Channel, module: Module) -> ThirdPartyTokenClient:
    return ThirdPartyTokenClient(module.grant_type, channel)

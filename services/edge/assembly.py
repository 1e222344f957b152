"""The edge's settings and start-up (see libs/inboundlib/hosting.py): the HTTP
app on its HTTP port, in front of token_issuer and every grant service (in
process or over gRPC); its metrics are on the metrics port like every service's."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from inboundlib.cache import CacheSettings
from inboundlib.config import Env
from inboundlib.hosting import HTTP, Context
from inboundlib.oauth.oidc import id_token_alg
from services.edge.app import EdgeConfig, create_app
from services.edge.jwks import JwksCache, jwks_cache_settings
from services.edge.readiness import ready_when_issuer_serves
from services.edge.server import serve
from services.edge.settings import EdgeSettings

log = logging.getLogger("services.edge")


@dataclass(frozen=True)
class Settings:
    issuer_url: str
    jwks_cache: CacheSettings
    # Trusted proxies, the request budget, header and body bounds (services/edge/settings.py).
    http: EdgeSettings
    # INBOUND_ID_TOKEN_ALG, read as token_issuer reads it (one function): what OpenID Provider
    # metadata announces. Set it alike for both where they run apart (deploy/base).
    id_token_alg: str = "RS256"

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        return cls(issuer_url=env.url("INBOUND_ISSUER", "http://127.0.0.1:8080"), jwks_cache=jwks_cache_settings(env),
                   http=EdgeSettings.from_env(env),
                   id_token_alg=id_token_alg(env))


@dataclass
class EdgeService:
    api: None
    stopping: asyncio.Event
    # The HTTP server; its end before stop is a failure.
    watch: asyncio.Task

    def add_to_server(self, port: str, grpc_server) -> list[str]:
        raise ValueError(f"the edge serves HTTP only, not gRPC port {port!r}")

    async def stop(self) -> None:
        self.stopping.set()
        await self.watch


async def start(settings: Settings, ctx: Context) -> EdgeService:
    tokens = await ctx.dependency("token_issuer")
    grants = ctx.grants()
    settings.http.check_bind(ctx.host)  # before serving: a ConfigError, not a failed server
    if settings.http.plaintext_public and not settings.http.trusted_proxies:
        log.warning("INBOUND_HTTP_PLAINTEXT_PUBLIC says a proxy ends TLS in front, but INBOUND_TRUSTED_PROXIES "
                    "is empty: every client will have the proxy's address, in logs and audit records and for the "
                    "failed-authentication limits, which then hold back all clients together")
    jwks = JwksCache(tokens, settings.jwks_cache)
    await jwks.attach(ctx.events)
    # Ready on what every route needs (the issuer), never on one grant service: a grant
    # that is down answers its own 503 and keeps the edge in rotation.
    app = create_app(EdgeConfig(issuer=settings.issuer_url, grants=grants, jwks=jwks.get, tokens=tokens,
                                events=ctx.events, ready=ready_when_issuer_serves(tokens), settings=settings.http,
                                id_token_algs=(settings.id_token_alg,)))
    stopping = asyncio.Event()
    return EdgeService(api=None, stopping=stopping, watch=asyncio.create_task(
        serve(app, ctx.host, ctx.ports[HTTP], stopping, settings.http), name="edge-http"))

"""The edge's HTTP application: one app over route modules (services/edge/routes):
the OAuth API, discovery and JWKS, the browser's pages (when the
authorization_code service is configured) and the probes; admin routes join the
same way.

The edge is the one place that turns OAuth errors into HTTP, each endpoint its
own way (services/edge/errors.py). Paths match exactly: a trailing slash or any
other unknown path is 404, never a redirect (a redirected POST would carry the
client's secret wherever the Host header said).

/metrics is not served here (the public port): it is on the metrics port.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inboundlib.events import EventBus
from services.edge.cookies import BrowserCookies
from services.edge.errors import TokenEndpointErrors
from services.edge.routes import discovery
from services.edge.routes.browser import BrowserRoutes
from services.edge.routes.discovery import (
    AUTHORIZATION_GRANT,
    JWKS_PATH,
    METADATA_PATH,
    build_metadata,
    build_openid_configuration,
)
from services.edge.routes.oauth import INTROSPECT_PATH, REVOKE_PATHS, TOKEN_PATHS, Grant, OAuthRoutes, TokenService
from services.edge.settings import EdgeSettings

__all__ = ["EdgeConfig", "EdgeSettings", "create_app", "build_metadata", "TOKEN_PATHS", "INTROSPECT_PATH",
           "REVOKE_PATHS", "JWKS_PATH", "METADATA_PATH"]


async def _always_ready() -> bool:
    return True


@dataclass
class EdgeConfig:
    issuer: str
    grants: dict[str, Grant]
    jwks: Callable[[], Awaitable[dict]]
    tokens: TokenService | None = None
    events: EventBus | None = None
    # What every route needs (services/edge/readiness.py); never one grant service.
    ready: Callable[[], Awaitable[bool]] = field(default=_always_ready)
    settings: EdgeSettings = field(default_factory=EdgeSettings)
    # What ID tokens are signed with (INBOUND_ID_TOKEN_ALG), for OpenID Provider metadata.
    id_token_algs: tuple[str, ...] = ("RS256",)


def create_app(config: EdgeConfig) -> Starlette:
    oauth = OAuthRoutes(issuer=config.issuer, grants=config.grants, tokens=config.tokens, events=config.events,
                        settings=config.settings, errors=TokenEndpointErrors())
    metadata = build_metadata(config.issuer, sorted(config.grants), introspection=config.tokens is not None)
    # The authorization_code service answers both its grant (handle) and the browser (AuthorizationApi).
    authorization = config.grants.get(AUTHORIZATION_GRANT)
    browser = None if authorization is None else BrowserRoutes(
        issuer=config.issuer, authorization=authorization, settings=config.settings,
        cookies=BrowserCookies(config.issuer))
    openid_configuration = None if browser is None else build_openid_configuration(metadata,
                                                                                    list(config.id_token_algs))

    async def healthz(request: Request) -> Response:
        return Response("ok", media_type="text/plain")

    async def readyz(request: Request) -> Response:
        ready = await config.ready()
        return Response("ready" if ready else "not ready", status_code=200 if ready else 503,
                        media_type="text/plain")

    routes = [
        *oauth.routes(),
        *discovery.routes(metadata, config.jwks, openid_configuration),
        *(browser.routes() if browser is not None else ()),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False
    return app

"""The OAuth API: token (RFC 6749 §3.2), introspection (RFC 7662), revocation (RFC 7009).

The token endpoint does only what HTTP needs — size, time and content type, form
parsing, credential extraction, the request context, routing by grant_type — and
renders what the grant answers. Errors are rendered the token endpoint's way
(services/edge/errors.py: TokenEndpointErrors) at all three.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inboundlib import redact
from inboundlib.events import EventBus
from inboundlib.grants.api import TokenRequest, TokenResponse
from inboundlib.grants.runner import publish_denial
from inboundlib.oauth.client_auth import ClientCredentials, extract_credentials
from inboundlib.oauth.errors import InvalidClient, InvalidRequest, OAuthError, UnsupportedGrantType
from inboundlib.oauth.params import REPEATABLE_TOKEN_PARAMS, parse_form, parse_form_multi
from services.edge.errors import NO_STORE, HttpError, TokenEndpointErrors, json_response
from services.edge.http import backend, endpoint, read_form_body, request_context
from services.edge.settings import EdgeSettings

TOKEN_PATHS = ("/oauth/token", "/oauth_token.do")
INTROSPECT_PATH = "/oauth/introspect"
REVOKE_PATHS = ("/oauth/revoke", "/oauth_revoke_token.do")
TOKEN_TYPE_HINTS = ("access_token", "refresh_token")
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


class Grant(Protocol):
    """A grant as the edge sees it: a GrantClient (over gRPC) or a GrantRunner (in process)."""

    async def handle(self, request: TokenRequest) -> TokenResponse: ...


class TokenService(Protocol):
    """What the edge needs of token_issuer beyond JWKS (services/token_issuer/client.py)."""

    async def introspect(self, token: str, caller: ClientCredentials | None = None, *, request_id: str = ""): ...
    async def revoke(self, token: str, caller: ClientCredentials | None, *, token_type_hint: str = "",
                     request_id: str = "") -> None: ...


@dataclass
class OAuthRoutes:
    issuer: str
    grants: dict[str, Grant]
    tokens: TokenService | None
    events: EventBus | None
    settings: EdgeSettings
    errors: TokenEndpointErrors

    def __post_init__(self) -> None:
        # The token endpoints' URLs, made once: building request.url for each
        # request cost the edge about a twentieth of its CPU per token.
        self._token_urls = {path: self._url(path) for path in TOKEN_PATHS}

    def _url(self, path: str) -> str:
        return self.issuer.rstrip("/") + path

    def _endpoint_url(self, request: Request) -> str:
        """This request's endpoint URL: request.url's path (a routed token path, whose
        characters need no escaping, is the scope's path as it stands)."""
        url = self._token_urls.get(request.scope["path"])
        return url if url is not None else self._url(request.url.path)

    def _deny(self, exc: OAuthError, client_id: str, grant_type: str) -> None:
        """The audit record of a token request refused here, before any grant service
        saw it. Nothing the caller sent was matched against a client yet: the client
        id is recorded as a fingerprint, and so is a grant type nobody serves."""
        if self.events is None:
            return
        if grant_type not in self.grants:
            grant_type = redact.unverified(grant_type)
        publish_denial(self.events, redact.unverified(client_id), grant_type, exc.code,
                       exc.detail or exc.description)

    async def token(self, request: Request, request_id: str) -> Response:
        """RFC 6749 §3.2 token endpoint: parse, route by grant_type, render."""
        credentials = None
        grant_type = ""
        try:
            params = parse_form_multi(await read_form_body(request, self.settings), REPEATABLE_TOKEN_PARAMS)
            auth = {name: params.pop(name)[0] for name in ("client_id", "client_secret") if name in params}
            credentials = extract_credentials(request.headers.get("authorization"), auth)
            grant_type = params.pop("grant_type", ("",))[0]
            if not grant_type:
                raise InvalidRequest("The grant_type parameter is missing.")
            grant = self.grants.get(grant_type)
            if grant is None:
                raise UnsupportedGrantType()
        except (OAuthError, HttpError) as exc:
            claimed = credentials.client_id if credentials else _claimed_client_id(request)
            self._deny(exc.as_oauth() if isinstance(exc, HttpError) else exc, claimed, grant_type)
            raise
        result = await backend(grant.handle(TokenRequest(
            grant_type=grant_type, client=credentials, params=params, request_id=request_id,
            context=request_context(request, self.settings, self._endpoint_url(request)))))
        return json_response(result.to_json(), 200, dict(NO_STORE))

    async def _token_form(self, request: Request) -> tuple[str, dict[str, str], ClientCredentials]:
        """RFC 7662 §2.1 / RFC 7009 §2.1: a client-authenticated form with a `token` parameter."""
        params = parse_form(await read_form_body(request, self.settings))
        credentials = extract_credentials(request.headers.get("authorization"), params)
        if credentials is None:
            raise InvalidClient(detail="no client authentication")
        token_value = params.get("token")
        if token_value is None:
            raise InvalidRequest("The token parameter is missing.")
        return token_value, params, credentials

    async def introspect(self, request: Request, request_id: str) -> Response:
        """RFC 7662 §2: the caller authenticates as a client; inactive is only {"active": false}."""
        token_value, _, credentials = await self._token_form(request)
        info = await backend(self.tokens.introspect(token_value, credentials, request_id=request_id))
        return json_response(info.to_json(), 200, dict(NO_STORE))

    async def revoke(self, request: Request, request_id: str) -> Response:
        """RFC 7009 §2: 200 whether or not the token was known."""
        token_value, params, credentials = await self._token_form(request)
        # RFC 7009 §2.1: the hint only speeds the search; one we do not know is ignored.
        hint = params.get("token_type_hint", "")
        if hint not in TOKEN_TYPE_HINTS:
            hint = ""
        await backend(self.tokens.revoke(token_value, credentials, token_type_hint=hint, request_id=request_id))
        return Response(b"", status_code=200, headers=dict(NO_STORE))

    def routes(self) -> list[Route]:
        def route(path: str, name: str, handle: Callable[[Request, str], Awaitable[Response]]) -> Route:
            # Every method reaches the handler, which answers 405 with the endpoint's error shape.
            return Route(path, endpoint(name, handle, self.errors, self.settings), methods=ANY_METHOD)

        routes = [route(path, "token", self.token) for path in TOKEN_PATHS]
        if self.tokens is not None:
            routes.append(route(INTROSPECT_PATH, "introspect", self.introspect))
            routes += [route(path, "revoke", self.revoke) for path in REVOKE_PATHS]
        return routes


def _claimed_client_id(request: Request) -> str:
    """For the audit record of a request refused before its credentials were read:
    the client id its Basic header names, if it names one (the secret is not checked)."""
    try:
        creds = extract_credentials(request.headers.get("authorization"), {})
    except OAuthError:
        return ""
    return creds.client_id if creds else ""

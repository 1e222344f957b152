"""The OAuth API: token (RFC 6749 §3.2), introspection (RFC 7662), revocation (RFC 7009).

The token endpoint does only what HTTP needs — size, time and content type, form
parsing, credential extraction, the request context, routing by grant_type — and
renders what the grant answers. Errors are rendered the token endpoint's way
(services/edge/errors.py: TokenEndpointErrors) at all three.

All three authenticate the client behind the edge (the grant runner, token_issuer);
the edge learns of a failure from the `invalid_client` they answer, and throttles
failed client authentication per client id and address (services/edge/throttle.py):
a throttled request is answered 429 here and never reaches a secret check. A client
assertion (RFC 7523 §2.2) is throttled by the client id its claims name.

An answer of `keys_pending` (the client's keys are being fetched in the background,
and nobody waits for outgoing HTTP inside a batch) is no answer yet: the same request
is sent again after a short back-off, doubling, for as long as its budget allows;
then 503 temporarily_unavailable with Retry-After (`_answered`).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inboundlib import budget, redact
from inboundlib.events import EventBus
from inboundlib.grants.api import TokenRequest, TokenResponse
from inboundlib.grants.runner import publish_denial
from inboundlib.oauth.client_auth import ClientCredentials, extract_credentials
from inboundlib.oauth.errors import (
    InvalidClient,
    InvalidRequest,
    KeysPending,
    OAuthError,
    TemporarilyUnavailable,
    UnsupportedGrantType,
)
from inboundlib.oauth.params import REPEATABLE_TOKEN_PARAMS, parse_form, parse_form_multi
from services.edge.errors import NO_STORE, HttpError, Throttled, TokenEndpointErrors, json_response
from services.edge.http import backend, endpoint, read_form_body, request_address, request_context
from services.edge.settings import EdgeSettings
from services.edge.throttle import AUTH_FAILURES, THROTTLED, FailedAuthThrottle, Refusal

TOKEN_PATHS = ("/oauth/token", "/oauth_token.do")
INTROSPECT_PATH = "/oauth/introspect"
REVOKE_PATHS = ("/oauth/revoke", "/oauth_revoke_token.do")
TOKEN_TYPE_HINTS = ("access_token", "refresh_token")
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
# Throttled requests are audited (low priority) at most this often: a flood of them
# must not flood the audit log. Every one is counted in inbound_http_auth_throttled_total.
THROTTLE_AUDITS_PER_SECOND = 5.0
THROTTLE_AUDIT_BURST = 50
# The form parameters that carry client credentials (RFC 6749 §2.3.1, RFC 7521 §4.2).
CREDENTIAL_PARAMS = ("client_id", "client_secret", "client_assertion_type", "client_assertion")
# keys_pending: the first wait before sending again, doubled each time up to the last; a
# fetch from a healthy IdP takes tens of milliseconds. Sent again only while this much
# of the request's budget would be left for the answer after the wait.
KEYS_PENDING_FIRST_WAIT = 0.01
KEYS_PENDING_LONGEST_WAIT = 0.32
KEYS_PENDING_ANSWER_TIME = 0.1
KEYS_PENDING_RETRIES = Counter("inbound_http_keys_pending_retries_total",
                               "Requests sent again because the keys they need were being fetched", ["route"])
T = TypeVar("T")


class Grant(Protocol):
    """A grant as the edge sees it: a GrantClient (over gRPC) or a GrantRunner (in process)."""

    async def handle(self, request: TokenRequest) -> TokenResponse: ...


class TokenService(Protocol):
    """What the edge needs of token_issuer beyond JWKS (services/token_issuer/client.py)."""

    async def introspect(self, token: str, caller: ClientCredentials | None = None, *, request_id: str = "",
                         endpoint_url: str = ""): ...
    async def revoke(self, token: str, caller: ClientCredentials | None, *, token_type_hint: str = "",
                     request_id: str = "", endpoint_url: str = "") -> None: ...


@dataclass
class OAuthRoutes:
    issuer: str
    grants: dict[str, Grant]
    tokens: TokenService | None
    events: EventBus | None
    settings: EdgeSettings
    errors: TokenEndpointErrors
    throttle: FailedAuthThrottle | None = field(default=None)

    def __post_init__(self) -> None:
        # The token endpoints' URLs, made once: building request.url for each
        # request cost the edge about a twentieth of its CPU per token.
        self._token_urls = {path: self._url(path) for path in TOKEN_PATHS}
        if self.throttle is None:
            self.throttle = FailedAuthThrottle(self.settings.auth_throttle)
        self._audits = _Allowance(THROTTLE_AUDITS_PER_SECOND, THROTTLE_AUDIT_BURST)

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

    async def _authenticating(self, route: str, credentials: ClientCredentials | None, address: str,
                              call: Callable[[], Awaitable[T]], grant_type: str = "") -> T:
        """Run `call`, which authenticates the client behind the edge, unless failed
        authentications from this address (for this client id, or for any) hold it back:
        then 429, and `call` never runs. Its `invalid_client` counts as a failure, its
        success clears the client's entry for this address."""
        client_id = credentials.client_id if credentials else ""
        refusal = self.throttle.refusal(client_id, address)
        if refusal is not None:
            THROTTLED.labels(route, refusal.limit).inc()
            self._audit_throttled(route, client_id, address, grant_type, refusal)
            raise Throttled(refusal.retry_after)
        try:
            result = await self._answered(route, call)
        except OAuthError as exc:
            if exc.code == InvalidClient.code:
                AUTH_FAILURES.labels(route).inc()
                self.throttle.failed(client_id, address)
            raise
        self.throttle.succeeded(client_id, address)
        return result

    async def _answered(self, route: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call`'s answer; sent again while it is keys_pending and the budget allows."""
        wait = KEYS_PENDING_FIRST_WAIT
        while True:
            try:
                return await backend(call())
            except KeysPending:
                if budget.remaining(self.settings.request_timeout) < wait + KEYS_PENDING_ANSWER_TIME:
                    raise TemporarilyUnavailable(detail="keys still being fetched when the budget ran out") from None
            KEYS_PENDING_RETRIES.labels(route).inc()
            await asyncio.sleep(wait)
            wait = min(wait * 2, KEYS_PENDING_LONGEST_WAIT)

    def _audit_throttled(self, route: str, client_id: str, address: str, grant_type: str,
                         refusal: Refusal) -> None:
        if self.events is None or not self._audits.take():
            return
        publish_denial(self.events, redact.unverified(client_id), grant_type, TemporarilyUnavailable.code,
                       f"{route}: throttled for failed client authentications ({refusal.limit} limit) from "
                       f"{address}; retry after {refusal.retry_after} s")

    async def token(self, request: Request, request_id: str) -> Response:
        """RFC 6749 §3.2 token endpoint: parse, route by grant_type, render."""
        credentials = None
        grant_type = ""
        try:
            params = parse_form_multi(await read_form_body(request, self.settings), REPEATABLE_TOKEN_PARAMS)
            auth = {name: params.pop(name)[0] for name in CREDENTIAL_PARAMS if name in params}
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
        context = request_context(request, self.settings, self._endpoint_url(request))
        result = await self._authenticating("token", credentials, context.client_address, lambda: grant.handle(
            TokenRequest(grant_type=grant_type, client=credentials, params=params, request_id=request_id,
                         context=context)), grant_type)
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
        url = self._endpoint_url(request)
        info = await self._authenticating("introspect", credentials, request_address(request, self.settings),
                                          lambda: self.tokens.introspect(token_value, credentials,
                                                                         request_id=request_id, endpoint_url=url))
        return json_response(info.to_json(), 200, dict(NO_STORE))

    async def revoke(self, request: Request, request_id: str) -> Response:
        """RFC 7009 §2: 200 whether or not the token was known."""
        token_value, params, credentials = await self._token_form(request)
        # RFC 7009 §2.1: the hint only speeds the search; one we do not know is ignored.
        hint = params.get("token_type_hint", "")
        if hint not in TOKEN_TYPE_HINTS:
            hint = ""
        url = self._endpoint_url(request)
        await self._authenticating("revoke", credentials, request_address(request, self.settings),
                                   lambda: self.tokens.revoke(token_value, credentials, token_type_hint=hint,
                                                              request_id=request_id, endpoint_url=url))
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


class _Allowance:
    """A token bucket: `take` is true at most `rate` times a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

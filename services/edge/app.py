"""The edge's HTTP application.

The token endpoint does only what HTTP needs — size and content type, form
parsing, credential extraction, routing by grant_type — and renders what the
grant service answers. It is the one place that turns OAuth errors into HTTP
(RFC 6749 §5.2) and the one place that chooses status codes.
"""
from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inbound.events.v1 import events_pb2
from inboundlib.events import TOKEN_DENIED, EventBus
from inboundlib.grants.api import GrantHandler, TokenRequest
from inboundlib.grpcx import infrastructure_error
from inboundlib.logs import request_id_var
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, ClientCredentials, extract_credentials
from inboundlib.oauth.errors import (
    InvalidClient,
    InvalidRequest,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    UnsupportedGrantType,
)
from inboundlib.oauth.params import MAX_BODY_BYTES, check_content_type, parse_form

log = logging.getLogger(__name__)

TOKEN_PATHS = ("/oauth/token", "/oauth_token.do")
INTROSPECT_PATH = "/oauth/introspect"
REVOKE_PATHS = ("/oauth/revoke", "/oauth_revoke_token.do")
TOKEN_TYPE_HINTS = ("access_token", "refresh_token")
JWKS_PATH = "/oauth/jwks"
METADATA_PATH = "/.well-known/oauth-authorization-server"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

HTTP_SECONDS = Histogram("inbound_http_request_seconds", "HTTP requests served", ["route", "status"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
HTTP_ERRORS = Counter("inbound_http_oauth_errors_total", "OAuth errors rendered", ["route", "error"])


class BodyTooLarge(InvalidRequest):
    status = 413
    default_description = "The request body is too large."


class MethodNotAllowed(InvalidRequest):
    """RFC 6749 §3.2, RFC 7009 §2.1, RFC 7662 §2.1: these endpoints take POST only."""
    status = 405
    default_description = "This endpoint accepts POST only."


class TokenService(Protocol):
    """What the edge needs of token_issuer beyond JWKS (services/token_issuer/client.py)."""

    async def introspect(self, token: str, caller: ClientCredentials | None = None, *, request_id: str = ""): ...
    async def revoke(self, token: str, caller: ClientCredentials | None, *, token_type_hint: str = "",
                     request_id: str = "") -> None: ...


@dataclass
class EdgeConfig:
    issuer: str
    grants: dict[str, GrantHandler]
    jwks: Callable[[], Awaitable[dict]]
    tokens: TokenService | None = None
    events: EventBus | None = None
    ready: Callable[[], Awaitable[bool]] = field(default=lambda: _always_ready())


async def _always_ready() -> bool:
    return True


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


def error_response(error: OAuthError) -> Response:
    """RFC 6749 §5.2: a JSON error body, never cached. Client authentication
    failures are 401 with a Basic challenge (RFC 7235 §3.1: every 401 has one),
    whichever method the client tried."""
    headers = dict(_NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="inbound", charset="UTF-8"'
    return _json(error.to_json(), error.status, headers)


_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def _request_id(request: Request) -> str:
    """The caller's X-Request-Id if it is safe to log, else a new one: a random
    per-process prefix and a counter (unique without a syscall per request)."""
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Invalid Content-Length.")
        if int(declared) > MAX_BODY_BYTES:
            raise BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def _backend(call: Awaitable):
    """Await a backend call; infrastructure failures become 503/500 OAuth errors (DESIGN.md)."""
    try:
        return await call
    except OAuthError:
        raise
    except Exception as exc:
        error = infrastructure_error(exc)
        if isinstance(error, ServerError):
            log.exception("backend call failed")
        raise error from None


def _claimed_client_id(request: Request) -> str:
    """For the audit record of a request refused before its credentials were read:
    the client id its Basic header names, if it names one (the secret is not checked)."""
    try:
        creds = extract_credentials(request.headers.get("authorization"), {})
    except OAuthError:
        return ""
    return creds.client_id if creds else ""


async def _read_form(request: Request) -> tuple[dict[str, str], ClientCredentials | None]:
    """RFC 6749 §3.2 / RFC 7009 §2.1 / RFC 7662 §2.1: a POSTed form with the client's credentials."""
    if request.method != "POST":
        raise MethodNotAllowed()
    if request.scope.get("query_string"):  # (the raw bytes: cheaper than building request.url)
        # RFC 6749 §2.3.1, §3.2: parameters go in the body; a URI ends up in logs and histories.
        raise InvalidRequest("Parameters must be sent in the request body, not the URI.")
    check_content_type(request.headers.get("content-type"))
    params = parse_form(await _read_body(request))
    return params, extract_credentials(request.headers.get("authorization"), params)


async def _read_token_form(request: Request) -> tuple[str, dict[str, str], ClientCredentials]:
    """RFC 7662 §2.1 / RFC 7009 §2.1: a client-authenticated form with a `token` parameter."""
    params, credentials = await _read_form(request)
    if credentials is None:
        raise InvalidClient(detail="no client authentication")
    token_value = params.get("token")
    if token_value is None:
        raise InvalidRequest("The token parameter is missing.")
    return token_value, params, credentials


def create_app(config: EdgeConfig) -> Starlette:
    metadata = build_metadata(config.issuer, sorted(config.grants), introspection=config.tokens is not None)

    def endpoint(route: str, handle: Callable[[Request, str], Awaitable[Response]]):
        """The frame every OAuth endpoint shares: request id, error rendering, metrics."""

        async def serve(request: Request) -> Response:
            started = time.perf_counter()
            request_id = _request_id(request)
            ctx = request_id_var.set(request_id)
            try:
                response = await handle(request, request_id)
            except OAuthError as exc:
                HTTP_ERRORS.labels(route, exc.code).inc()
                if exc.status >= 500:
                    log.warning("request failed", extra={"route": route, "error": exc.code, "detail": exc.detail})
                response = error_response(exc)
            finally:
                request_id_var.reset(ctx)
            response.headers["X-Request-Id"] = request_id
            if response.status_code == 405:
                response.headers["Allow"] = "POST"
            HTTP_SECONDS.labels(route, str(response.status_code)).observe(time.perf_counter() - started)
            return response

        return serve

    async def token(request: Request, request_id: str) -> Response:
        """RFC 6749 §3.2 token endpoint: parse, route by grant_type, render."""
        credentials = None
        grant_type = ""
        try:
            params, credentials = await _read_form(request)
            grant_type = params.pop("grant_type", "")
            if not grant_type:
                raise InvalidRequest("The grant_type parameter is missing.")
            handler = config.grants.get(grant_type)
            if handler is None:
                raise UnsupportedGrantType()
        except OAuthError as exc:
            # Refused here, before any grant service saw it: the audit record is ours to write.
            if config.events is not None:
                client_id = credentials.client_id if credentials else _claimed_client_id(request)
                config.events.publish(TOKEN_DENIED, events_pb2.Event(token_denied=events_pb2.TokenDenied(
                    client_id=client_id, grant_type=grant_type[:100],
                    error=exc.code, detail=exc.detail or exc.description)), low_priority=True)
            raise
        result = await _backend(handler.handle(TokenRequest(grant_type=grant_type, client=credentials,
                                                            params=params, request_id=request_id)))
        return _json(result.to_json(), 200, dict(_NO_STORE))

    async def introspect(request: Request, request_id: str) -> Response:
        """RFC 7662 §2: the caller authenticates as a client; inactive is only {"active": false}."""
        token_value, _, credentials = await _read_token_form(request)
        info = await _backend(config.tokens.introspect(token_value, credentials, request_id=request_id))
        return _json(info.to_json(), 200, dict(_NO_STORE))

    async def revoke(request: Request, request_id: str) -> Response:
        """RFC 7009 §2: 200 whether or not the token was known."""
        token_value, params, credentials = await _read_token_form(request)
        # RFC 7009 §2.1: the hint only speeds the search; one we do not know is ignored.
        hint = params.get("token_type_hint", "")
        if hint not in TOKEN_TYPE_HINTS:
            hint = ""
        await _backend(config.tokens.revoke(token_value, credentials, token_type_hint=hint, request_id=request_id))
        return Response(b"", status_code=200, headers=dict(_NO_STORE))

    async def oauth_metadata(request: Request) -> Response:
        """RFC 8414 §3: authorization server metadata."""
        return _json(metadata, headers={"Cache-Control": "public, max-age=300"})

    async def jwks(request: Request) -> Response:
        """RFC 7517 JWK Set of every key that signs, will sign or signed unexpired tokens."""
        try:
            document = await config.jwks()
        except Exception as exc:
            log.warning("jwks unavailable", extra={"error": type(exc).__name__})
            return error_response(TemporarilyUnavailable())
        return Response(json.dumps(document), media_type="application/jwk-set+json",
                        headers={"Cache-Control": "public, max-age=60"})

    async def healthz(request: Request) -> Response:
        return Response("ok", media_type="text/plain")

    async def readyz(request: Request) -> Response:
        ready = await config.ready()
        return Response("ready" if ready else "not ready", status_code=200 if ready else 503,
                        media_type="text/plain")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    any_method = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    routes = [Route(path, endpoint("token", token), methods=any_method) for path in TOKEN_PATHS]
    if config.tokens is not None:
        routes.append(Route(INTROSPECT_PATH, endpoint("introspect", introspect), methods=any_method))
        routes += [Route(path, endpoint("revoke", revoke), methods=any_method) for path in REVOKE_PATHS]
    routes += [
        Route(METADATA_PATH, oauth_metadata, methods=["GET"]),
        Route(JWKS_PATH, jwks, methods=["GET"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def build_metadata(issuer: str, grant_types: list[str], *, introspection: bool = True) -> dict:
    """RFC 8414 §2: only what this server really supports."""
    base = issuer.rstrip("/")
    auth_methods = [CLIENT_SECRET_BASIC, "client_secret_post"]
    metadata = {
        "issuer": issuer,
        "token_endpoint": base + TOKEN_PATHS[0],
        "jwks_uri": base + JWKS_PATH,
        "grant_types_supported": grant_types,
        "token_endpoint_auth_methods_supported": auth_methods,
        # RFC 8414 requires the member; no authorization endpoint is served yet.
        "response_types_supported": [],
    }
    if introspection:
        metadata.update({
            "introspection_endpoint": base + INTROSPECT_PATH,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint": base + REVOKE_PATHS[0],
            "revocation_endpoint_auth_methods_supported": auth_methods,
        })
    return metadata

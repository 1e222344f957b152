"""What every edge endpoint shares: the request id, the request's budget, error
rendering by the endpoint's renderer, metrics; reading a bounded form body in
bounded time; and the request context (who is calling, from where)."""
from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.responses import Response

from inboundlib import budget
from inboundlib.grants.api import RequestContext
from inboundlib.grpcx import infrastructure_error
from inboundlib.logs import request_id_var
from inboundlib.oauth.errors import InvalidRequest, OAuthError, ServerError
from inboundlib.oauth.params import MAX_BODY_BYTES, check_content_type
from services.edge.errors import BodyTooLarge, BodyTooSlow, HttpError, MethodNotAllowed, Throttled
from services.edge.settings import EdgeSettings, Network

log = logging.getLogger("services.edge")

HTTP_SECONDS = Histogram("inbound_http_request_seconds", "HTTP requests served", ["route", "status"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
HTTP_ERRORS = Counter("inbound_http_oauth_errors_total", "OAuth errors rendered", ["route", "error"])

_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)
MAX_USER_AGENT = 256
_NOT_PRINTABLE_ASCII = re.compile(r"[^ -~]")  # what the User-Agent keeps: " " to "~"


class ErrorRenderer(Protocol):
    def render(self, error: OAuthError | HttpError) -> Response: ...


def request_id(request: Request) -> str:
    """The caller's X-Request-Id if it is safe to log, else a new one: a random
    per-process prefix and a counter (unique without a syscall per request)."""
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


Handler = Callable[[Request, str], Awaitable[Response]]


def endpoint(route: str, handle: Handler, renderer: ErrorRenderer, settings: EdgeSettings, *,
             allow: str = "POST") -> Callable[[Request], Awaitable[Response]]:
    """The frame of an endpoint: request id, the request's whole time budget,
    errors rendered the endpoint's way, metrics."""

    async def serve(request: Request) -> Response:
        started = time.perf_counter()
        rid = request_id(request)
        ctx = request_id_var.set(rid)
        try:
            with budget.within(settings.request_timeout):
                response = await handle(request, rid)
        except HttpError as exc:
            HTTP_ERRORS.labels(route, exc.as_oauth().code).inc()
            response = renderer.render(exc)
            if isinstance(exc, MethodNotAllowed):
                response.headers["Allow"] = allow
            if isinstance(exc, Throttled):
                response.headers["Retry-After"] = str(exc.retry_after)
            if isinstance(exc, BodyTooSlow):
                # The rest of the body may never come: not a connection to keep.
                response.headers["Connection"] = "close"
        except OAuthError as exc:
            HTTP_ERRORS.labels(route, exc.code).inc()
            if exc.code in ("server_error", "temporarily_unavailable"):
                log.warning("request failed", extra={"route": route, "error": exc.code, "detail": exc.detail})
            response = renderer.render(exc)
        finally:
            request_id_var.reset(ctx)
        response.headers["X-Request-Id"] = rid
        HTTP_SECONDS.labels(route, str(response.status_code)).observe(time.perf_counter() - started)
        return response

    return serve


async def backend(call: Awaitable):
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


async def read_body(request: Request, settings: EdgeSettings) -> bytes:
    """The body, at most MAX_BODY_BYTES, received within `body_timeout` (a client
    that stops half-way does not hold its connection and our memory for ever)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HttpError("Invalid Content-Length.")
        if int(declared) > MAX_BODY_BYTES:
            raise BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise BodyTooLarge()
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTooSlow() from None
    return b"".join(chunks)


async def read_form_body(request: Request, settings: EdgeSettings) -> bytes:
    """RFC 6749 §3.2 / RFC 7009 §2.1 / RFC 7662 §2.1: a POSTed form, parameters in the body only."""
    if request.method != "POST":
        raise MethodNotAllowed()
    if request.scope.get("query_string"):  # (the raw bytes: cheaper than building request.url)
        # RFC 6749 §2.3.1, §3.2: parameters go in the body; a URI ends up in logs and histories.
        raise InvalidRequest("Parameters must be sent in the request body, not the URI.")
    check_content_type(request.headers.get("content-type"))
    return await read_body(request, settings)


# --- who is calling -------------------------------------------------------------------------------

def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[v6]:port" (RFC 7239 style)
        value = value[1:value.index("]")]
    elif value.count(":") == 1:  # "v4:port" (some load balancers, Azure's among them, add the port)
        value = value.partition(":")[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _trusted(address, proxies: tuple[Network, ...]) -> bool:
    return any(address in network for network in proxies)


def client_address(peer: str, forwarded_for: list[str], proxies: tuple[Network, ...]) -> str:
    """The client's address as seen through trusted proxies. X-Forwarded-For is
    believed only as far as trusted proxies wrote it: walking from the right
    (the hop nearest us), each trusted proxy vouches for the address to its left;
    the first address that is not a trusted proxy is the client. Anything a
    client put in the header itself lies further left and is never reached. A
    malformed entry stops the walk at the proxy that passed it on."""
    if not proxies:  # (no proxy to believe: the peer, without parsing it on every request)
        return peer
    address = _ip(peer)
    if address is None or not _trusted(address, proxies):
        return peer
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    current = address
    for hop in reversed(hops):
        parsed = _ip(hop)
        if parsed is None:
            break
        current = parsed
        if not _trusted(parsed, proxies):
            break
    return str(current)


def request_address(request: Request, settings: EdgeSettings) -> str:
    """The client's address: the socket's peer, or through trusted proxies (`client_address`)."""
    peer = request.scope.get("client")
    return client_address(peer[0] if peer else "", request.headers.getlist("x-forwarded-for"),
                          settings.trusted_proxies)


def request_context(request: Request, settings: EdgeSettings, endpoint_url: str) -> RequestContext:
    return RequestContext(
        client_address=request_address(request, settings),
        user_agent=_NOT_PRINTABLE_ASCII.sub("", request.headers.get("user-agent", "")[:MAX_USER_AGENT]),
        endpoint_url=endpoint_url)

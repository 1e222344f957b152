"""What every grant service runs around its handler, in one place, so that a new
grant cannot forget any of it:
1. the grant type check (the request was routed to the right service);
2. client authentication (RFC 6749 §2.3, §3.2.1). A grant whose client proves
   itself inside the grant (`authenticates_client`, RFC 7521 §4.2 / RFC 7523)
   provides `authenticate`, which the runner calls; client credentials sent
   beside it are still verified, against the same client (never ignored); and
   a disabled client is refused either way (invalid_client);
3. the client may use this grant type (§5.2 unauthorized_client), for every grant;
4. the parameters: only those the grant declares reach it, a repeat of a
   single-valued one is invalid_request (§3.1);
then the handler; and, for every outcome, metrics, the refusal's log line and
audit event, and a failed dependency turned into `temporarily_unavailable` or
`server_error`. `KeysPending` (a client's keys are being fetched in the
background) is no refusal: it goes back to the caller, who asks again shortly,
and is neither counted nor audited as a denial. Once a client assertion (RFC
7523 §2.2) has authenticated the client, though, its jti is spent and the same
request cannot be sent again: keys pending in the grant itself are then
`temporarily_unavailable`, and the client retries with a new assertion.

The gRPC servicer calls it for each item of a batch; a single process that
hosts every service (services/all_in_one) calls it directly from the edge.
"""
from __future__ import annotations

import inspect
import logging

from inbound.events.v1 import events_pb2
from inboundlib import redact
from inboundlib.events import TOKEN_DENIED, EventBus
from inboundlib.grants.api import GrantHandler, TokenRequest, TokenResponse
from inboundlib.grpcx import infrastructure_error
from inboundlib.metrics import TOKEN_REQUESTS
from inboundlib.oauth.client_auth import (
    JWT_AUTH_METHODS,
    NONE,
    AuthenticatableClient,
    ClientAuthenticator,
    ClientSource,
    require_grant_type,
)
from inboundlib.oauth.errors import (
    InvalidClient,
    KeysPending,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    UnsupportedGrantType,
)

log = logging.getLogger(__name__)


def publish_denial(events: EventBus, client_id: str, grant_type: str, error: str, detail: str, *,
                   awaited: bool = False) -> str:
    """The audit record of a refused token request, wherever it was refused (the edge,
    or the grant runner). Low priority: a caller can cause as many as it likes, so they
    go first when the buffer is full. Identifiers that matched nothing known must come
    already fingerprinted (inboundlib.redact). Returns the event id (`awaited`: for
    `events.durable`)."""
    return events.publish(TOKEN_DENIED, events_pb2.Event(token_denied=events_pb2.TokenDenied(
        client_id=client_id[:255], grant_type=grant_type[:100], error=error, detail=detail)), low_priority=True,
        awaited=awaited)


class GrantRunner:
    def __init__(self, handler: GrantHandler, clients: ClientSource | ClientAuthenticator,
                 events: EventBus | None = None):
        self.handler = handler
        self.authenticator = clients if isinstance(clients, ClientAuthenticator) else ClientAuthenticator(clients)
        self.events = events
        self.grant_type = handler.grant_type
        self.parameters = handler.parameters
        self.self_authenticating = bool(getattr(handler, "authenticates_client", False))
        if self.self_authenticating and not inspect.iscoroutinefunction(getattr(handler, "authenticate", None)):
            # Checked here, at start, not at the first request: such a grant cannot
            # leave its client unauthenticated by forgetting the method.
            raise TypeError(f"{type(handler).__name__} sets authenticates_client = True but has no "
                            "`async def authenticate(self, request) -> AuthenticatableClient`")

    async def handle(self, request: TokenRequest) -> TokenResponse:
        """The handler's answer, or the OAuthError to send (never another exception)."""
        # Until a client record matches it, the client id is the caller's word: it
        # is logged and audited only as a fingerprint (it may be a misplaced secret).
        client_id = redact.unverified(request.client.client_id) if request.client else ""
        grant_type = self.grant_type
        assertion_spent = False  # a client assertion verified: its jti is used up
        try:
            if request.grant_type != self.grant_type:
                grant_type = redact.unverified(request.grant_type)
                raise UnsupportedGrantType(detail=f"grant type sent to the {self.grant_type} service")
            if self.self_authenticating:
                # The proof is among the grant's parameters: only those it declares reach it.
                accepted = self._accepted(request)
                client = await self._authenticated_by_grant(accepted)
                client_id = client.client_id
                assertion_spent = request.client is not None and request.client.method in JWT_AUTH_METHODS
            else:
                found = await self.authenticator.find(request.client)
                if found is not None:
                    client_id = found.client_id
                client = await self.authenticator.verify(found, request.client, request.context)
                assertion_spent = request.client.method in JWT_AUTH_METHODS
            require_grant_type(client, self.grant_type)
            if not self.self_authenticating:
                accepted = self._accepted(request)
            response = await self.handler.handle(accepted, client)
        except KeysPending:
            if assertion_spent:
                # Sent again, the request would carry a used client assertion (a replay:
                # invalid_client). The client retries with a new one; the keys are on their way.
                log.info("token request answered unavailable: keys being fetched after its client assertion "
                         "was used", extra={"client_id": client_id})
                TOKEN_REQUESTS.labels(self.grant_type, TemporarilyUnavailable.code).inc()
                raise TemporarilyUnavailable(detail="keys being fetched; the client assertion is used up") from None
            # Not an answer yet: the edge sends the request again within its budget.
            log.debug("token request waits for keys being fetched", extra={"client_id": client_id})
            raise
        except OAuthError as exc:
            TOKEN_REQUESTS.labels(self.grant_type, exc.code).inc()
            log.info("token request denied", extra={"client_id": client_id, "error": exc.code, "detail": exc.detail,
                                                    "client_address": request.context.client_address})
            if self.events is not None:
                # Answered once the refusal is audited (durable delivery); if it cannot be
                # (the spool is full), the answer is temporarily_unavailable instead.
                await self.events.durable(publish_denial(self.events, client_id, grant_type, exc.code,
                                                         exc.detail, awaited=True))
            raise
        except Exception as exc:
            error = infrastructure_error(exc)
            TOKEN_REQUESTS.labels(self.grant_type, error.code).inc()
            if isinstance(error, ServerError):
                log.exception("token request failed", extra={"client_id": client_id})
            else:
                log.warning("token request failed: a dependency is unavailable",
                            extra={"client_id": client_id, "detail": error.detail})
            raise error from None
        TOKEN_REQUESTS.labels(self.grant_type, "issued").inc()
        # Every issued token is an audit event (token_issued); the log line is for debugging only.
        log.debug("token issued", extra={"client_id": client_id, "grant_type": self.grant_type})
        return response

    def _accepted(self, request: TokenRequest) -> TokenRequest:
        return TokenRequest(grant_type=request.grant_type, client=request.client,
                            params=self.parameters.select(request.params), request_id=request.request_id,
                            context=request.context)

    async def _authenticated_by_grant(self, request: TokenRequest) -> AuthenticatableClient:
        """The client a self-authenticating grant proved (RFC 7521 §4.2: an assertion).
        Credentials sent beside it are never ignored: they must name the same client
        and, if they carry a secret, it must be that client's (RFC 6749 §2.3). A
        bare client_id (`none`) only names the client the grant authenticated:
        RFC 7521 §4.2 lets it accompany an assertion."""
        client = await self.handler.authenticate(request)
        if not client.active:
            raise InvalidClient(detail="client is disabled")
        creds = request.client
        if creds is not None:
            if creds.client_id != client.client_id:
                raise InvalidClient(detail="the client credentials name another client than the grant proved")
            if creds.method != NONE:
                await self.authenticator.verify(client, creds, request.context)
        return client

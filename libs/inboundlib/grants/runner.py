"""What every grant service adds around its handler, in one place: the grant
type check, metrics, the log line and audit event of a refusal, and a failed
dependency turned into `temporarily_unavailable` (503) or `server_error` (500).

The gRPC servicer calls it for each item of a batch; a single process that
hosts every service (services/all_in_one) calls it directly from the edge.
"""
from __future__ import annotations

import logging

from inbound.events.v1 import events_pb2
from inboundlib.events import TOKEN_DENIED, EventBus
from inboundlib.grants.api import GrantHandler, TokenRequest, TokenResponse
from inboundlib.grpcx import infrastructure_error
from inboundlib.metrics import TOKEN_REQUESTS
from inboundlib.oauth.errors import OAuthError, ServerError, UnsupportedGrantType

log = logging.getLogger(__name__)


class GrantRunner:
    def __init__(self, handler: GrantHandler, events: EventBus | None = None):
        self.handler = handler
        self.events = events
        self.grant_type = handler.grant_type

    async def handle(self, request: TokenRequest) -> TokenResponse:
        """The handler's answer, or the OAuthError to send (never another exception)."""
        client_id = request.client.client_id if request.client else ""
        try:
            if request.grant_type != self.grant_type:
                raise UnsupportedGrantType(detail=f"{request.grant_type!r} sent to {self.grant_type}")
            response = await self.handler.handle(request)
        except OAuthError as exc:
            TOKEN_REQUESTS.labels(self.grant_type, exc.code).inc()
            log.info("token request denied", extra={"client_id": client_id, "error": exc.code, "detail": exc.detail})
            if self.events is not None:
                self.events.publish(TOKEN_DENIED, events_pb2.Event(token_denied=events_pb2.TokenDenied(
                    client_id=client_id[:255], grant_type=request.grant_type[:100], error=exc.code,
                    detail=exc.detail)), low_priority=True)
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

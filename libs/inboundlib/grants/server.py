"""The gRPC servicer every grant service uses: a batch of token requests in,
one result each out. OAuth errors are data; the private detail is logged here."""
from __future__ import annotations

import asyncio
import logging

import grpc

from inbound.events.v1 import events_pb2
from inbound.grant.v1 import grant_pb2 as pb
from inbound.grant.v1 import grant_pb2_grpc
from inboundlib.events import TOKEN_DENIED, EventBus
from inboundlib.grants.api import GrantHandler, TokenRequest, TokenResponse
from inboundlib.grpcx import infrastructure_error
from inboundlib.logs import request_id_var
from inboundlib.metrics import TOKEN_REQUESTS
from inboundlib.oauth.errors import OAuthError, ServerError, TemporarilyUnavailable, UnsupportedGrantType
from inboundlib.wire import credentials_from_pb, error_to_pb, expired

log = logging.getLogger(__name__)

SERVICE_NAME = "inbound.grant.v1.GrantService"
MAX_BATCH = 256
def request_from_pb(item: pb.TokenRequest) -> TokenRequest:
    return TokenRequest(grant_type=item.grant_type, client=credentials_from_pb(item.client), params=dict(item.params),
                        request_id=item.meta.request_id)


def response_to_pb(r: TokenResponse) -> pb.TokenResponse:
    return pb.TokenResponse(access_token=r.access_token, token_type=r.token_type, expires_in=r.expires_in,
                            scope=r.scope, refresh_token=r.refresh_token, id_token=r.id_token,
                            issued_token_type=r.issued_token_type)


class GrantServicer(grant_pb2_grpc.GrantServiceServicer):
    def __init__(self, handler: GrantHandler, events: EventBus | None = None):
        self.handler = handler
        self.events = events

    async def _one(self, item: pb.TokenRequest) -> pb.TokenResult:
        token = request_id_var.set(item.meta.request_id)
        client_id = item.client.client_id if item.HasField("client") else ""
        try:
            if expired(item.meta):
                raise TemporarilyUnavailable(detail="deadline passed before handling")
            if item.grant_type != self.handler.grant_type:
                raise UnsupportedGrantType(detail=f"{item.grant_type!r} sent to {self.handler.grant_type}")
            response = await self.handler.handle(request_from_pb(item))
            TOKEN_REQUESTS.labels(self.handler.grant_type, "issued").inc()
            # Every issued token is an audit event (token_issued); the log line is for debugging only.
            log.debug("token issued", extra={"client_id": client_id, "grant_type": item.grant_type})
            return pb.TokenResult(token=response_to_pb(response))
        except OAuthError as exc:
            TOKEN_REQUESTS.labels(self.handler.grant_type, exc.code).inc()
            log.info("token request denied", extra={"client_id": client_id, "error": exc.code,
                                                   "detail": exc.detail})
            if self.events is not None:
                self.events.publish(TOKEN_DENIED, events_pb2.Event(token_denied=events_pb2.TokenDenied(
                    client_id=client_id[:255], grant_type=item.grant_type, error=exc.code, detail=exc.detail)),
                    low_priority=True)
            return pb.TokenResult(error=error_to_pb(exc))
        except Exception as exc:
            error = infrastructure_error(exc)
            TOKEN_REQUESTS.labels(self.handler.grant_type, error.code).inc()
            if isinstance(error, ServerError):
                log.exception("token request failed", extra={"client_id": client_id})
            else:
                log.warning("token request failed: a dependency is unavailable",
                            extra={"client_id": client_id, "detail": error.detail})
            return pb.TokenResult(error=error_to_pb(error))
        finally:
            request_id_var.reset(token)

    async def Token(self, request, context):
        if len(request.requests) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} requests a call")
        results = await asyncio.gather(*(self._one(item) for item in request.requests))
        return pb.TokenResults(results=results)


def add_to_server(handler: GrantHandler, server: grpc.aio.Server, events: EventBus | None = None) -> None:
    grant_pb2_grpc.add_GrantServiceServicer_to_server(GrantServicer(handler, events), server)

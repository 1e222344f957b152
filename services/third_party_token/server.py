"""gRPC servicer of ForeignTokens (inbound.federation.v1): protobuf in, ForeignTokens
calls, protobuf out; each item answered on its own (one bad item never fails its batch)."""
from __future__ import annotations

import asyncio
import logging

import grpc

from inbound.federation.v1 import federation_pb2 as pb
from inbound.federation.v1 import federation_pb2_grpc
from inboundlib.grpcx import infrastructure_error
from inboundlib.logs import request_id_var
from inboundlib.oauth.errors import KeysPending, OAuthError, ServerError, TemporarilyUnavailable
from inboundlib.wire import error_to_pb, expired, item_budget
from services.third_party_token.api import ForeignTokensApi
from services.token_issuer.wire import info_to_pb

log = logging.getLogger(__name__)

SERVICE_NAME = "inbound.federation.v1.ForeignTokens"
MAX_BATCH = 256


class ForeignTokensServicer(federation_pb2_grpc.ForeignTokensServicer):
    def __init__(self, tokens: ForeignTokensApi):
        self.tokens = tokens

    async def _one(self, item: pb.ForeignIntrospectRequest) -> pb.ForeignIntrospectResult:
        token = request_id_var.set(item.meta.request_id)
        try:
            if expired(item.meta):
                raise TemporarilyUnavailable(detail="no time left before handling")
            with item_budget(item.meta):
                info = await self.tokens.introspect_foreign(item.token, request_id=item.meta.request_id)
            return pb.ForeignIntrospectResult(info=info_to_pb(info))
        except KeysPending:
            # A gRPC caller cannot wait for the provider's keys: it tries again later.
            return pb.ForeignIntrospectResult(error=error_to_pb(TemporarilyUnavailable()))
        except OAuthError as exc:
            return pb.ForeignIntrospectResult(error=error_to_pb(exc))
        except Exception as exc:
            error = infrastructure_error(exc)
            if isinstance(error, ServerError):
                log.exception("foreign token introspection failed")
            else:
                log.warning("foreign token introspection failed: a dependency is unavailable",
                            extra={"detail": error.detail})
            return pb.ForeignIntrospectResult(error=error_to_pb(error))
        finally:
            request_id_var.reset(token)

    async def Introspect(self, request, context):
        if len(request.requests) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} requests a call")
        return pb.ForeignIntrospectResults(results=await asyncio.gather(*(self._one(i) for i in request.requests)))


def add_to_server(tokens: ForeignTokensApi, server: grpc.aio.Server) -> None:
    federation_pb2_grpc.add_ForeignTokensServicer_to_server(ForeignTokensServicer(tokens), server)

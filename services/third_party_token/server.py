"""gRPC servicer of ForeignTokens (inbound.federation.v1): protobuf in, ForeignTokens
calls, protobuf out; each item answered on its own (one bad item never fails its batch)."""
from __future__ import annotations

import asyncio
import logging

import grpc

from inbound.federation.v1 import federation_pb2 as pb
from inbound.federation.v1 import federation_pb2_grpc
from inboundlib.grpcx import answer_item, check_batch_size
from inboundlib.oauth.errors import KeysPending, OAuthError, TemporarilyUnavailable
from inboundlib.wire import error_to_pb
from services.third_party_token.api import ForeignTokensApi
from services.token_issuer.wire import info_to_pb

log = logging.getLogger(__name__)

SERVICE_NAME = "inbound.federation.v1.ForeignTokens"
MAX_BATCH = 256


class ForeignTokensServicer(federation_pb2_grpc.ForeignTokensServicer):
    def __init__(self, tokens: ForeignTokensApi):
        self.tokens = tokens

    async def _one(self, item: pb.ForeignIntrospectRequest) -> pb.ForeignIntrospectResult:
        async def work():
            return await self.tokens.introspect_foreign(item.token, request_id=item.meta.request_id)

        outcome = await answer_item(item.meta, work, what="foreign token introspection")
        if isinstance(outcome, KeysPending):
            # A gRPC caller cannot wait for the provider's keys: it tries again later.
            outcome = TemporarilyUnavailable()
        if isinstance(outcome, OAuthError):
            return pb.ForeignIntrospectResult(error=error_to_pb(outcome))
        return pb.ForeignIntrospectResult(info=info_to_pb(outcome))

    async def Introspect(self, request, context):
        await check_batch_size(context, request.requests, MAX_BATCH)
        return pb.ForeignIntrospectResults(results=await asyncio.gather(*(self._one(i) for i in request.requests)))


def add_to_server(tokens: ForeignTokensApi, server: grpc.aio.Server) -> None:
    federation_pb2_grpc.add_ForeignTokensServicer_to_server(ForeignTokensServicer(tokens), server)

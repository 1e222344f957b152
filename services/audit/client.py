"""The audit log over gRPC, for inboundctl and tests: same interface as AuditLog."""
from __future__ import annotations

import grpc

from inbound.audit.v1 import audit_pb2_grpc
from inboundlib.grpcx import request_metadata
from services.audit import wire
from services.audit.api import AuditPage, InvalidArgument, SearchQuery

TIMEOUT = 10.0


class AuditClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = TIMEOUT):
        self.stub = audit_pb2_grpc.AuditLogStub(channel)
        self.timeout = timeout

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.timeout, metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(exc.details()) from None
            raise

    async def tail(self, limit: int = 0, after_seq: int | None = None) -> AuditPage:
        return wire.page_from_pb(await self._call(self.stub.Tail, wire.tail_to_pb(limit, after_seq)))

    async def search(self, query: SearchQuery) -> AuditPage:
        return wire.page_from_pb(await self._call(self.stub.Search, wire.query_to_pb(query)))

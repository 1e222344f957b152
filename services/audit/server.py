"""gRPC servicer for audit: protobuf in, AuditLog queries, protobuf out."""
from __future__ import annotations

import logging

import asyncpg
import grpc

from inbound.audit.v1 import audit_pb2_grpc
from services.audit import wire
from services.audit.api import AuditLogApi, InvalidArgument

log = logging.getLogger(__name__)

SERVICE_NAME = "inbound.audit.v1.AuditLog"


class AuditLogServicer(audit_pb2_grpc.AuditLogServicer):
    def __init__(self, audit_log: AuditLogApi):
        self.audit_log = audit_log

    async def _call(self, context, coro):
        try:
            return await coro
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("audit query failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the audit database is not reachable")

    async def Tail(self, request, context):
        limit, after_seq = wire.tail_from_pb(request)
        return wire.page_to_pb(await self._call(context, self.audit_log.tail(limit, after_seq)))

    async def Search(self, request, context):
        return wire.page_to_pb(await self._call(context, self.audit_log.search(wire.query_from_pb(request))))


def add_to_server(audit_log: AuditLogApi, server: grpc.aio.Server) -> None:
    audit_pb2_grpc.add_AuditLogServicer_to_server(AuditLogServicer(audit_log), server)

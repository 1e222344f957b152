"""Protobuf <-> domain records for the audit contract (used by server.py and client.py)."""
from __future__ import annotations

from inbound.audit.v1 import audit_pb2 as pb
from services.audit.api import AuditPage, AuditRecord, SearchQuery


def record_to_pb(r: AuditRecord) -> pb.AuditRecord:
    return pb.AuditRecord(
        event_id=r.event_id, occurred_at_unix_ms=r.occurred_at_unix_ms, type=r.type, source=r.source,
        request_id=r.request_id, client_id=r.client_id, detail_json=r.detail_json,
        stored_at_unix_ms=r.stored_at_unix_ms, seq=r.seq, actor_kind=r.actor_kind, actor_id=r.actor_id)


def record_from_pb(m: pb.AuditRecord) -> AuditRecord:
    return AuditRecord(
        event_id=m.event_id, occurred_at_unix_ms=m.occurred_at_unix_ms, type=m.type, source=m.source,
        request_id=m.request_id, client_id=m.client_id, detail_json=m.detail_json,
        stored_at_unix_ms=m.stored_at_unix_ms, seq=m.seq, actor_kind=m.actor_kind, actor_id=m.actor_id)


def page_to_pb(page: AuditPage) -> pb.AuditRecords:
    return pb.AuditRecords(records=[record_to_pb(r) for r in page.records], truncated=page.truncated)


def page_from_pb(m: pb.AuditRecords) -> AuditPage:
    return AuditPage([record_from_pb(r) for r in m.records], m.truncated)


def tail_to_pb(limit: int, after_seq: int | None) -> pb.TailRequest:
    request = pb.TailRequest(limit=limit)
    if after_seq is not None:
        request.after_seq = after_seq
    return request


def tail_from_pb(m: pb.TailRequest) -> tuple[int, int | None]:
    return m.limit, (m.after_seq if m.HasField("after_seq") else None)


def query_to_pb(q: SearchQuery) -> pb.SearchRequest:
    return pb.SearchRequest(client_id=q.client_id, since_unix_ms=q.since_unix_ms, until_unix_ms=q.until_unix_ms,
                            type=q.type, limit=q.limit, actor=q.actor)


def query_from_pb(m: pb.SearchRequest) -> SearchQuery:
    return SearchQuery(client_id=m.client_id, since_unix_ms=m.since_unix_ms, until_unix_ms=m.until_unix_ms,
                       type=m.type, limit=m.limit, actor=m.actor)

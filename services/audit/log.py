"""The audit log over Postgres: turning an Event into a row, storing rows, queries.

`decode` turns one JetStream message body into an AuditRecord (pure: no I/O).
`AuditLog.store` inserts a batch in one statement with ON CONFLICT (event_id)
DO NOTHING, so a redelivered event is stored once; the table's trigger refuses
UPDATE, DELETE and TRUNCATE.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import asyncpg
from google.protobuf.message import DecodeError

from inbound.events.v1 import events_pb2
from services.audit.api import (
    DEFAULT_SEARCH_LIMIT,
    DEFAULT_TAIL_LIMIT,
    UNKNOWN_TYPE,
    AuditPage,
    AuditRecord,
    InvalidArgument,
    SearchQuery,
    check_limit,
    check_query,
)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant Python's datetime holds
_TEXT_LIMIT = 1024  # source / request_id / client_id beyond this are cut (they are ids, not prose)


class Undecodable(ValueError):
    """The message body is not an Event."""


def _text(value: str) -> str:
    # Postgres text cannot hold NUL; ids this long are junk anyway.
    return value.replace("\x00", "\ufffd")[:_TEXT_LIMIT]


def _scrub(value):
    """NUL out of every string in a JSON-able value (jsonb refuses \\u0000)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def decode(data: bytes, *, fallback_id: str, fallback_time_ms: int) -> AuditRecord:
    """One Event (protobuf bytes) as an audit record.

    An event without an id gets `fallback_id` (derived from the JetStream
    message, stable across redeliveries); one without a usable time gets
    `fallback_time_ms` (when JetStream stored it). A payload this build does
    not know is kept whole, base64, under type "unknown".
    """
    event = events_pb2.Event()
    try:
        event.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise Undecodable(str(exc) or "not an Event") from None
    return record_from_event(event, fallback_id=fallback_id, fallback_time_ms=fallback_time_ms, raw=data)


def decode_batch(data: bytes, *, fallback_id: str, fallback_time_ms: int) -> list[AuditRecord]:
    """The events of one EventBatch message (see libs/inboundlib/events.py)."""
    batch = events_pb2.EventBatch()
    try:
        batch.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise Undecodable(str(exc) or "not an EventBatch") from None
    return [record_from_event(event, fallback_id=f"{fallback_id}#{i}", fallback_time_ms=fallback_time_ms)
            for i, event in enumerate(batch.events)]


def _as_dict(message) -> dict:
    """A payload as JSON-able data with proto field names, every field present and
    int64s as numbers: what json_format.MessageToJson(preserving_proto_field_name,
    always_print_fields_with_no_presence, unquote_int64_if_possible) gives, at a
    fraction of its cost (the audit service converts every event)."""
    result = {}
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None and not _is_repeated(field) and not message.HasField(field.name):
            continue  # an unset sub-message (or oneof member) is absent, as in MessageToJson
        value = getattr(message, field.name)
        if field.message_type is not None:
            value = [_as_dict(v) for v in value] if _is_repeated(field) else _as_dict(value)
        elif field.enum_type is not None:
            name = lambda n: field.enum_type.values_by_number[n].name if n in field.enum_type.values_by_number else n
            value = [name(v) for v in value] if _is_repeated(field) else name(value)
        elif field.type == field.TYPE_BYTES:
            value = ([base64.b64encode(v).decode() for v in value] if _is_repeated(field)
                     else base64.b64encode(value).decode())
        elif _is_repeated(field):
            value = list(value)
        result[field.name] = value
    return result


def _is_repeated(field) -> bool:
    return field.is_repeated


def record_from_event(event: events_pb2.Event, *, fallback_id: str, fallback_time_ms: int,
                      raw: bytes | None = None) -> AuditRecord:
    kind = event.WhichOneof("payload")
    if kind is None:
        data = event.SerializeToString() if raw is None else raw
        detail = {"raw_event_base64": base64.b64encode(data).decode()} if data else {}
        kind = UNKNOWN_TYPE
    else:
        detail = _as_dict(getattr(event, kind))
    client_id = detail.get("client_id", "") if kind != UNKNOWN_TYPE else ""
    if kind == "registry_changed" and detail.get("entity") == "client":
        client_id = detail.get("id", "")  # a change to a client is about that client
    occurred = event.occurred_at_unix_ms
    if not 0 < occurred <= _MAX_MS:
        occurred = fallback_time_ms
    return AuditRecord(
        event_id=_text(event.event_id or fallback_id), occurred_at_unix_ms=occurred, type=kind,
        source=_text(event.source), request_id=_text(event.request_id),
        client_id=_text(client_id if isinstance(client_id, str) else ""),
        detail_json=json.dumps(_scrub(detail), ensure_ascii=False, separators=(",", ":")),
        actor_kind=_text(event.actor.kind)[:32], actor_id=_text(event.actor.id),
    )


def ms_to_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)  # exact: no float rounding


_COLUMNS = ("event_id, (extract(epoch FROM occurred_at) * 1000)::bigint AS occurred_ms, type, source, request_id,"
            " client_id, detail::text AS detail, (extract(epoch FROM stored_at) * 1000)::bigint AS stored_ms, seq,"
            " actor_kind, actor_id")

_INSERT = """
INSERT INTO audit_log (event_id, occurred_at, type, source, request_id, client_id, detail, actor_kind, actor_id)
SELECT e, o, t, s, r, c, d::jsonb, ak, ai
  FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
              $8::text[], $9::text[])
       AS x(e, o, t, s, r, c, d, ak, ai)
ON CONFLICT (event_id) DO NOTHING
"""


def _record(row: asyncpg.Record) -> AuditRecord:
    return AuditRecord(
        event_id=row["event_id"], occurred_at_unix_ms=row["occurred_ms"], type=row["type"], source=row["source"],
        request_id=row["request_id"], client_id=row["client_id"], detail_json=row["detail"],
        stored_at_unix_ms=row["stored_ms"], seq=row["seq"], actor_kind=row["actor_kind"], actor_id=row["actor_id"])


class AuditLog:
    """The audit table: batched idempotent inserts and the read queries (implements AuditLogApi)."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def store(self, records: list[AuditRecord]) -> int:
        """Insert in one round trip; returns how many were new (the rest were stored before)."""
        if not records:
            return 0
        columns = (
            [r.event_id for r in records], [ms_to_datetime(r.occurred_at_unix_ms) for r in records],
            [r.type for r in records], [r.source for r in records], [r.request_id for r in records],
            [r.client_id for r in records], [r.detail_json for r in records],
            [r.actor_kind for r in records], [r.actor_id for r in records],
        )
        status = await self.pool.execute(_INSERT, *columns)
        return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"

    async def tail(self, limit: int = 0, after_seq: int | None = None) -> AuditPage:
        limit = check_limit(limit, DEFAULT_TAIL_LIMIT)
        if after_seq is None:
            rows = await self.pool.fetch(
                f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT $1", limit + 1)
            more = len(rows) > limit
            return AuditPage([_record(r) for r in reversed(rows[:limit])], more)
        if after_seq < 0:
            raise InvalidArgument("after_seq must not be negative")
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2", after_seq, limit + 1)
        return AuditPage([_record(r) for r in rows[:limit]], len(rows) > limit)

    async def search(self, query: SearchQuery) -> AuditPage:
        query = check_query(query)
        limit = check_limit(query.limit, DEFAULT_SEARCH_LIMIT)
        where, args = [], []
        if query.client_id:
            args.append(query.client_id)
            where.append(f"client_id = ${len(args)}")
        if query.type:
            args.append(query.type)
            where.append(f"type = ${len(args)}")
        if query.actor:
            kind, sep, actor_id = query.actor.partition(":")
            args.append(kind)
            where.append(f"actor_kind = ${len(args)}")
            if sep:
                args.append(actor_id)
                where.append(f"actor_id = ${len(args)}")
        if query.since_unix_ms:
            args.append(ms_to_datetime(min(query.since_unix_ms, _MAX_MS)))
            where.append(f"occurred_at >= ${len(args)}")
        if query.until_unix_ms:
            args.append(ms_to_datetime(min(query.until_unix_ms, _MAX_MS)))
            where.append(f"occurred_at < ${len(args)}")
        args.append(limit + 1)
        sql = (f"SELECT {_COLUMNS} FROM audit_log {'WHERE ' + ' AND '.join(where) if where else ''}"
               f" ORDER BY occurred_at DESC, seq DESC LIMIT ${len(args)}")
        rows = await self.pool.fetch(sql, *args)
        return AuditPage([_record(r) for r in reversed(rows[:limit])], len(rows) > limit)

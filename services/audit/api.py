"""The audit log's interface as plain Python: the record, the queries, the calls.

`AuditLog` (log.py) implements it over Postgres; `AuditClient` (client.py)
over gRPC. Callers (inboundctl, tests) depend only on this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from inbound.events.v1 import events_pb2

DEFAULT_TAIL_LIMIT = 20
DEFAULT_SEARCH_LIMIT = 100
MAX_LIMIT = 1000

# Every payload type an Event can carry (its field name in the oneof), types
# older builds stored (client_changed, now registry_changed), and "unknown" for
# a payload newer than this build.
UNKNOWN_TYPE = "unknown"
RETIRED_TYPES = ("client_changed",)
EVENT_TYPES: tuple[str, ...] = tuple(
    f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields) + RETIRED_TYPES + (UNKNOWN_TYPE,)
ACTOR_KINDS = ("service", "operator", "client", "user", "resource_server")


class InvalidArgument(Exception):
    """A query breaks a rule; the message says which."""


@dataclass(frozen=True)
class AuditRecord:
    event_id: str
    occurred_at_unix_ms: int
    type: str
    source: str
    request_id: str
    client_id: str
    detail_json: str
    stored_at_unix_ms: int = 0  # set by the log when stored
    seq: int = 0  # storage order, set by the log
    actor_kind: str = ""  # who caused it: service | operator | client | user ("" in rows from before actors)
    actor_id: str = ""


@dataclass(frozen=True)
class SearchQuery:
    """Every filter that is set applies; times are Unix milliseconds, since inclusive, until exclusive."""
    client_id: str = ""
    since_unix_ms: int = 0
    until_unix_ms: int = 0
    type: str = ""
    limit: int = 0  # 0: DEFAULT_SEARCH_LIMIT
    actor: str = ""  # "kind:id", or just "kind"


@dataclass(frozen=True)
class AuditPage:
    records: list[AuditRecord]  # oldest first
    truncated: bool = False  # more matched than the limit


class AuditLogApi(Protocol):
    async def tail(self, limit: int = 0, after_seq: int | None = None) -> AuditPage:
        """The newest `limit` records; or, given after_seq, those stored after it (oldest first)."""

    async def search(self, query: SearchQuery) -> AuditPage:
        """The newest `query.limit` records matching the query, returned oldest first."""


def check_limit(limit: int, default: int) -> int:
    if limit < 0 or limit > MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}")
    return limit or default


def check_query(query: SearchQuery) -> SearchQuery:
    if query.since_unix_ms < 0 or query.until_unix_ms < 0:
        raise InvalidArgument("times must not be negative")
    if query.since_unix_ms and query.until_unix_ms and query.since_unix_ms >= query.until_unix_ms:
        raise InvalidArgument("since must be before until")
    if query.type and query.type not in EVENT_TYPES:
        raise InvalidArgument(f"unknown event type {query.type!r}; known: {', '.join(EVENT_TYPES)}")
    if len(query.client_id) > 256:
        raise InvalidArgument("client_id is too long")
    if query.actor:
        kind, _, actor_id = query.actor.partition(":")
        if kind not in ACTOR_KINDS or len(actor_id) > 256:
            raise InvalidArgument(f"actor must be KIND or KIND:ID with KIND one of {', '.join(ACTOR_KINDS)}")
    return query

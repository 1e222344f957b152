"""Revocations over Postgres: batched writes without a global lock, and a read
cursor that never skips a revocation still being committed.

Writers: one statement per batch (callers coalesce concurrent revocations),
upserting by (kind, value); re-revoking widens an entry (later cut-off, later
expiry). Each row carries the id of the transaction that last wrote it
(`txid`, from pg_current_xact_id()).

Readers (every token_issuer replica's resync) page by (txid, id) and move their
cursor only past transactions the snapshot proves finished: every transaction
with an id below the snapshot's xmin has committed or aborted, so no row with
such a txid can appear later. Rows of newer transactions that are already
visible are returned (and applied) but read again next time; a transaction
still in flight is read once it commits. This is the transactional-outbox
technique: ids (a sequence) are handed out in one order and become visible in
another, so "everything up to the highest id seen" loses revocations unless
every writer is serialised, which is what the lock it replaces did.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg

from inboundlib import actors
from inboundlib.events import TOKEN_REVOKED, EventBus
from services.client_registry.api import (
    CUT_OFF_KINDS,
    MAX_ID_LENGTH,
    REVOCATION_KINDS,
    REVOKE_GRANT,
    REVOKE_SUBJECT,
    ItemError,
    RevocationCursor,
    RevocationPage,
    RevocationRecord,
    has_control_characters,
    is_plausible_id,
)
from services.client_registry.pg import batch_then_items, from_ms, from_ts, ms, plausible_time, ts
from services.client_registry.wire import revocation_event

MAX_PAGE = 10_000

# A grant revocation also marks the grant's refresh tokens revoked, in the same statement
# (so atomically, with or without the caller's transaction): the revocation row expires
# and is purged, the mark stays, so no refresh token comes back to life (RFC 7009 §2.1:
# revoking a refresh token ends its grant).
_UPSERT = """
WITH stored AS (
    INSERT INTO revocations (kind, value, client_id, revoked_before, expires_at, revoked_by)
    SELECT k, v, c, rb, e, b
      FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[])
           AS x(k, v, c, rb, e, b)
    ON CONFLICT (kind, value) DO UPDATE SET
        revoked_before = GREATEST(revocations.revoked_before, EXCLUDED.revoked_before),
        expires_at = GREATEST(revocations.expires_at, EXCLUDED.expires_at),
        txid = pg_current_xact_id()::text::bigint
    RETURNING id, kind, value, client_id
), family AS (
    UPDATE opaque_tokens t SET revoked_at = now()
      FROM stored s
     WHERE s.kind = 'grant' AND t.grant_id = s.value AND t.grant_id <> '' AND t.client_id = s.client_id
       AND t.kind = 'refresh' AND t.revoked_at IS NULL
)
SELECT id, kind, value FROM stored
"""
# The UPDATE above sees the family as of its statement's start. A rotation in flight holds
# its token's row lock, so that UPDATE waits for it, and the successor it then commits was
# not in the UPDATE's snapshot. Each later statement takes a new snapshot: marking again
# until nothing is left catches every such successor (one committed after this statement
# began had locked a row already marked here, so it waited, saw the mark, and was refused).
# Without it the successor outlives the grant revocation row, which expires and is purged.
_MARK_FAMILIES = """
UPDATE opaque_tokens t SET revoked_at = now()
  FROM unnest($1::text[], $2::text[]) AS g(grant_id, client_id)
 WHERE t.grant_id = g.grant_id AND t.grant_id <> '' AND t.client_id = g.client_id
   AND t.kind = 'refresh' AND t.revoked_at IS NULL
"""
# Each pass that marks something means a rotation committed meanwhile; they do not go on for long.
MAX_MARK_PASSES = 100

_COLUMNS = "id, txid, kind, value, client_id, revoked_before, expires_at, revoked_by"


def check_revocation(r: RevocationRecord) -> str | None:
    """Why a revocation cannot be stored, or None."""
    if r.kind not in REVOCATION_KINDS:
        return f"unknown revocation kind {r.kind!r}"
    if not is_plausible_id(r.value):
        return "the revoked value is empty, too long or has control characters"
    if r.kind != REVOKE_SUBJECT and not is_plausible_id(r.client_id):
        return "the client id is empty, too long or has control characters"
    if r.kind == REVOKE_SUBJECT and r.client_id and not is_plausible_id(r.client_id):
        return "the client id is too long or has control characters"
    if len(r.revoked_by) > MAX_ID_LENGTH or has_control_characters(r.revoked_by):
        return "revoked_by is too long or has control characters"
    if not plausible_time(r.expires_at) or not plausible_time(r.revoked_before_ms // 1000):
        return "a time is out of range"
    if r.kind in CUT_OFF_KINDS and r.revoked_before_ms <= 0:
        return f"a {r.kind} revocation needs a cut-off time"
    return None


def _record(row: asyncpg.Record) -> RevocationRecord:
    return RevocationRecord(id=row["id"], kind=row["kind"], value=row["value"], client_id=row["client_id"],
                            revoked_before_ms=ms(row["revoked_before"]), expires_at=ts(row["expires_at"]),
                            revoked_by=row["revoked_by"])


async def insert_revocations(conn: asyncpg.Connection | asyncpg.Pool,
                             records: list[RevocationRecord]) -> list[int]:
    """Upsert valid records in one statement (inside the caller's transaction, if any);
    returns each record's row id, in order."""
    merged: dict[tuple[str, str], RevocationRecord] = {}
    for r in records:  # one row per (kind, value): an upsert cannot touch a row twice
        seen = merged.get((r.kind, r.value))
        merged[(r.kind, r.value)] = r if seen is None else RevocationRecord(
            kind=r.kind, value=r.value, client_id=seen.client_id, revoked_by=seen.revoked_by,
            revoked_before_ms=max(seen.revoked_before_ms, r.revoked_before_ms),
            expires_at=max(seen.expires_at, r.expires_at))
    rows = list(merged.values())
    stored = await conn.fetch(
        _UPSERT, [r.kind for r in rows], [r.value for r in rows], [r.client_id for r in rows],
        [from_ms(r.revoked_before_ms) if r.revoked_before_ms else None for r in rows],
        [from_ts(r.expires_at) for r in rows], [r.revoked_by for r in rows])
    grants = [r for r in rows if r.kind == REVOKE_GRANT]
    for _ in range(MAX_MARK_PASSES if grants else 0):
        status = await conn.execute(_MARK_FAMILIES, [r.value for r in grants], [r.client_id for r in grants])
        if status.endswith(" 0"):
            break
    ids = {(row["kind"], row["value"]): row["id"] for row in stored}
    return [ids[(r.kind, r.value)] for r in records]


async def record_cut_off(conn: asyncpg.Connection, cut_off: Callable[[str, int, str], RevocationRecord],
                         value: str, reason: str) -> RevocationRecord:
    """A client's or a subject's cut-off (api.client_cut_off, api.subject_cut_off) made now,
    stored in the caller's transaction: what disabling or deleting a client, or changing a
    user's password, status or existence records. Now is this process's clock, in ms (see
    api.client_cut_off for why not the database's); the revoker is the call's actor."""
    who = actors.current()
    record = cut_off(value, int(time.time() * 1000), f"{who}: {reason}" if who is not None else f"operator: {reason}")
    [row_id] = await insert_revocations(conn, [record])
    return RevocationRecord(**{**record.__dict__, "id": row_id})


def publish_cut_off(events: EventBus | None, cut_off: RevocationRecord | None) -> None:
    """After the commit: every token_issuer replica applies it (token.revoked)."""
    if cut_off is not None and events is not None:
        events.publish(TOKEN_REVOKED, revocation_event(cut_off))


class RevocationRepository:
    """Implements api.RevocationStore over Postgres."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def add_revocations(self, revocations: list[RevocationRecord]) -> list[int | ItemError]:
        return await batch_then_items(revocations, lambda batch: insert_revocations(self.pool, batch), "revocation",
                                      check_revocation)

    async def list_revocations(self, after: RevocationCursor = RevocationCursor(),
                               limit: int = MAX_PAGE) -> RevocationPage:
        limit = max(1, min(limit, MAX_PAGE))
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # One snapshot for both statements: xmin says which transactions are finished
            # as far as the rows read below are concerned.
            xmin = await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM revocations WHERE (txid, id) > ($1, $2) AND expires_at > now()"
                " ORDER BY txid, id LIMIT $3", after.txid, after.id, limit)
        safe, scan, more = next_cursor(after, rows, xmin, limit)
        return RevocationPage([_record(r) for r in rows], safe, more, scan)


def next_cursor(after: RevocationCursor, rows: list, xmin: int,
                limit: int) -> tuple[RevocationCursor, RevocationCursor, bool]:
    """(safe, scan, more). `safe` is past every row of a finished transaction (txid <
    xmin), never past one that may still commit. `scan` is past the last row read: a
    transaction open anywhere on the cluster holds xmin back, and with it `safe`, for as
    long as it lasts, so a reader goes on from `scan` while pages are full (`more`) and
    starts its next read from `safe`. Rows come ordered by (txid, id), so the finished
    ones are a prefix."""
    scan = RevocationCursor(rows[-1]["txid"], rows[-1]["id"]) if rows else after
    if len(rows) < limit:
        # Everything visible after `after` was read: what comes later has txid >= xmin.
        return max(after, RevocationCursor(xmin, 0), key=lambda c: (c.txid, c.id)), scan, False
    finished = [r for r in rows if r["txid"] < xmin]
    safe = RevocationCursor(finished[-1]["txid"], finished[-1]["id"]) if finished else after
    return safe, scan, True


# A grant revocation marks its family at its insert (_UPSERT), but a refresh token of the
# grant stored AFTER that (an exchange whose code a second use revoked, or whose consent was
# withdrawn, while its tokens were being issued) is refused only by the revocation row, as
# long as the row lives: the row's deletion marks such stragglers first, in the same
# statement, so none comes back to life once the row is gone.
_PURGE = """
WITH gone AS (
    DELETE FROM revocations WHERE expires_at < now() - interval '1 day' RETURNING kind, value, client_id
), family AS (
    UPDATE opaque_tokens t SET revoked_at = now()
      FROM gone g
     WHERE g.kind = 'grant' AND t.grant_id = g.value AND t.grant_id <> '' AND t.client_id = g.client_id
       AND t.kind = 'refresh' AND t.revoked_at IS NULL
)
SELECT count(*) FROM gone
"""


async def purge_expired(pool: asyncpg.Pool) -> int:
    """Revocations whose tokens have been expired for a day (kept that long for investigations);
    a purged grant revocation's refresh tokens stay revoked (see _PURGE)."""
    return await pool.fetchval(_PURGE)

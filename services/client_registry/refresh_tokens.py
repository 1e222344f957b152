"""Refresh-token rotation over Postgres (RFC 6749 §6, RFC 9700 §4.14.2): implements
api.RefreshTokenStore.

A refresh token is a row of kind 'refresh' in opaque_tokens; every token of one
grant id is a family. Rotating one is one transaction: the presented row is
locked (SELECT ... FOR UPDATE), so of two concurrent rotations of one token
exactly one consumes it and stores the successor; the other then sees it
consumed. Answers, checked in this order:

- unknown: no such row, or not a refresh token;
- other_client: another client's token (its family is left alone: another client
  cannot end a user's grant by presenting its token);
- revoked: its family was revoked (revoked_at), or a grant or jti revocation names
  it, or a client or subject cut-off was made at or after its issue (ms);
- expired: its own expiry, or its family's end;
- client_inactive, user_inactive: its client is disabled (a deleted client's tokens
  are gone with it), or its user is disabled or deleted; a client's own family
  (subject = client id, no username) has no user;
- consumed, within the grace window of its rotation (the same client: checked
  above): Replay, with the first rotation's encrypted response once stored;
- consumed otherwise: reused. In the same transaction every refresh row of the
  family is marked revoked and a grant revocation stored (for the family's access
  tokens); after commit both TOKEN_REVOKED and REFRESH_TOKEN_REUSED are published;
- else: consumed now, the successor stored -> Rotated.

The client and user rows are read FOR SHARE, before the revocations: disabling
either (an UPDATE, which records its cut-off in that transaction) waits for a
rotation in flight, whose successor is then stamped before the cut-off; a rotation
waits for a disable in flight and then sees it and its cut-off. Either way no
successor slips past a cut-off. (A client cut-off from token_issuer's revoke-tokens
touches no client row: only a rotation within the same milliseconds could slip past it.)

Times are this process's clock in ms, the clock the registry's cut-offs use
(api.client_cut_off); `clock` is injectable for tests.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import asyncpg

from inbound.events.v1 import events_pb2
from inboundlib import actors
from inboundlib.events import REFRESH_TOKEN_REUSED, TOKEN_REVOKED, EventBus, actor_to_pb
from services.client_registry.api import (
    GRANT_REVOCATION_LIFETIME,
    ITEM_INVALID,
    ITEM_NOT_FOUND,
    REFUSED_CLIENT_INACTIVE,
    REFUSED_EXPIRED,
    REFUSED_OTHER_CLIENT,
    REFUSED_REUSED,
    REFUSED_REVOKED,
    REFUSED_UNKNOWN,
    REFUSED_USER_INACTIVE,
    REVOKE_GRANT,
    ItemError,
    OpaqueTokenRecord,
    Refused,
    Replay,
    RevocationRecord,
    Rotated,
    Rotation,
    RotationOutcome,
    is_plausible_id,
)
from services.client_registry.pg import from_ms, in_transaction_retrying_deadlocks, items_side_by_side, ms
from services.client_registry.revocations import insert_revocations
from services.client_registry.tokens import COLUMNS, HASH_BYTES, columns, token_record
from services.client_registry.wire import revocation_event

log = logging.getLogger(__name__)

# A grace window longer than this is no retry any more (the grant's setting is a few seconds).
MAX_GRACE_SECONDS = 300
# An encrypted response holds an access token, a refresh token, an expiry and a scope.
MAX_RESPONSE_BYTES = 16 * 1024
REUSE_REVOKED_BY = "service:client_registry: refresh token reused"

# The presented token, locked; its client with it, shared-locked (see the module docstring).
# A token whose client is gone is gone too (ON DELETE CASCADE).
_LOCK_TOKEN = (f"SELECT {columns('t')}, t.replay_until, t.rotation_response, c.active AS client_active,"
               " c.refresh_token_lifetime FROM opaque_tokens t JOIN clients c ON c.client_id = t.client_id"
               " WHERE t.token_hash = $1 FOR UPDATE OF t FOR SHARE OF c")
# A revocation that names this token: its jti, its grant, or a cut-off of its client or
# subject at or after its issue (a cut-off revokes what was issued up to it, to the ms).
# Read after the locks are held: a disable committed meanwhile has its cut-off visible.
_REVOKED = """
SELECT EXISTS (SELECT 1 FROM revocations WHERE
       (kind = 'jti' AND value = $1)
    OR (kind = 'grant' AND value = $2)
    OR (kind = 'client' AND value = $3 AND revoked_before >= $5)
    OR (kind = 'subject' AND value = $4 AND revoked_before >= $5))
"""
# Consume the presented token and store its successor, in one statement.
_ROTATE = f"""
WITH consumed AS (
    UPDATE opaque_tokens SET consumed_at = $12, replay_until = $13 WHERE token_hash = $1
)
INSERT INTO opaque_tokens (token_hash, jti, client_id, subject, username, scopes, audience, issued_at,
                           expires_at, kind, grant_id, family_expires_at)
VALUES ($2, $3, $4, $5, $6, $7, $8, $12, $9, 'refresh', $10, $11)
RETURNING {COLUMNS}
"""
_STORE_RESPONSES = """
UPDATE opaque_tokens t SET rotation_response = x.response
  FROM unnest($1::bytea[], $2::bytea[]) AS x(token_hash, response)
 WHERE t.token_hash = x.token_hash AND t.kind = 'refresh' AND t.consumed_at IS NOT NULL
   AND t.revoked_at IS NULL AND t.replay_until >= $3
   AND (t.rotation_response IS NULL OR t.rotation_response = x.response)
RETURNING t.token_hash
"""


def check_rotation(r: Rotation) -> str | None:
    """Why a rotation request is malformed, or None."""
    if len(r.token_hash) != HASH_BYTES or len(r.new_token_hash) != HASH_BYTES:
        return "a token hash is not a SHA-256"
    if r.token_hash == r.new_token_hash:
        return "the successor is the presented token"
    if not is_plausible_id(r.client_id) or not is_plausible_id(r.new_jti):
        return "client id or jti is empty, too long or has control characters"
    if not 0 <= r.grace_seconds <= MAX_GRACE_SECONDS:
        return f"the grace window must be 0 to {MAX_GRACE_SECONDS} seconds"
    return None


def _expired(token: OpaqueTokenRecord, now_ms: int) -> bool:
    return token.expires_at * 1000 <= now_ms or bool(token.family_expires_at and token.family_expires_at * 1000 <= now_ms)


def _owns_itself(token: OpaqueTokenRecord) -> bool:
    """A client's own family (subject = client id, no username): no user stands behind it."""
    return token.subject == token.client_id and not token.username


class _Reused:
    """What a reuse must publish once its transaction has committed."""

    def __init__(self, token: OpaqueTokenRecord, revocation: RevocationRecord):
        self.token = token
        self.revocation = revocation


class RefreshTokenRepository:
    """Implements api.RefreshTokenStore over Postgres."""

    def __init__(self, pool: asyncpg.Pool, events: EventBus | None, clock: Callable[[], float] = time.time):
        self.pool = pool
        self.events = events
        self.clock = clock

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- rotation ---------------------------------------------------------------------------------

    async def rotate_refresh_tokens(self, rotations: list[Rotation]) -> list[RotationOutcome]:
        """One transaction per item, run side by side (each on its own connection): one
        item's trouble never fails another, and one token's rotations serialise on its row.
        The database being away fails the call (UNAVAILABLE), not an item."""
        return await items_side_by_side(rotations, self._rotate_one, "refresh token rotation",
                                        "the rotation could not be stored")

    async def _rotate_one(self, r: Rotation) -> RotationOutcome:
        problem = check_rotation(r)
        if problem:
            return ItemError(ITEM_INVALID, problem)
        # Two reuses of one family at once lock its rows in opposite orders; Postgres ends one,
        # and its retry finds the family revoked.
        outcome = await in_transaction_retrying_deadlocks(self.pool, lambda conn: self._rotate_in(conn, r))
        if isinstance(outcome, _Reused):
            self._publish_reuse(outcome)
            return Refused(REFUSED_REUSED, grant_id=outcome.token.grant_id, revocation=outcome.revocation)
        return outcome

    async def _rotate_in(self, conn: asyncpg.Connection, r: Rotation) -> RotationOutcome | _Reused:
        row = await conn.fetchrow(_LOCK_TOKEN, r.token_hash)
        if row is None or row["kind"] != "refresh" or not row["grant_id"]:
            return Refused(REFUSED_UNKNOWN)
        token = token_record(row)
        if token.client_id != r.client_id:
            return Refused(REFUSED_OTHER_CLIENT)
        # The user's row is locked before revocations are read, as the client's was.
        user_active = True if _owns_itself(token) else await conn.fetchval(
            "SELECT active FROM users WHERE id = $1 FOR SHARE", token.subject)
        if token.revoked or await conn.fetchval(_REVOKED, token.jti, token.grant_id, token.client_id, token.subject,
                                                from_ms(token.issued_at_precise_ms)):
            return Refused(REFUSED_REVOKED, grant_id=token.grant_id)
        # Read after the locks: a successor is stamped later than any cut-off they waited for.
        now_ms = self._now_ms()
        if _expired(token, now_ms):
            return Refused(REFUSED_EXPIRED, grant_id=token.grant_id)
        if not row["client_active"]:
            return Refused(REFUSED_CLIENT_INACTIVE, grant_id=token.grant_id)
        if not user_active:
            return Refused(REFUSED_USER_INACTIVE, grant_id=token.grant_id)
        if token.consumed:
            if now_ms <= ms(row["replay_until"]):
                return Replay(encrypted_response=bytes(row["rotation_response"] or b""), consumed=token,
                              replay_until_ms=ms(row["replay_until"]))
            return await self._revoke_family(conn, token, now_ms)
        expires_at = now_ms // 1000 + row["refresh_token_lifetime"]
        if token.family_expires_at:
            expires_at = min(expires_at, token.family_expires_at)
        successor = await conn.fetchrow(
            _ROTATE, r.token_hash, r.new_token_hash, r.new_jti, token.client_id, token.subject, token.username,
            list(token.scopes), list(token.audience), from_ms(expires_at * 1000), token.grant_id,
            from_ms(token.family_expires_at * 1000) if token.family_expires_at else None, from_ms(now_ms),
            from_ms(now_ms + r.grace_seconds * 1000))
        consumed = OpaqueTokenRecord(**{**token.__dict__, "consumed": True})
        return Rotated(consumed=consumed, successor=token_record(successor))

    async def _revoke_family(self, conn: asyncpg.Connection, token: OpaqueTokenRecord, now_ms: int) -> _Reused:
        """RFC 9700 §4.14.2: a consumed token presented again means one of two holders is
        an attacker, and the registry cannot tell which: the whole grant ends. The grant
        revocation marks every refresh row of the family revoked in the same statement
        (revocations.insert_revocations), and lasts as long as any of its access tokens
        (api.GRANT_REVOCATION_LIFETIME)."""
        revocation = RevocationRecord(kind=REVOKE_GRANT, value=token.grant_id, client_id=token.client_id,
                                      expires_at=now_ms // 1000 + GRANT_REVOCATION_LIFETIME,
                                      revoked_by=REUSE_REVOKED_BY)
        [row_id] = await insert_revocations(conn, [revocation])
        log.warning("refresh token reused: its family is revoked",
                    extra={"client_id": token.client_id, "grant_id": token.grant_id, "jti": token.jti})
        return _Reused(token, RevocationRecord(**{**revocation.__dict__, "id": row_id}))

    def _publish_reuse(self, reused: _Reused) -> None:
        if self.events is None:
            return
        # The revocation first: it is what every token_issuer replica applies.
        self.events.publish(TOKEN_REVOKED, revocation_event(reused.revocation))
        t = reused.token
        self.events.publish(REFRESH_TOKEN_REUSED, events_pb2.Event(
            actor=actor_to_pb(actors.actor(actors.CLIENT, t.client_id)),
            refresh_token_reused=events_pb2.RefreshTokenReused(client_id=t.client_id, subject=t.subject,
                                                               grant_id=t.grant_id, jti=t.jti)))

    # --- replay answers ---------------------------------------------------------------------------

    async def store_rotation_responses(self, responses: list[tuple[bytes, bytes]]) -> list[ItemError | None]:
        """Kept on the consumed row for replays inside its grace window; refused (not_found)
        once the window has passed, the family is revoked, or another response is stored."""
        results: list[ItemError | None] = [None] * len(responses)
        valid: list[int] = []
        for i, (token_hash, response) in enumerate(responses):
            if len(token_hash) != HASH_BYTES:
                results[i] = ItemError(ITEM_INVALID, "the token hash is not a SHA-256")
            elif not 0 < len(response) <= MAX_RESPONSE_BYTES:
                results[i] = ItemError(ITEM_INVALID, f"a response must be 1 to {MAX_RESPONSE_BYTES} bytes")
            else:
                valid.append(i)
        if valid:
            rows = await self.pool.fetch(_STORE_RESPONSES, [responses[i][0] for i in valid],
                                         [responses[i][1] for i in valid], from_ms(self._now_ms()))
            stored = {bytes(r["token_hash"]) for r in rows}
            for i in valid:
                if responses[i][0] not in stored:
                    results[i] = ItemError(ITEM_NOT_FOUND, "no rotation of that token is waiting for its response")
        return results

    async def clear_rotation_responses(self) -> int:
        """Responses whose grace window has passed: each holds a live access and refresh
        token (encrypted), and nothing may read it any more."""
        status = await self.pool.execute(
            "UPDATE opaque_tokens SET rotation_response = NULL WHERE rotation_response IS NOT NULL"
            " AND replay_until < $1", from_ms(self._now_ms()))
        return int(status.split()[-1])


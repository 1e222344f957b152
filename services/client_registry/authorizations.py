"""The authorization endpoint's state over Postgres (RFC 6749 §4.1): implements
api.AuthorizationStore, for the authorization_code service alone.

- Browser sessions, by SHA-256 of the cookie's random value. A session is gone (get
  answers None) once ended, expired, or when its user is disabled or deleted, or any
  subject cut-off was recorded at or after its sign-in: changing the password,
  disabling, enabling and deleting a user each record one (users.py), so a session
  never outlives such a change, even one undone since. create refuses a sign-in
  (`verified_at_ms`) that such a cut-off already covers, the user's row held FOR SHARE
  so a change in flight either waits for the session or is seen by it.
- Pending authorization requests, by SHA-256 of their id: completed once (an UPDATE
  guarded by completed_at IS NULL: of two concurrent completions one wins).
- Consents per (user, client): granting merges scopes, and so does minting a code (its
  scopes) or recording an implicit grant, so every app holding a user's grant is listed
  on the account page, scopes that need no consent included; withdrawing deletes the consent
  and revokes every grant recorded under (user, client) in user_grants (codes' grant
  ids, implicit grants): a `grant` revocation each, stored with the refresh families
  marked revoked in the same transaction (revocations.insert_revocations) and published
  after the commit, so every token_issuer replica drops the tokens at once.
- Authorization codes, by SHA-256 (RFC 6749 §4.1.2: single use). Creating one records
  its grant id under (user, client) in the same transaction. Consuming is one
  transaction per code, the row locked (FOR UPDATE), so of concurrent uses exactly one
  consumes it: unconsumed, unexpired and of the presenting client -> the record;
  consumed before (by its own client) -> CodeReused, the code's grant revoked in the
  same transaction and published after it, as a refresh-token reuse is
  (refresh_tokens.py); unknown, expired or another client's -> CodeNotFound, the row
  untouched (another client cannot consume, nor end, a user's grant).

Times are this process's clock (the clock of the registry's cut-offs, api.client_cut_off);
`clock` is injectable for tests.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

import asyncpg

from inboundlib import actors
from inboundlib.events import TOKEN_REVOKED, EventBus
from inboundlib.oauth.scopes import MAX_SCOPES, is_valid_scope_token
from services.client_registry.api import (
    GRANT_REVOCATION_LIFETIME,
    ITEM_INVALID,
    MAX_ID_LENGTH,
    REVOKE_GRANT,
    AlreadyExists,
    AuthorizationCodeRecord,
    BrowserSession,
    CodeNotFound,
    CodeOutcome,
    CodeReused,
    CodeToConsume,
    ConsentRecord,
    InvalidArgument,
    ItemError,
    NotFound,
    PendingAuthorization,
    RevocationRecord,
    is_plausible_id,
)
from services.client_registry.pg import from_ms, from_ts, in_transaction_retrying_deadlocks, items_side_by_side, ts
from services.client_registry.revocations import insert_revocations
from services.client_registry.wire import revocation_event

log = logging.getLogger(__name__)

HASH_BYTES = 32  # SHA-256
# Longest lifetimes the registry accepts (the service's settings are shorter: 28800 s
# sessions, 600 s requests, 60 s codes).
MAX_SESSION_LIFETIME = 30 * 24 * 3600
MAX_REQUEST_LIFETIME = 3600
MAX_CODE_LIFETIME = 600
MAX_REQUEST_JSON = 32 * 1024
MAX_REDIRECT_URI = 2000
MAX_NONCE = 512
MAX_CODE_CHALLENGE = 128  # RFC 7636 §4.2: 43 characters for S256
MAX_USER_AGENT = 512
MAX_ADDRESS = 100
# A sign-in stamped later than the registry's clock by more than this is not believed.
CLOCK_SKEW_MS = 5_000
CODE_REUSE_REVOKED_BY = "service:client_registry: authorization code reused"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# How long the purge keeps what it must (see purge_expired).
UNCONSUMED_CODE_KEEP_SECONDS = 3600
CONSUMED_CODE_KEEP_SECONDS = GRANT_REVOCATION_LIFETIME
USER_GRANT_KEEP_SECONDS = GRANT_REVOCATION_LIFETIME + MAX_CODE_LIFETIME
# The purge deletes in statements of at most this many rows (each its own short transaction):
# pending requests are made by anyone who opens an authorization URL, so a backlog can be
# millions of rows, and one DELETE of them all would hold its locks and write its WAL at once.
PURGE_BATCH = 5_000
# At most this many batches per table and run; the rest waits for the next run.
PURGE_MAX_BATCHES = 100

_SESSION_COLUMNS = ("s.id_hash, s.sid, s.user_id, u.username, s.auth_time_ms, s.client_address, s.user_agent,"
                    " s.created_at, s.expires_at")
# A subject cut-off at or after the sign-in (compared to the ms, as the cut-offs are made).
_CUT_OFF_SINCE = ("EXISTS (SELECT 1 FROM revocations r WHERE r.kind = 'subject' AND r.value = {user}"
                  " AND floor(extract(epoch FROM r.revoked_before) * 1000)::bigint >= {since})")
_LIVE_SESSION = (f"SELECT {_SESSION_COLUMNS} FROM browser_sessions s JOIN users u ON u.id = s.user_id"
                 " WHERE s.id_hash = $1 AND s.ended_at IS NULL AND s.expires_at > $2 AND u.active"
                 f" AND NOT {_CUT_OFF_SINCE.format(user='s.user_id', since='s.auth_time_ms')}")
_CODE_COLUMNS = ("code_hash, client_id, redirect_uri, scopes, user_id, username, sid, auth_time_ms, nonce,"
                 " code_challenge, code_challenge_method, grant_id, created_at_ms, expires_at")
_CONSENT_COLUMNS = "user_id, client_id, scopes, granted_at, updated_at"
# Adds scopes to a user's consent for a client (made if none), the row locked until the commit.
_MERGE_CONSENT = ("INSERT INTO consents (user_id, client_id, scopes) VALUES ($1, $2, $3)"
                  " ON CONFLICT (user_id, client_id) DO UPDATE SET"
                  " scopes = ARRAY(SELECT DISTINCT s FROM unnest(consents.scopes || EXCLUDED.scopes) AS s ORDER BY s),"
                  " updated_at = now()")


def _session(row: asyncpg.Record) -> BrowserSession:
    return BrowserSession(id_hash=bytes(row["id_hash"]), sid=row["sid"], user_id=row["user_id"],
                          username=row["username"], auth_time_ms=row["auth_time_ms"],
                          created_at=ts(row["created_at"]), expires_at=ts(row["expires_at"]),
                          client_address=row["client_address"], user_agent=row["user_agent"])


def _pending(row: asyncpg.Record) -> PendingAuthorization:
    return PendingAuthorization(id_hash=bytes(row["id_hash"]), client_id=row["client_id"],
                                request_json=row["request_json"], created_at=ts(row["created_at"]),
                                expires_at=ts(row["expires_at"]))


def _consent(row: asyncpg.Record) -> ConsentRecord:
    return ConsentRecord(user_id=row["user_id"], client_id=row["client_id"], scopes=tuple(row["scopes"]),
                         granted_at=ts(row["granted_at"]), updated_at=ts(row["updated_at"]))


def _code(row: asyncpg.Record) -> AuthorizationCodeRecord:
    return AuthorizationCodeRecord(
        code_hash=bytes(row["code_hash"]), client_id=row["client_id"], redirect_uri=row["redirect_uri"],
        scopes=tuple(row["scopes"]), user_id=row["user_id"], username=row["username"], sid=row["sid"],
        auth_time_ms=row["auth_time_ms"], nonce=row["nonce"], code_challenge=row["code_challenge"],
        code_challenge_method=row["code_challenge_method"], grant_id=row["grant_id"],
        created_at_ms=row["created_at_ms"], expires_at=ts(row["expires_at"]))


# --- validation ----------------------------------------------------------------------------------

def _hash(label: str, value: bytes) -> bytes:
    if len(value) != HASH_BYTES:
        raise InvalidArgument(f"the {label} is not a SHA-256")
    return bytes(value)


def _id(label: str, value: str) -> str:
    if not is_plausible_id(value):
        raise InvalidArgument(f"the {label} is empty, too long or has control characters")
    return value


def _text(label: str, value: str, limit: int) -> str:
    if len(value) > limit or _CONTROL.search(value):
        raise InvalidArgument(f"the {label} is longer than {limit} characters or has control characters")
    return value


def _lifetime(label: str, seconds: int, limit: int) -> int:
    if not 0 < seconds <= limit:
        raise InvalidArgument(f"a {label} lives 1 to {limit} seconds")
    return seconds


def _scopes(scopes) -> list[str]:
    unique = list(dict.fromkeys(scopes))
    if len(unique) > MAX_SCOPES or not all(is_valid_scope_token(s) and len(s) <= MAX_ID_LENGTH for s in unique):
        raise InvalidArgument(f"scopes must be at most {MAX_SCOPES} RFC 6749 scope tokens")
    return unique


def _printable(value: str, limit: int) -> str:
    """Browser-supplied text kept for people to read (the user agent): bounded, no control characters."""
    return _CONTROL.sub("", value)[:limit]


def check_code(code: AuthorizationCodeRecord) -> None:
    _hash("code hash", code.code_hash)
    _id("client id", code.client_id)
    _id("user id", code.user_id)
    _id("grant id", code.grant_id)
    _text("username", code.username, MAX_ID_LENGTH)
    _text("sid", code.sid, MAX_ID_LENGTH)
    if not code.redirect_uri:
        raise InvalidArgument("a code is bound to a redirect URI")
    _text("redirect URI", code.redirect_uri, MAX_REDIRECT_URI)
    _scopes(code.scopes)
    _text("nonce", code.nonce, MAX_NONCE)
    _text("code challenge", code.code_challenge, MAX_CODE_CHALLENGE)
    # RFC 7636 / RFC 9700 §2.1.1: S256 only; no challenge at all for a confidential client without PKCE.
    if code.code_challenge_method not in (("S256",) if code.code_challenge else ("",)):
        raise InvalidArgument("the code challenge method must be S256 (and set only with a challenge)")
    if code.auth_time_ms < 0:
        raise InvalidArgument("auth_time is negative")


def _check_consume(item: CodeToConsume) -> str | None:
    if len(item.code_hash) != HASH_BYTES:
        return "the code hash is not a SHA-256"
    if not is_plausible_id(item.client_id):
        return "the client id is empty, too long or has control characters"
    return None


class _Reused:
    """What a reuse must publish once its transaction has committed."""

    def __init__(self, code: AuthorizationCodeRecord, revocation: RevocationRecord):
        self.code = code
        self.revocation = revocation


class AuthorizationRepository:
    """Implements api.AuthorizationStore over Postgres."""

    def __init__(self, pool: asyncpg.Pool, events: EventBus | None, clock: Callable[[], float] = time.time,
                 purge_batch: int = PURGE_BATCH):
        self.pool = pool
        self.events = events
        self.clock = clock
        self.purge_batch = purge_batch

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _publish(self, revocations: list[RevocationRecord]) -> None:
        if self.events is not None:
            for revocation in revocations:
                self.events.publish(TOKEN_REVOKED, revocation_event(revocation))

    # --- browser sessions -------------------------------------------------------------------------

    async def create_session(self, session: BrowserSession, lifetime_seconds: int,
                             verified_at_ms: int) -> BrowserSession:
        id_hash = _hash("session id hash", session.id_hash)
        sid = _id("sid", session.sid)
        user_id = _id("user id", session.user_id)
        lifetime = _lifetime("session", lifetime_seconds, MAX_SESSION_LIFETIME)
        now_ms = self._now_ms()
        if not 0 < verified_at_ms <= now_ms + CLOCK_SKEW_MS:
            raise InvalidArgument("a session needs its sign-in's time (verified_at_ms), not in the future")
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # FOR SHARE: a password change, disable or delete waits for this session (and
                # then ends it by its cut-off), or committed first and is seen here.
                active = await conn.fetchval("SELECT active FROM users WHERE id = $1 FOR SHARE", user_id)
                if active is None:
                    raise NotFound("no such user")
                if not active:
                    raise InvalidArgument("the user is disabled")
                if await conn.fetchval(f"SELECT {_CUT_OFF_SINCE.format(user='$1', since='$2')}", user_id,
                                       verified_at_ms):
                    raise InvalidArgument("the user changed since the sign-in (password, status): sign in again")
                await conn.execute(
                    "INSERT INTO browser_sessions (id_hash, sid, user_id, auth_time_ms, client_address, user_agent,"
                    " created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    id_hash, sid, user_id, verified_at_ms, _printable(session.client_address, MAX_ADDRESS),
                    _printable(session.user_agent, MAX_USER_AGENT), from_ms(now_ms),
                    from_ms(now_ms + lifetime * 1000))
                row = await conn.fetchrow(_LIVE_SESSION, id_hash, from_ms(now_ms))
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("a session with that id or sid exists already") from None
        log.info("browser session created", extra={"user_id": user_id, "sid": sid})
        return _session(row)

    async def get_session(self, id_hash: bytes) -> BrowserSession | None:
        if len(id_hash) != HASH_BYTES:
            return None
        row = await self.pool.fetchrow(_LIVE_SESSION, bytes(id_hash), from_ms(self._now_ms()))
        return _session(row) if row is not None else None

    async def end_session(self, *, id_hash: bytes = b"", sid: str = "") -> bool:
        """Sign-out, by the cookie's hash or by `sid` (RP-initiated logout); False when there
        was no live session so named (idempotent)."""
        if id_hash and len(id_hash) == HASH_BYTES:
            status = await self.pool.execute(
                "UPDATE browser_sessions SET ended_at = now() WHERE id_hash = $1 AND ended_at IS NULL",
                bytes(id_hash))
        elif sid and is_plausible_id(sid):
            status = await self.pool.execute(
                "UPDATE browser_sessions SET ended_at = now() WHERE sid = $1 AND ended_at IS NULL", sid)
        else:
            return False
        ended = status.endswith(" 1")
        if ended:
            log.info("browser session ended")
        return ended

    # --- pending authorization requests -----------------------------------------------------------

    async def create_authorization_request(self, request: PendingAuthorization,
                                           lifetime_seconds: int) -> PendingAuthorization:
        id_hash = _hash("request id hash", request.id_hash)
        client_id = _id("client id", request.client_id)
        if not request.request_json or len(request.request_json) > MAX_REQUEST_JSON or "\x00" in request.request_json:
            raise InvalidArgument(f"request_json must be 1 to {MAX_REQUEST_JSON} characters, without NUL")
        lifetime = _lifetime("pending request", lifetime_seconds, MAX_REQUEST_LIFETIME)
        now_ms = self._now_ms()
        try:
            row = await self.pool.fetchrow(
                "INSERT INTO authorization_requests (id_hash, client_id, request_json, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id_hash, client_id, request_json, created_at, expires_at",
                id_hash, client_id, request.request_json, from_ms(now_ms), from_ms(now_ms + lifetime * 1000))
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("a pending request with that id exists already") from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("no such client") from None
        return _pending(row)

    async def get_authorization_request(self, id_hash: bytes) -> PendingAuthorization | None:
        if len(id_hash) != HASH_BYTES:
            return None
        row = await self.pool.fetchrow(
            "SELECT id_hash, client_id, request_json, created_at, expires_at FROM authorization_requests"
            " WHERE id_hash = $1 AND completed_at IS NULL AND expires_at > $2", bytes(id_hash),
            from_ms(self._now_ms()))
        return _pending(row) if row is not None else None

    async def complete_authorization_request(self, id_hash: bytes) -> bool:
        """Once: the row's lock makes a concurrent second completion wait, then find it completed."""
        if len(id_hash) != HASH_BYTES:
            return False
        status = await self.pool.execute(
            "UPDATE authorization_requests SET completed_at = now() WHERE id_hash = $1 AND completed_at IS NULL"
            " AND expires_at > $2", bytes(id_hash), from_ms(self._now_ms()))
        return status.endswith(" 1")

    # --- consents ---------------------------------------------------------------------------------

    async def get_consent(self, user_id: str, client_id: str) -> ConsentRecord | None:
        if not (is_plausible_id(user_id) and is_plausible_id(client_id)):
            return None
        row = await self.pool.fetchrow(f"SELECT {_CONSENT_COLUMNS} FROM consents WHERE user_id = $1"
                                       " AND client_id = $2", user_id, client_id)
        return _consent(row) if row is not None else None

    async def grant_consent(self, user_id: str, client_id: str, scopes: list[str]) -> ConsentRecord:
        """Adds `scopes` to what the user consented to for the client (asking for more asks again)."""
        _id("user id", user_id)
        _id("client id", client_id)
        wanted = _scopes(scopes)
        try:
            row = await self.pool.fetchrow(f"{_MERGE_CONSENT} RETURNING {_CONSENT_COLUMNS}", user_id, client_id,
                                           sorted(wanted))
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("no such user or client") from None
        log.info("consent granted", extra={"user_id": user_id, "client_id": client_id, "scopes": wanted})
        return _consent(row)

    async def list_consents(self, user_id: str) -> list[ConsentRecord]:
        if not is_plausible_id(user_id):
            return []
        rows = await self.pool.fetch(f"SELECT {_CONSENT_COLUMNS} FROM consents WHERE user_id = $1"
                                     " ORDER BY granted_at, client_id", user_id)
        return [_consent(r) for r in rows]

    async def withdraw_consent(self, user_id: str, client_id: str, actor: str) -> tuple[bool, int]:
        """Deletes the consent and revokes every grant recorded under (user, client), in one
        transaction; the codes not yet exchanged go too. Answers (a consent was withdrawn,
        how many grants were revoked); the revocations are published after the commit."""
        if not (is_plausible_id(user_id) and is_plausible_id(client_id)):
            return False, 0
        who = actor if actor and is_plausible_id(actor) else str(actors.current() or "user")
        revoked_by = f"{who}: consent withdrawn"[:MAX_ID_LENGTH]
        now_ms = self._now_ms()
        async with self.pool.acquire() as conn, conn.transaction():
            withdrawn = (await conn.execute("DELETE FROM consents WHERE user_id = $1 AND client_id = $2",
                                            user_id, client_id)).endswith(" 1")
            grants = [r["grant_id"] for r in await conn.fetch(
                "DELETE FROM user_grants WHERE user_id = $1 AND client_id = $2 RETURNING grant_id",
                user_id, client_id)]
            # Codes not yet exchanged would only mint tokens born revoked; consumed ones stay,
            # so that a second use is still recognised.
            await conn.execute("DELETE FROM authorization_codes WHERE user_id = $1 AND client_id = $2"
                               " AND consumed_at IS NULL", user_id, client_id)
            revocations = [RevocationRecord(kind=REVOKE_GRANT, value=grant_id, client_id=client_id,
                                            expires_at=now_ms // 1000 + GRANT_REVOCATION_LIFETIME,
                                            revoked_by=revoked_by) for grant_id in grants]
            ids = await insert_revocations(conn, revocations) if revocations else []
        stored = [RevocationRecord(**{**r.__dict__, "id": i}) for r, i in zip(revocations, ids)]
        self._publish(stored)
        log.info("consent withdrawn", extra={"user_id": user_id, "client_id": client_id,
                                             "withdrawn": withdrawn, "grants_revoked": len(stored)})
        return withdrawn, len(stored)

    # --- authorization codes ----------------------------------------------------------------------

    async def create_authorization_code(self, code: AuthorizationCodeRecord,
                                        lifetime_seconds: int) -> AuthorizationCodeRecord:
        check_code(code)
        lifetime = _lifetime("code", lifetime_seconds, MAX_CODE_LIFETIME)
        now_ms = self._now_ms()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "INSERT INTO authorization_codes (code_hash, client_id, redirect_uri, scopes, user_id, username,"
                    " sid, auth_time_ms, nonce, code_challenge, code_challenge_method, grant_id, created_at_ms,"
                    " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                    f" RETURNING {_CODE_COLUMNS}",
                    bytes(code.code_hash), code.client_id, code.redirect_uri, _scopes(code.scopes), code.user_id,
                    code.username, code.sid, code.auth_time_ms, code.nonce, code.code_challenge,
                    code.code_challenge_method, code.grant_id, now_ms, from_ms(now_ms + lifetime * 1000))
                await self._record_grant(conn, code.user_id, code.client_id, code.grant_id, _scopes(code.scopes))
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("a code with that hash exists already") from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("no such user or client") from None
        return _code(row)

    async def consume_authorization_codes(self, codes: list[CodeToConsume]) -> list[CodeOutcome]:
        """One transaction per item, side by side (each on its own connection): one item's
        trouble never fails another. The database being away fails the call, not an item."""
        return await items_side_by_side(codes, self._consume_one, "authorization code consumption",
                                        "the code could not be consumed")

    async def _consume_one(self, item: CodeToConsume) -> CodeOutcome:
        problem = _check_consume(item)
        if problem:
            return ItemError(ITEM_INVALID, problem)
        # Two reuses revoking one grant's refresh family at once may lock its rows in opposite
        # orders; Postgres ends one, and its retry finds the code consumed.
        outcome = await in_transaction_retrying_deadlocks(self.pool, lambda conn: self._consume_in(conn, item))
        if isinstance(outcome, _Reused):
            self._publish([outcome.revocation])
            return CodeReused(grant_id=outcome.code.grant_id)
        return outcome

    async def _consume_in(self, conn: asyncpg.Connection, item: CodeToConsume) -> CodeOutcome | _Reused:
        row = await conn.fetchrow(f"SELECT {_CODE_COLUMNS}, consumed_at FROM authorization_codes"
                                  " WHERE code_hash = $1 FOR UPDATE", bytes(item.code_hash))
        if row is None or row["client_id"] != item.client_id:
            return CodeNotFound()
        code = _code(row)
        now_ms = self._now_ms()
        if row["consumed_at"] is not None:
            return await self._revoke_grant(conn, code, now_ms)
        if code.expires_at * 1000 <= now_ms:
            return CodeNotFound()
        await conn.execute("UPDATE authorization_codes SET consumed_at = $2 WHERE code_hash = $1",
                           bytes(item.code_hash), from_ms(now_ms))
        return code

    async def _revoke_grant(self, conn: asyncpg.Connection, code: AuthorizationCodeRecord, now_ms: int) -> _Reused:
        """RFC 6749 §4.1.2: a code used twice means one of the two holders is an attacker;
        every token issued from the first use ends (RFC 9700 §4.2.4). The grant revocation
        marks the grant's refresh family revoked in the same statement, and lasts as long
        as any of its access tokens (api.GRANT_REVOCATION_LIFETIME)."""
        revocation = RevocationRecord(kind=REVOKE_GRANT, value=code.grant_id, client_id=code.client_id,
                                      expires_at=now_ms // 1000 + GRANT_REVOCATION_LIFETIME,
                                      revoked_by=CODE_REUSE_REVOKED_BY)
        [row_id] = await insert_revocations(conn, [revocation])
        log.warning("authorization code reused: its grant is revoked",
                    extra={"client_id": code.client_id, "grant_id": code.grant_id, "user_id": code.user_id})
        return _Reused(code, RevocationRecord(**{**revocation.__dict__, "id": row_id}))

    # --- grants per (user, client) ----------------------------------------------------------------

    @staticmethod
    async def _record_grant(conn, user_id: str, client_id: str, grant_id: str, scopes: list[str]) -> None:
        """Inside the caller's transaction. The grant's scopes join the user's consent for the
        client (made if none): a grant of scopes that need no consent (`openid` alone, "sign in
        with") is then listed on the account page too, where withdrawing it ends its tokens.
        The consent row is written first: a withdrawal in flight holds it, so this grant
        waits and is then listed again, or the withdrawal waits and then revokes it too."""
        await conn.execute(_MERGE_CONSENT, user_id, client_id, sorted(scopes))
        await conn.execute("INSERT INTO user_grants (user_id, client_id, grant_id) VALUES ($1, $2, $3)"
                           " ON CONFLICT DO NOTHING", user_id, client_id, grant_id)

    async def record_user_grant(self, user_id: str, client_id: str, grant_id: str) -> None:
        _id("user id", user_id)
        _id("client id", client_id)
        _id("grant id", grant_id)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await self._record_grant(conn, user_id, client_id, grant_id, [])
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("no such user or client") from None

    # --- housekeeping -----------------------------------------------------------------------------

    async def purge_expired(self) -> int:
        """Rows nothing can use any more:
        - sessions expired or ended, pending requests expired or completed;
        - codes never consumed, an hour after their expiry (presented then, they are not found
          either way);
        - consumed codes CONSUMED_CODE_KEEP_SECONDS after their creation: until then a second
          use is still recognised and revokes the grant while its access tokens may live;
        - a recorded user grant once it cannot have a live token: its code's (or implicit)
          tokens were issued within MAX_CODE_LIFETIME of its recording and live at most
          GRANT_REVOCATION_LIFETIME, and no unrevoked stored token of the grant (a refresh
          family, an opaque access token) is unexpired or issued within that lifetime (a
          rotation's access token lives that long after it)."""
        now_ms = self._now_ms()
        now = from_ms(now_ms)
        total = 0
        for table, where, args in (
            ("browser_sessions", "expires_at <= $1 OR ended_at IS NOT NULL", (now,)),
            ("authorization_requests", "expires_at <= $1 OR completed_at IS NOT NULL", (now,)),
            ("authorization_codes", "(consumed_at IS NULL AND expires_at < $1) OR created_at_ms < $2",
             (from_ms(now_ms - UNCONSUMED_CODE_KEEP_SECONDS * 1000), now_ms - CONSUMED_CODE_KEEP_SECONDS * 1000)),
            ("user_grants", "created_at < $1 AND NOT EXISTS ("
             " SELECT 1 FROM opaque_tokens t WHERE t.grant_id = user_grants.grant_id"
             " AND t.client_id = user_grants.client_id"
             " AND t.revoked_at IS NULL AND (t.expires_at > $2 OR t.issued_at > $3))",
             (from_ms(now_ms - USER_GRANT_KEEP_SECONDS * 1000), now,
              from_ts(now_ms // 1000 - GRANT_REVOCATION_LIFETIME))),
        ):
            # By row address, a batch at a time (a row changed meanwhile has a new address: it
            # is left for the next run, never deleted on a stale reading).
            sql = (f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {where}"
                   f" LIMIT {int(self.purge_batch)}))")
            for _ in range(PURGE_MAX_BATCHES):
                deleted = int((await self.pool.execute(sql, *args)).split()[-1])
                total += deleted
                if deleted < self.purge_batch:
                    break
        return total

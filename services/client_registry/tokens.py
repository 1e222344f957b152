"""Opaque access and refresh tokens over Postgres, by SHA-256 (the token itself is
never stored). Both calls are batched; one bad item never fails the others."""
from __future__ import annotations

import asyncpg

from services.client_registry.api import (
    MAX_ID_LENGTH,
    ItemError,
    OpaqueTokenRecord,
    has_control_characters,
    is_plausible_id,
)
from services.client_registry.pg import batch_then_items, from_ms, from_ts, ms, plausible_time, ts

HASH_BYTES = 32
MAX_LIST_ITEMS = 256

_INSERT = ("INSERT INTO opaque_tokens (token_hash, jti, client_id, subject, username, scopes, audience,"
           " issued_at, expires_at, kind, grant_id, family_expires_at)"
           " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")


def columns(alias: str = "") -> str:
    """What a read answers (token_record reads it): a refresh token's state too (consumed,
    revoked, its family's end). `alias`: the table's alias in a join."""
    a = f"{alias}." if alias else ""
    return (f"{a}token_hash, {a}jti, {a}client_id, {a}subject, {a}username, {a}scopes, {a}audience, {a}issued_at,"
            f" {a}expires_at, {a}kind, {a}grant_id, {a}consumed_at IS NOT NULL AS consumed,"
            f" {a}revoked_at IS NOT NULL AS revoked, {a}family_expires_at")


COLUMNS = columns()


def _text_ok(value: str) -> bool:
    return len(value) <= MAX_ID_LENGTH and not has_control_characters(value)


def check_token(t: OpaqueTokenRecord) -> str | None:
    """Why a token record cannot be stored, or None."""
    if len(t.token_hash) != HASH_BYTES:
        return "the token hash is not a SHA-256"
    if not all(is_plausible_id(v) for v in (t.jti, t.client_id, t.subject)):
        return "jti, client id or subject is empty, too long or has control characters"
    if not all(_text_ok(v) for v in (t.username, t.grant_id)):
        return "username or grant id is too long or has control characters"
    if len(t.scopes) > MAX_LIST_ITEMS or len(t.audience) > MAX_LIST_ITEMS \
            or not all(_text_ok(v) for v in (*t.scopes, *t.audience)):
        return "a scope or audience is too long or has control characters"
    if t.kind not in ("access", "refresh"):
        return f"unknown token kind {t.kind!r}"
    if not (plausible_time(t.issued_at) and plausible_time(t.expires_at)
            and plausible_time(t.issued_at_precise_ms // 1000) and plausible_time(t.family_expires_at)):
        return "a time is out of range"
    if t.kind == "refresh" and not t.grant_id:
        return "a refresh token needs a grant id (its family)"
    if t.family_expires_at and t.kind != "refresh":
        return "only a refresh token belongs to a family with an end"
    return None


def _args(t: OpaqueTokenRecord) -> tuple:
    return (t.token_hash, t.jti, t.client_id, t.subject, t.username, list(t.scopes), list(t.audience),
            from_ms(t.issued_at_precise_ms), from_ts(t.expires_at), t.kind, t.grant_id,
            from_ts(t.family_expires_at) if t.family_expires_at else None)


def token_record(r: asyncpg.Record) -> OpaqueTokenRecord:
    """A row read with COLUMNS."""
    return OpaqueTokenRecord(
        token_hash=bytes(r["token_hash"]), jti=r["jti"], client_id=r["client_id"], subject=r["subject"],
        username=r["username"], scopes=tuple(r["scopes"]), audience=tuple(r["audience"]),
        issued_at=ts(r["issued_at"]), issued_at_ms=ms(r["issued_at"]), expires_at=ts(r["expires_at"]),
        kind=r["kind"], grant_id=r["grant_id"], consumed=r["consumed"], revoked=r["revoked"],
        family_expires_at=ts(r["family_expires_at"]))


class TokenRepository:
    """Implements api.TokenStore over Postgres."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def store_opaque_tokens(self, tokens: list[OpaqueTokenRecord]) -> list[ItemError | None]:
        """The valid ones in one round trip; if Postgres refuses the batch (a client
        deleted meanwhile, say), row by row, so only the bad one fails."""
        async def insert(batch: list[OpaqueTokenRecord]) -> list[None]:
            await self.pool.executemany(_INSERT, [_args(t) for t in batch])
            return [None] * len(batch)

        return await batch_then_items(tokens, insert, "opaque token", check_token)

    async def get_opaque_tokens(self, token_hashes: list[bytes]) -> list[OpaqueTokenRecord | None]:
        """One answer per hash; anything that is not a SHA-256 is simply not found."""
        wanted = list({h for h in token_hashes if len(h) == HASH_BYTES})
        found = {}
        if wanted:
            rows = await self.pool.fetch(
                f"SELECT {COLUMNS} FROM opaque_tokens WHERE token_hash = ANY($1::bytea[])", wanted)
            found = {bytes(r["token_hash"]): token_record(r) for r in rows}
        return [found.get(h) for h in token_hashes]

    async def purge_expired(self) -> int:
        """Tokens expired for a day (kept that long for investigations). A refresh token
        consumed or revoked stays until then too: presented again, it must still be
        recognised (a reuse), not answered unknown."""
        status = await self.pool.execute("DELETE FROM opaque_tokens WHERE expires_at < now() - interval '1 day'")
        return int(status.split()[-1])

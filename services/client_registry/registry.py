"""The registry over Postgres: validation of client records, then SQL.

Every change to a client publishes `ClientChanged` so that every cache of it,
in every replica of every service, drops it.
"""
from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import asyncpg

from inbound.events.v1 import events_pb2
from inboundlib.db import UNAVAILABLE_ERRORS
from inboundlib.events import CLIENT_CHANGED, TOKEN_REVOKED, EventBus
from inboundlib.oauth.client_auth import hash_client_secret, new_client_secret
from inboundlib.oauth.scopes import is_valid_scope_token
from services.client_registry.api import (
    DEFAULT_ACCESS_TOKEN_LIFETIME,
    DEFAULT_REFRESH_TOKEN_LIFETIME,
    GRANT_AUTHORIZATION_CODE,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_IMPLICIT,
    GRANT_REFRESH_TOKEN,
    KNOWN_GRANT_TYPES,
    MAX_ACCESS_TOKEN_LIFETIME,
    MAX_LIFETIME,
    TOKEN_FORMATS,
    ClientRecord,
    ClientSpec,
    ClientUpdate,
    InvalidArgument,
    NotFound,
    OpaqueTokenRecord,
    RevocationRecord,
    SigningKeyRecord,
    client_cut_off,
)
from services.client_registry.wire import revocation_event

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")

_CLIENT_COLUMNS = (
    "client_id, name, secret_hash, public, grant_types, scopes, redirect_uris, access_token_lifetime,"
    " refresh_token_lifetime, token_format, pkce_required, active, logo_url, comments, created_at, updated_at,"
    " secret_rotated_at"
)


def _ts(value: datetime | None) -> int:
    return int(value.timestamp()) if value else 0


def _from_ts(value: int) -> datetime:
    return datetime.fromtimestamp(value, tz=timezone.utc)


def _client(row: asyncpg.Record) -> ClientRecord:
    return ClientRecord(
        client_id=row["client_id"], name=row["name"], secret_hash=row["secret_hash"] or "", public=row["public"],
        grant_types=tuple(row["grant_types"]), scopes=tuple(row["scopes"]),
        redirect_uris=tuple(row["redirect_uris"]), access_token_lifetime=row["access_token_lifetime"],
        refresh_token_lifetime=row["refresh_token_lifetime"], token_format=row["token_format"],
        pkce_required=row["pkce_required"], active=row["active"], logo_url=row["logo_url"],
        comments=row["comments"], created_at=_ts(row["created_at"]), updated_at=_ts(row["updated_at"]),
        secret_rotated_at=_ts(row["secret_rotated_at"]),
    )


# --- validation: one rule a function -------------------------------------------------------------

def _check_text(label: str, value: str, limit: int, *, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{label} is required")
    if len(value) > limit:
        raise InvalidArgument(f"{label} is longer than {limit} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{label} contains control characters")
    return value.strip()


def _check_grant_types(grant_types: list[str], public: bool) -> list[str]:
    unknown = [g for g in grant_types if g not in KNOWN_GRANT_TYPES]
    if unknown:
        raise InvalidArgument(f"unknown grant types: {', '.join(unknown)}")
    if public and GRANT_CLIENT_CREDENTIALS in grant_types:
        # RFC 6749 §4.4: the client credentials grant is for confidential clients only.
        raise InvalidArgument("a public client cannot use client_credentials")
    return list(dict.fromkeys(grant_types))


def _check_scopes(scopes: list[str]) -> list[str]:
    bad = [s for s in scopes if not is_valid_scope_token(s)]
    if bad:
        raise InvalidArgument(f"malformed scopes: {bad}")
    return list(dict.fromkeys(scopes))


def _check_redirect_uri(uri: str) -> str:
    """RFC 6749 §3.1.2: absolute, no fragment; RFC 9700 §2.1: plain http only for loopback."""
    if len(uri) > 2000 or _CONTROL.search(uri) or " " in uri:
        raise InvalidArgument(f"malformed redirect URI: {uri!r}")
    parts = urlsplit(uri)
    if not parts.scheme or parts.fragment or "#" in uri:
        raise InvalidArgument(f"redirect URI must be absolute and have no fragment: {uri!r}")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise InvalidArgument(f"redirect URI has no host: {uri!r}")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise InvalidArgument(f"plain http redirect URIs are allowed for loopback hosts only: {uri!r}")
    if parts.scheme in ("javascript", "data", "file", "vbscript"):
        raise InvalidArgument(f"redirect URI scheme not allowed: {uri!r}")
    return uri


def _check_lifetime(label: str, value: int, limit: int = MAX_LIFETIME) -> int:
    if not 0 < value <= limit:
        raise InvalidArgument(f"{label} must be between 1 and {limit} seconds")
    return value


def _check_token_format(value: str) -> str:
    if value not in TOKEN_FORMATS:
        raise InvalidArgument(f"token format must be one of {', '.join(TOKEN_FORMATS)}")
    return value


def _check_logo_url(value: str) -> str:
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc or len(value) > 2000:
            raise InvalidArgument("logo URL must be an http(s) URL")
    return value


def _check_redirects_for_grants(grant_types: list[str], redirect_uris: list[str]) -> None:
    if not redirect_uris and (GRANT_AUTHORIZATION_CODE in grant_types or GRANT_IMPLICIT in grant_types):
        raise InvalidArgument("authorization_code and implicit clients need at least one redirect URI")


async def _insert_revocation(conn: asyncpg.Connection, r: RevocationRecord) -> int:
    if r.kind not in ("jti", "grant", "client") or not r.value:
        raise InvalidArgument(f"bad revocation kind {r.kind!r} or empty value")
    # One writer at a time (held to commit): ids then become visible in the order
    # they are given, so a replica that has read up to id N never misses one below N.
    await conn.execute("SELECT pg_advisory_xact_lock(7002)")
    return await conn.fetchval(
        "INSERT INTO revocations (kind, value, client_id, revoked_before, expires_at, revoked_by)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (kind, value) DO UPDATE SET"
        "  revoked_before = GREATEST(revocations.revoked_before, EXCLUDED.revoked_before),"
        "  expires_at = GREATEST(revocations.expires_at, EXCLUDED.expires_at),"
        "  id = nextval(pg_get_serial_sequence('revocations', 'id'))"
        " RETURNING id",
        r.kind, r.value, r.client_id, _from_ts(r.revoked_before) if r.revoked_before else None,
        _from_ts(r.expires_at), r.revoked_by)


class Registry:
    def __init__(self, pool: asyncpg.Pool, events: EventBus | None):
        self.pool = pool
        self.events = events

    def _changed(self, client_id: str, change: str) -> None:
        if self.events is not None:
            self.events.publish(CLIENT_CHANGED, events_pb2.Event(
                client_changed=events_pb2.ClientChanged(client_id=client_id, change=change)))

    # --- clients --------------------------------------------------------------------------------

    async def create_client(self, spec: ClientSpec) -> tuple[ClientRecord, str]:
        name = _check_text("name", spec.name, 200, required=True)
        default_grants = [GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN] if spec.public else [GRANT_CLIENT_CREDENTIALS]
        grant_types = _check_grant_types(spec.grant_types or default_grants, spec.public)
        scopes = _check_scopes(spec.scopes)
        redirect_uris = [_check_redirect_uri(u) for u in spec.redirect_uris]
        _check_redirects_for_grants(grant_types, redirect_uris)
        access = _check_lifetime("access token lifetime", DEFAULT_ACCESS_TOKEN_LIFETIME
                                 if spec.access_token_lifetime is None else spec.access_token_lifetime,
                                 MAX_ACCESS_TOKEN_LIFETIME)
        refresh = _check_lifetime("refresh token lifetime", DEFAULT_REFRESH_TOKEN_LIFETIME
                                  if spec.refresh_token_lifetime is None else spec.refresh_token_lifetime)
        token_format = _check_token_format(spec.token_format or "jwt")
        # Public clients always use PKCE (RFC 9700 §2.1.1); confidential ones may opt in.
        pkce_required = True if spec.public else bool(spec.pkce_required)
        logo_url = _check_logo_url(spec.logo_url)
        comments = _check_text("comments", spec.comments, 2000)

        client_id = secrets.token_hex(16)
        secret = "" if spec.public else new_client_secret()
        row = await self.pool.fetchrow(
            f"INSERT INTO clients (client_id, name, secret_hash, public, grant_types, scopes, redirect_uris,"
            f" access_token_lifetime, refresh_token_lifetime, token_format, pkce_required, logo_url, comments)"
            f" VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) RETURNING {_CLIENT_COLUMNS}",
            client_id, name, hash_client_secret(secret) if secret else None, spec.public, grant_types, scopes,
            redirect_uris, access, refresh, token_format, pkce_required, logo_url, comments,
        )
        log.info("client created", extra={"client_id": client_id})
        self._changed(client_id, "created")
        return _client(row), secret

    async def get_clients(self, client_ids: list[str]) -> list[ClientRecord | None]:
        rows = await self.pool.fetch(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = ANY($1::text[])",
                                     list(set(client_ids)))
        found = {row["client_id"]: _client(row) for row in rows}
        return [found.get(client_id) for client_id in client_ids]

    async def get_client(self, client_id: str) -> ClientRecord | None:
        return (await self.get_clients([client_id]))[0]

    async def list_clients(self) -> list[ClientRecord]:
        rows = await self.pool.fetch(f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY created_at, client_id")
        return [_client(row) for row in rows]

    async def update_client(self, client_id: str, update: ClientUpdate) -> ClientRecord:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = $1 FOR UPDATE",
                                      client_id)
            if row is None:
                raise NotFound(client_id)
            current = _client(row)
            grant_types = _check_grant_types(
                update.grant_types if update.grant_types is not None else list(current.grant_types), current.public)
            redirect_uris = ([_check_redirect_uri(u) for u in update.redirect_uris]
                             if update.redirect_uris is not None else list(current.redirect_uris))
            _check_redirects_for_grants(grant_types, redirect_uris)
            values = {
                "active": current.active if update.active is None else update.active,
                "name": current.name if update.name is None else _check_text("name", update.name, 200, required=True),
                "grant_types": grant_types,
                "scopes": list(current.scopes) if update.scopes is None else _check_scopes(update.scopes),
                "redirect_uris": redirect_uris,
                "access_token_lifetime": current.access_token_lifetime if update.access_token_lifetime is None
                else _check_lifetime("access token lifetime", update.access_token_lifetime, MAX_ACCESS_TOKEN_LIFETIME),
                "refresh_token_lifetime": current.refresh_token_lifetime if update.refresh_token_lifetime is None
                else _check_lifetime("refresh token lifetime", update.refresh_token_lifetime),
                "token_format": current.token_format if update.token_format is None
                else _check_token_format(update.token_format),
                "pkce_required": current.pkce_required if update.pkce_required is None
                else (True if current.public else update.pkce_required),
                "logo_url": current.logo_url if update.logo_url is None else _check_logo_url(update.logo_url),
                "comments": current.comments if update.comments is None
                else _check_text("comments", update.comments, 2000),
            }
            row = await conn.fetchrow(
                f"UPDATE clients SET active=$2, name=$3, grant_types=$4, scopes=$5, redirect_uris=$6,"
                f" access_token_lifetime=$7, refresh_token_lifetime=$8, token_format=$9, pkce_required=$10,"
                f" logo_url=$11, comments=$12, updated_at=now() WHERE client_id=$1 RETURNING {_CLIENT_COLUMNS}",
                client_id, *values.values(),
            )
            cut_off = None
            if current.active and not values["active"]:
                # Disabling revokes what the client holds: enabling it again (after a
                # secret rotation, say) must not bring stolen tokens back.
                cut_off = client_cut_off(client_id, int(time.time()), "operator: client disabled")
                cut_off = RevocationRecord(**{**cut_off.__dict__, "id": await _insert_revocation(conn, cut_off)})
        log.info("client updated", extra={"client_id": client_id})
        self._changed(client_id, "updated")
        if cut_off is not None and self.events is not None:
            self.events.publish(TOKEN_REVOKED, revocation_event(cut_off))
        return _client(row)

    async def delete_client(self, client_id: str) -> bool:
        status = await self.pool.execute("DELETE FROM clients WHERE client_id = $1", client_id)
        deleted = status.endswith(" 1")
        if deleted:
            log.info("client deleted", extra={"client_id": client_id})
            self._changed(client_id, "deleted")
        return deleted

    async def rotate_client_secret(self, client_id: str) -> tuple[ClientRecord, str]:
        secret = new_client_secret()
        row = await self.pool.fetchrow(
            f"UPDATE clients SET secret_hash=$2, secret_rotated_at=now(), updated_at=now()"
            f" WHERE client_id=$1 AND NOT public RETURNING {_CLIENT_COLUMNS}",
            client_id, hash_client_secret(secret),
        )
        if row is None:
            exists = await self.pool.fetchval("SELECT public FROM clients WHERE client_id=$1", client_id)
            if exists is None:
                raise NotFound(client_id)
            raise InvalidArgument("a public client has no secret")
        log.info("client secret rotated", extra={"client_id": client_id})
        self._changed(client_id, "secret_rotated")
        return _client(row), secret

    # --- signing keys ---------------------------------------------------------------------------

    async def list_signing_keys(self) -> list[SigningKeyRecord]:
        rows = await self.pool.fetch(
            "SELECT kid, alg, encrypted_private_key, public_jwk, created_at, activates_at FROM signing_keys"
            " ORDER BY activates_at, created_at")
        return [SigningKeyRecord(kid=r["kid"], alg=r["alg"], encrypted_private_key=bytes(r["encrypted_private_key"]),
                                 public_jwk_json=r["public_jwk"], created_at=_ts(r["created_at"]),
                                 activates_at=_ts(r["activates_at"])) for r in rows]

    async def add_signing_key(self, key: SigningKeyRecord, only_if_none: bool) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialises the first start of several token_issuer replicas: one key, not one each.
            await conn.execute("SELECT pg_advisory_xact_lock(7001)")
            if only_if_none and await conn.fetchval("SELECT count(*) FROM signing_keys"):
                return False
            await conn.execute(
                # created_at from the database clock, to the microsecond: it orders two
                # rotations within one second (the later one signs).
                "INSERT INTO signing_keys (kid, alg, encrypted_private_key, public_jwk, created_at, activates_at)"
                " VALUES ($1, $2, $3, $4, clock_timestamp(), $5)",
                key.kid, key.alg, key.encrypted_private_key, key.public_jwk_json, _from_ts(key.activates_at))
        log.info("signing key added", extra={"kid": key.kid, "alg": key.alg})
        return True

    # --- opaque tokens --------------------------------------------------------------------------

    async def store_opaque_tokens(self, tokens: list[OpaqueTokenRecord]) -> list[str | None]:
        """Store a batch in one round trip; if the batch fails, store row by row so
        one bad item (its client deleted meanwhile) fails alone."""
        sql = ("INSERT INTO opaque_tokens (token_hash, jti, client_id, subject, username, scopes, audience,"
               " issued_at, expires_at, kind, grant_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")

        def args(t: OpaqueTokenRecord) -> tuple:
            return (t.token_hash, t.jti, t.client_id, t.subject, t.username, list(t.scopes), list(t.audience),
                    _from_ts(t.issued_at), _from_ts(t.expires_at), t.kind, t.grant_id)

        try:
            await self.pool.executemany(sql, [args(t) for t in tokens])
            return [None] * len(tokens)
        except UNAVAILABLE_ERRORS:
            raise  # the database, not an item, is the problem: the caller answers UNAVAILABLE
        except asyncpg.PostgresError:
            if len(tokens) == 1:
                log.warning("opaque token not stored", exc_info=True)
                return ["could not store token"]
        results: list[str | None] = []
        for token in tokens:
            try:
                await self.pool.execute(sql, *args(token))
                results.append(None)
            except UNAVAILABLE_ERRORS:
                raise
            except asyncpg.PostgresError:
                log.warning("opaque token not stored", extra={"client_id": token.client_id}, exc_info=True)
                results.append("could not store token")
        return results

    async def get_opaque_tokens(self, token_hashes: list[bytes]) -> list[OpaqueTokenRecord | None]:
        rows = await self.pool.fetch(
            "SELECT token_hash, jti, client_id, subject, username, scopes, audience, issued_at, expires_at, kind,"
            " grant_id FROM opaque_tokens WHERE token_hash = ANY($1::bytea[])", list(set(token_hashes)))
        found = {bytes(r["token_hash"]): OpaqueTokenRecord(
            token_hash=bytes(r["token_hash"]), jti=r["jti"], client_id=r["client_id"], subject=r["subject"],
            username=r["username"], scopes=tuple(r["scopes"]), audience=tuple(r["audience"]),
            issued_at=_ts(r["issued_at"]), expires_at=_ts(r["expires_at"]), kind=r["kind"], grant_id=r["grant_id"])
            for r in rows}
        return [found.get(h) for h in token_hashes]

    # --- revocations ----------------------------------------------------------------------------

    async def add_revocations(self, revocations: list[RevocationRecord]) -> list[int]:
        """Store revocations; re-revoking widens an entry (later cut-off, later expiry) and gives it a
        new id, so replicas that sync by id see the change."""
        async with self.pool.acquire() as conn, conn.transaction():
            return [await _insert_revocation(conn, r) for r in revocations]

    async def list_revocations(self, after_id: int = 0, limit: int = 10_000) -> list[RevocationRecord]:
        rows = await self.pool.fetch(
            "SELECT id, kind, value, client_id, revoked_before, expires_at, revoked_by FROM revocations"
            " WHERE id > $1 AND expires_at > now() ORDER BY id LIMIT $2", after_id, limit)
        return [RevocationRecord(id=r["id"], kind=r["kind"], value=r["value"], client_id=r["client_id"],
                                 revoked_before=_ts(r["revoked_before"]), expires_at=_ts(r["expires_at"]),
                                 revoked_by=r["revoked_by"]) for r in rows]

    async def purge_periodically(self, seconds: float) -> None:
        """Run purge_expired every `seconds`, for the life of the service."""
        while True:
            await asyncio.sleep(seconds)
            try:
                removed = await self.purge_expired()
                if removed:
                    log.info("expired rows purged", extra={"rows": removed})
            except Exception as exc:
                log.warning("purge failed", extra={"error": type(exc).__name__})

    async def purge_expired(self) -> int:
        """Drop expired opaque tokens and revocations (kept a day longer, for investigations)."""
        tokens = await self.pool.execute("DELETE FROM opaque_tokens WHERE expires_at < now() - interval '1 day'")
        revocations = await self.pool.execute("DELETE FROM revocations WHERE expires_at < now() - interval '1 day'")
        return int(tokens.split()[-1]) + int(revocations.split()[-1])

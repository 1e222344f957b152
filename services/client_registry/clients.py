"""Registered OAuth clients over Postgres: validation of client records, then SQL.

Every change publishes RegistryChanged(client) so that every cache of the
client, in every replica of every service, drops it. Disabling or deleting a
client also records a client-wide revocation cut-off, in the same transaction,
and publishes it: a token checker that cannot reach the registry can still
refuse the client's tokens from its revocation set alone.
"""
from __future__ import annotations

import logging
import re
import secrets
from urllib.parse import urlsplit

import asyncpg

from inboundlib.events import ENTITY_CLIENT, EventBus, registry_changed, registry_subject
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
    client_cut_off,
    is_plausible_id,
)
from services.client_registry.pg import ts
from services.client_registry.revocations import publish_cut_off, record_cut_off
from services.client_registry.scopes import require_catalog_scopes

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")

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


def _check_redirect_uri(uri: str, label: str = "redirect URI") -> str:
    """RFC 6749 §3.1.2: absolute, no fragment; RFC 9700 §2.1: plain http only for loopback.
    Post-logout redirect URIs (OpenID Connect RP-Initiated Logout §3.1) follow the same rules."""
    if len(uri) > 2000 or _CONTROL.search(uri) or " " in uri:
        raise InvalidArgument(f"malformed {label}: {uri!r}")
    parts = urlsplit(uri)
    if not parts.scheme or parts.fragment or "#" in uri:
        raise InvalidArgument(f"{label} must be absolute and have no fragment: {uri!r}")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise InvalidArgument(f"{label} has no host: {uri!r}")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise InvalidArgument(f"plain http {label}s are allowed for loopback hosts only: {uri!r}")
    if parts.scheme in ("javascript", "data", "file", "vbscript"):
        raise InvalidArgument(f"{label} scheme not allowed: {uri!r}")
    return uri


def _check_post_logout_redirect_uris(uris: list[str]) -> list[str]:
    return list(dict.fromkeys(_check_redirect_uri(u, "post-logout redirect URI") for u in uris))


def _check_lifetime(label: str, value: int, limit: int = MAX_LIFETIME) -> int:
    if not 0 < value <= limit:
        raise InvalidArgument(f"{label} must be between 1 and {limit} seconds")
    return value


def _check_absolute_lifetime(value: int) -> int:
    """0 (no absolute limit) or 1..MAX_LIFETIME. It may be shorter than the sliding
    refresh_token_lifetime: each refresh token then expires at its family's end (the
    earlier of the two), so no combination is contradictory, and an operator can change
    either without first changing the other."""
    if not 0 <= value <= MAX_LIFETIME:
        raise InvalidArgument(f"refresh token absolute lifetime must be 0 (none) or up to {MAX_LIFETIME} seconds")
    return value


def _check_public_password_grant(allowed: bool, public: bool) -> bool:
    """RFC 6749 §4.3.2: the exception is for public clients; a confidential one always
    authenticates, so the flag would mean nothing there and is refused."""
    if allowed and not public:
        raise InvalidArgument("allow_public_password_grant is for public clients only")
    return allowed


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


_CLIENT_COLUMNS = (
    "client_id, name, secret_hash, public, grant_types, scopes, redirect_uris, access_token_lifetime,"
    " refresh_token_lifetime, token_format, pkce_required, active, logo_url, comments, created_at, updated_at,"
    " secret_rotated_at, allow_public_password_grant, refresh_token_absolute_lifetime, post_logout_redirect_uris"
)

def _client(row: asyncpg.Record) -> ClientRecord:
    return ClientRecord(
        client_id=row["client_id"], name=row["name"], secret_hash=row["secret_hash"] or "", public=row["public"],
        grant_types=tuple(row["grant_types"]), scopes=tuple(row["scopes"]),
        redirect_uris=tuple(row["redirect_uris"]), access_token_lifetime=row["access_token_lifetime"],
        refresh_token_lifetime=row["refresh_token_lifetime"], token_format=row["token_format"],
        pkce_required=row["pkce_required"], active=row["active"], logo_url=row["logo_url"],
        comments=row["comments"], created_at=ts(row["created_at"]), updated_at=ts(row["updated_at"]),
        secret_rotated_at=ts(row["secret_rotated_at"]),
        allow_public_password_grant=row["allow_public_password_grant"],
        refresh_token_absolute_lifetime=row["refresh_token_absolute_lifetime"],
        post_logout_redirect_uris=tuple(row["post_logout_redirect_uris"]),
    )


class ClientRepository:
    """Implements api.ClientStore over Postgres."""

    def __init__(self, pool: asyncpg.Pool, events: EventBus | None):
        self.pool = pool
        self.events = events

    def _changed(self, client_id: str, change: str) -> None:
        if self.events is not None:
            self.events.publish(registry_subject(ENTITY_CLIENT), registry_changed(ENTITY_CLIENT, client_id, change))

    # --- clients --------------------------------------------------------------------------------

    async def create_client(self, spec: ClientSpec) -> tuple[ClientRecord, str]:
        name = _check_text("name", spec.name, 200, required=True)
        default_grants = [GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN] if spec.public else [GRANT_CLIENT_CREDENTIALS]
        grant_types = _check_grant_types(spec.grant_types or default_grants, spec.public)
        scopes = _check_scopes(spec.scopes)
        redirect_uris = [_check_redirect_uri(u) for u in spec.redirect_uris]
        _check_redirects_for_grants(grant_types, redirect_uris)
        post_logout_redirect_uris = _check_post_logout_redirect_uris(spec.post_logout_redirect_uris)
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
        allow_public_password_grant = _check_public_password_grant(bool(spec.allow_public_password_grant),
                                                                   spec.public)
        absolute = _check_absolute_lifetime(spec.refresh_token_absolute_lifetime or 0)

        client_id = secrets.token_hex(16)
        secret = "" if spec.public else new_client_secret()
        async with self.pool.acquire() as conn, conn.transaction():
            await require_catalog_scopes(conn, scopes)
            row = await conn.fetchrow(
                f"INSERT INTO clients (client_id, name, secret_hash, public, grant_types, scopes, redirect_uris,"
                f" access_token_lifetime, refresh_token_lifetime, token_format, pkce_required, logo_url, comments,"
                f" allow_public_password_grant, refresh_token_absolute_lifetime, post_logout_redirect_uris)"
                f" VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16) RETURNING {_CLIENT_COLUMNS}",
                client_id, name, hash_client_secret(secret) if secret else None, spec.public, grant_types, scopes,
                redirect_uris, access, refresh, token_format, pkce_required, logo_url, comments,
                allow_public_password_grant, absolute, post_logout_redirect_uris,
            )
        log.info("client created", extra={"client_id": client_id})
        self._changed(client_id, "created")
        return _client(row), secret

    async def get_clients(self, client_ids: list[str]) -> list[ClientRecord | None]:
        """One answer per id, in order. An id no client can have (control characters,
        over-long) is not found without asking Postgres. A lookup Postgres refuses
        (statement timeout, cancelled, a lock) raises: "no such client" would make
        callers forget a real client and refuse it, so only the rows decide that."""
        wanted = list({c for c in client_ids if is_plausible_id(c)})
        found: dict[str, ClientRecord] = {}
        if wanted:
            rows = await self.pool.fetch(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = ANY($1::text[])",
                                         wanted)
            found = {row["client_id"]: _client(row) for row in rows}
        return [found.get(client_id) for client_id in client_ids]

    async def get_client(self, client_id: str) -> ClientRecord | None:
        return (await self.get_clients([client_id]))[0]

    async def list_clients(self) -> list[ClientRecord]:
        rows = await self.pool.fetch(f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY created_at, client_id")
        return [_client(row) for row in rows]

    async def update_client(self, client_id: str, update: ClientUpdate) -> ClientRecord:
        async with self.pool.acquire() as conn, conn.transaction():
            row = None if not is_plausible_id(client_id) else await conn.fetchrow(
                f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = $1 FOR UPDATE", client_id)
            if row is None:
                raise NotFound("no such client")
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
                "allow_public_password_grant": current.allow_public_password_grant
                if update.allow_public_password_grant is None
                else _check_public_password_grant(update.allow_public_password_grant, current.public),
                "refresh_token_absolute_lifetime": current.refresh_token_absolute_lifetime
                if update.refresh_token_absolute_lifetime is None
                else _check_absolute_lifetime(update.refresh_token_absolute_lifetime),
                "post_logout_redirect_uris": list(current.post_logout_redirect_uris)
                if update.post_logout_redirect_uris is None
                else _check_post_logout_redirect_uris(update.post_logout_redirect_uris),
            }
            if update.scopes is not None:
                await require_catalog_scopes(conn, values["scopes"])
            row = await conn.fetchrow(
                f"UPDATE clients SET active=$2, name=$3, grant_types=$4, scopes=$5, redirect_uris=$6,"
                f" access_token_lifetime=$7, refresh_token_lifetime=$8, token_format=$9, pkce_required=$10,"
                f" logo_url=$11, comments=$12, allow_public_password_grant=$13, refresh_token_absolute_lifetime=$14,"
                f" post_logout_redirect_uris=$15, updated_at=now() WHERE client_id=$1 RETURNING {_CLIENT_COLUMNS}",
                client_id, *values.values(),
            )
            cut_off = None
            if current.active and not values["active"]:
                # Disabling revokes what the client holds: enabling it again (after a
                # secret rotation, say) must not bring stolen tokens back.
                cut_off = await record_cut_off(conn, client_cut_off, client_id, "client disabled")
            elif values["active"] and not current.active:
                # Tokens minted while it was disabled (requests already authenticated, caches
                # not yet told, answers served stale while the registry was away) were
                # inactive only because their client was: enabling must not bring them back.
                cut_off = await record_cut_off(conn, client_cut_off, client_id, "client enabled")
        log.info("client updated", extra={"client_id": client_id})
        self._changed(client_id, "updated")
        publish_cut_off(self.events, cut_off)
        return _client(row)

    async def delete_client(self, client_id: str) -> bool:
        if not is_plausible_id(client_id):
            return False
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute("DELETE FROM clients WHERE client_id = $1", client_id)
            deleted = status.endswith(" 1")
            # Its stored tokens go with it (ON DELETE CASCADE), but JWTs live on: the
            # cut-off lets a checker refuse them without asking whether the client exists.
            cut_off = await record_cut_off(conn, client_cut_off, client_id, "client deleted") if deleted else None
        if deleted:
            log.info("client deleted", extra={"client_id": client_id})
            self._changed(client_id, "deleted")
            publish_cut_off(self.events, cut_off)
        return deleted

    async def rotate_client_secret(self, client_id: str) -> tuple[ClientRecord, str]:
        if not is_plausible_id(client_id):
            raise NotFound("no such client")
        secret = new_client_secret()
        row = await self.pool.fetchrow(
            f"UPDATE clients SET secret_hash=$2, secret_rotated_at=now(), updated_at=now()"
            f" WHERE client_id=$1 AND NOT public RETURNING {_CLIENT_COLUMNS}",
            client_id, hash_client_secret(secret),
        )
        if row is None:
            exists = await self.pool.fetchval("SELECT public FROM clients WHERE client_id=$1", client_id)
            if exists is None:
                raise NotFound("no such client")
            raise InvalidArgument("a public client has no secret")
        log.info("client secret rotated", extra={"client_id": client_id})
        self._changed(client_id, "secret_rotated")
        return _client(row), secret

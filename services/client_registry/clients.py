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
from cryptography.exceptions import InvalidTag

from inboundlib.events import ENTITY_CLIENT, EventBus, registry_changed, registry_subject
from inboundlib.kek import KeyEncryptor, client_secret_label, integration_secret_label
from inboundlib.oauth.client_auth import (
    AUTH_METHODS,
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_JWT,
    CLIENT_SECRET_POST,
    NONE,
    PRIVATE_KEY_JWT,
    hash_client_secret,
    new_client_secret,
)
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
    SecretRewrap,
    client_cut_off,
    is_plausible_id,
)
from services.client_registry.pg import ts
from services.client_registry.revocations import publish_cut_off, record_cut_off
from services.client_registry.scopes import require_catalog_scopes
from services.client_registry.trust import (
    check_auth_signing_alg,
    check_client_keys,
    check_exchange_policy,
    check_text,
    exchange_policy_from_json,
    exchange_policy_to_json,
)

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")

# --- validation: one rule a function -------------------------------------------------------------

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


# Methods that prove the client with its secret (RFC 6749 §2.3.1; RFC 7523 §2.2 client_secret_jwt).
SECRET_METHODS = (CLIENT_SECRET_BASIC, CLIENT_SECRET_POST, CLIENT_SECRET_JWT)


def _check_auth_method(method: str, public: bool) -> str:
    """RFC 7591 §2: one method per client; a public client has none, a confidential one must
    use one (RFC 6749 §2.1)."""
    if method not in AUTH_METHODS:
        raise InvalidArgument(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
    if public and method != NONE:
        raise InvalidArgument("a public client authenticates with none")
    if not public and method == NONE:
        raise InvalidArgument("a confidential client needs an authentication method other than none")
    return method


def _check_redirects_for_grants(grant_types: list[str], redirect_uris: list[str]) -> None:
    if not redirect_uris and (GRANT_AUTHORIZATION_CODE in grant_types or GRANT_IMPLICIT in grant_types):
        raise InvalidArgument("authorization_code and implicit clients need at least one redirect URI")


_CLIENT_COLUMNS = (
    "client_id, name, secret_hash, public, grant_types, scopes, redirect_uris, access_token_lifetime,"
    " refresh_token_lifetime, token_format, pkce_required, active, logo_url, comments, created_at, updated_at,"
    " secret_rotated_at, allow_public_password_grant, refresh_token_absolute_lifetime, post_logout_redirect_uris,"
    " token_endpoint_auth_method, jwks, jwks_uri, token_endpoint_auth_signing_alg, token_exchange::text"
    " AS token_exchange"
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
        token_endpoint_auth_method=row["token_endpoint_auth_method"], jwks=row["jwks"], jwks_uri=row["jwks_uri"],
        token_endpoint_auth_signing_alg=row["token_endpoint_auth_signing_alg"],
        token_exchange=exchange_policy_from_json(row["token_exchange"]),
    )


def _kept_signing_alg(method: str, alg: str) -> str:
    """The signing alg a client keeps when its method changes: its own while the new method
    accepts it, else "" (any the key allows)."""
    try:
        return check_auth_signing_alg(method, alg)
    except InvalidArgument:
        return ""


def _auth_values(current: ClientRecord, update: ClientUpdate, *, has_secret: bool) -> dict[str, str]:
    """The authentication fields after `update`, checked. A change to a method that needs a
    secret the registry cannot produce from a hash (client_secret_jwt: the secret itself
    must be sealed; basic or post without any secret) goes through rotate_client_secret,
    which makes one and answers it once. Keys go with private_key_jwt; naming one key
    source replaces the other."""
    method = _check_auth_method(update.token_endpoint_auth_method or current.token_endpoint_auth_method,
                                current.public)
    if method != current.token_endpoint_auth_method and (
            method == CLIENT_SECRET_JWT or (method in SECRET_METHODS and not has_secret)):
        raise InvalidArgument(f"moving a client to {method} issues a new secret: rotate its secret with that"
                              " method (inboundctl client rotate-secret --auth-method)")
    jwks = current.jwks if update.jwks is None else update.jwks
    jwks_uri = current.jwks_uri if update.jwks_uri is None else update.jwks_uri
    if update.jwks and update.jwks_uri is None:
        jwks_uri = ""
    if update.jwks_uri and update.jwks is None:
        jwks = ""
    if method != PRIVATE_KEY_JWT and update.jwks is None and update.jwks_uri is None:
        jwks, jwks_uri = "", ""  # moving away from private_key_jwt: its keys go with it
    jwks, jwks_uri = check_client_keys(method, jwks, jwks_uri)
    signing_alg = (check_auth_signing_alg(method, update.token_endpoint_auth_signing_alg)
                   if update.token_endpoint_auth_signing_alg is not None
                   else _kept_signing_alg(method, current.token_endpoint_auth_signing_alg))
    return {"token_endpoint_auth_method": method, "jwks": jwks, "jwks_uri": jwks_uri,
            "token_endpoint_auth_signing_alg": signing_alg}


class ClientRepository:
    """Implements api.ClientStore and api.ClientSecretReader over Postgres.

    Secrets: every confidential client with a secret method keeps the secret's SHA-256;
    a client_secret_jwt client also keeps the secret itself, sealed under the
    key-encryption key (`encryptor`; associated data "client:<client_id>"), because an
    HMAC assertion can only be checked with it. Without key-encryption keys the
    registry refuses client_secret_jwt (it would have to store the secret in clear)."""

    def __init__(self, pool: asyncpg.Pool, events: EventBus | None, encryptor: KeyEncryptor | None = None):
        self.pool = pool
        self.events = events
        self.encryptor = encryptor

    def _seal(self, client_id: str, secret: str) -> bytes:
        if self.encryptor is None:
            raise InvalidArgument("client_secret_jwt needs the registry's key-encryption keys"
                                  " (INBOUND_KEY_ENCRYPTION_KEYS_FILE): none are configured")
        return self.encryptor.encrypt(client_secret_label(client_id), secret.encode())

    def _changed(self, client_id: str, change: str) -> None:
        if self.events is not None:
            self.events.publish(registry_subject(ENTITY_CLIENT), registry_changed(ENTITY_CLIENT, client_id, change))

    # --- clients --------------------------------------------------------------------------------

    async def create_client(self, spec: ClientSpec) -> tuple[ClientRecord, str]:
        name = check_text("name", spec.name, 200, required=True)
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
        comments = check_text("comments", spec.comments, 2000)
        allow_public_password_grant = _check_public_password_grant(bool(spec.allow_public_password_grant),
                                                                   spec.public)
        absolute = _check_absolute_lifetime(spec.refresh_token_absolute_lifetime or 0)
        method = _check_auth_method(spec.token_endpoint_auth_method
                                    or (NONE if spec.public else CLIENT_SECRET_BASIC), spec.public)
        jwks, jwks_uri = check_client_keys(method, spec.jwks, spec.jwks_uri)
        signing_alg = check_auth_signing_alg(method, spec.token_endpoint_auth_signing_alg)
        exchange = check_exchange_policy(spec.token_exchange, scopes, public=spec.public or method == NONE)

        client_id = secrets.token_hex(16)
        # Only the secret methods have a secret (RFC 7591 §3.2.1); private_key_jwt proves itself with its key.
        secret = new_client_secret() if method in SECRET_METHODS else ""
        sealed = self._seal(client_id, secret) if method == CLIENT_SECRET_JWT else None
        async with self.pool.acquire() as conn, conn.transaction():
            await require_catalog_scopes(conn, scopes)
            row = await conn.fetchrow(
                f"INSERT INTO clients (client_id, name, secret_hash, public, grant_types, scopes, redirect_uris,"
                f" access_token_lifetime, refresh_token_lifetime, token_format, pkce_required, logo_url, comments,"
                f" allow_public_password_grant, refresh_token_absolute_lifetime, post_logout_redirect_uris,"
                f" token_endpoint_auth_method, jwks, jwks_uri, token_endpoint_auth_signing_alg, token_exchange,"
                f" sealed_secret)"
                f" VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21::jsonb,$22)"
                f" RETURNING {_CLIENT_COLUMNS}",
                client_id, name, hash_client_secret(secret) if secret else None, spec.public, grant_types, scopes,
                redirect_uris, access, refresh, token_format, pkce_required, logo_url, comments,
                allow_public_password_grant, absolute, post_logout_redirect_uris,
                method, jwks, jwks_uri, signing_alg, exchange_policy_to_json(exchange), sealed,
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
                "name": current.name if update.name is None else check_text("name", update.name, 200, required=True),
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
                else check_text("comments", update.comments, 2000),
                "allow_public_password_grant": current.allow_public_password_grant
                if update.allow_public_password_grant is None
                else _check_public_password_grant(update.allow_public_password_grant, current.public),
                "refresh_token_absolute_lifetime": current.refresh_token_absolute_lifetime
                if update.refresh_token_absolute_lifetime is None
                else _check_absolute_lifetime(update.refresh_token_absolute_lifetime),
                "post_logout_redirect_uris": list(current.post_logout_redirect_uris)
                if update.post_logout_redirect_uris is None
                else _check_post_logout_redirect_uris(update.post_logout_redirect_uris),
                **_auth_values(current, update, has_secret=row["secret_hash"] is not None),
            }
            values["token_exchange"] = exchange_policy_to_json(check_exchange_policy(
                None if update.clear_token_exchange else update.token_exchange if update.token_exchange is not None
                else current.token_exchange, values["scopes"],
                public=current.public or values["token_endpoint_auth_method"] == NONE))
            if update.scopes is not None:
                await require_catalog_scopes(conn, values["scopes"])
            row = await conn.fetchrow(
                f"UPDATE clients SET active=$2, name=$3, grant_types=$4, scopes=$5, redirect_uris=$6,"
                f" access_token_lifetime=$7, refresh_token_lifetime=$8, token_format=$9, pkce_required=$10,"
                f" logo_url=$11, comments=$12, allow_public_password_grant=$13, refresh_token_absolute_lifetime=$14,"
                f" post_logout_redirect_uris=$15, token_endpoint_auth_method=$16, jwks=$17, jwks_uri=$18,"
                f" token_endpoint_auth_signing_alg=$19, token_exchange=$20::jsonb,"
                # Away from client_secret_jwt the sealed copy goes (the hash stays: the client keeps its
                # secret for basic or post); to private_key_jwt the hash goes too (no secret is used).
                f" sealed_secret = CASE WHEN $16 = '{CLIENT_SECRET_JWT}' THEN sealed_secret END,"
                f" secret_hash = CASE WHEN $16 = ANY($21::text[]) THEN secret_hash END,"
                f" updated_at=now() WHERE client_id=$1 RETURNING {_CLIENT_COLUMNS}",
                client_id, *values.values(), list(SECRET_METHODS),
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

    async def rotate_client_secret(self, client_id: str,
                                   token_endpoint_auth_method: str | None = None) -> tuple[ClientRecord, str]:
        """A new secret, answered once (only its hash is kept, and for client_secret_jwt its
        sealed copy). With `token_endpoint_auth_method` (a secret method), the client moves to
        it in the same step: the way to client_secret_jwt, whose secret must be sealed when
        it is made, and back to a secret from private_key_jwt."""
        if not is_plausible_id(client_id):
            raise NotFound("no such client")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = $1 FOR UPDATE",
                                      client_id)
            if row is None:
                raise NotFound("no such client")
            current = _client(row)
            if current.public:
                raise InvalidArgument("a public client has no secret")
            method = _check_auth_method(token_endpoint_auth_method or current.token_endpoint_auth_method, False)
            if method not in SECRET_METHODS:
                raise InvalidArgument(f"a {method} client has no secret; rotate to one of {', '.join(SECRET_METHODS)}")
            secret = new_client_secret()
            sealed = self._seal(client_id, secret) if method == CLIENT_SECRET_JWT else None
            signing_alg = _kept_signing_alg(method, current.token_endpoint_auth_signing_alg)
            row = await conn.fetchrow(
                f"UPDATE clients SET secret_hash=$2, sealed_secret=$3, token_endpoint_auth_method=$4,"
                f" token_endpoint_auth_signing_alg=$5, jwks='', jwks_uri='', secret_rotated_at=now(), updated_at=now()"
                f" WHERE client_id=$1 RETURNING {_CLIENT_COLUMNS}",
                client_id, hash_client_secret(secret), sealed, method, signing_alg,
            )
        log.info("client secret rotated", extra={"client_id": client_id})
        self._changed(client_id, "secret_rotated")
        return _client(row), secret

    async def rewrap_sealed_secrets(self) -> SecretRewrap:
        """Re-encrypt every sealed shared secret (client_secret_jwt clients', HS256 JWT-bearer
        integrations') under the first key-encryption key, so the older keys can be dropped
        (README, "Signing keys and rotation"). Each is replaced by compare-and-swap on its
        stored blob: a rotation meanwhile (sealed under the first key already) is kept, and a
        second rewrap at once loses nothing. The plaintext never leaves this process."""
        rewrapped = current = 0
        unreadable: list[str] = []
        for table, key, label_of in (("clients", "client_id", client_secret_label),
                                     ("jwt_bearer_integrations", "id", integration_secret_label)):
            rows = await self.pool.fetch(f"SELECT {key} AS id, sealed_secret FROM {table}"
                                         f" WHERE sealed_secret IS NOT NULL ORDER BY {key}")
            for row in rows:
                label, blob = label_of(row["id"]), bytes(row["sealed_secret"])
                try:
                    if self.encryptor is None:
                        raise InvalidTag()
                    secret, index = self.encryptor.decrypt_with_index(label, blob)
                except InvalidTag:
                    unreadable.append(label)
                    continue
                if index == 0:
                    current += 1
                    continue
                status = await self.pool.execute(
                    f"UPDATE {table} SET sealed_secret = $2 WHERE {key} = $1 AND sealed_secret = $3",
                    row["id"], self.encryptor.encrypt(label, secret), blob)
                if status.endswith(" 1"):
                    rewrapped += 1
                else:  # rotated (sealed under the first key) or deleted meanwhile
                    current += 1
        if unreadable:
            log.error("sealed secrets no key-encryption key opens", extra={"count": len(unreadable)})
        log.info("sealed secrets rewrapped", extra={"rewrapped": rewrapped, "current": current})
        return SecretRewrap(rewrapped=rewrapped, current=current, unreadable=tuple(unreadable))

    async def get_client_secrets(self, client_ids: list[str]) -> list[bytes]:
        """api.ClientSecretReader: the sealed secrets of client_secret_jwt clients, in order
        (b"" for any other or unknown client). Never opened here: jwt_bearer opens them."""
        wanted = list({c for c in client_ids if is_plausible_id(c)})
        found: dict[str, bytes] = {}
        if wanted:
            rows = await self.pool.fetch(
                "SELECT client_id, sealed_secret FROM clients WHERE client_id = ANY($1::text[])"
                " AND sealed_secret IS NOT NULL AND token_endpoint_auth_method = $2", wanted, CLIENT_SECRET_JWT)
            found = {row["client_id"]: bytes(row["sealed_secret"]) for row in rows}
        return [found.get(client_id, b"") for client_id in client_ids]

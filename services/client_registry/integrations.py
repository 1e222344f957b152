"""JWT-bearer integrations over Postgres: implements api.IntegrationStore (RFC 7523 §2.1).

An integration says whose assertions (`iss`) a client may trade for tokens, signed with
which keys (exactly one source: an https JWKS URL, an inline JWKS, one PEM certificate, or,
only when the operator allows HS256, a shared secret), standing for whom (a user matched on
a field, or the client itself), with optional claim rules. The shared secret is sealed
under the key-encryption key (associated data "integration:<id>") before it is stored and
never travels in the record: jwt_bearer alone reads it (get_integration_secrets) and opens
it. Every change publishes RegistryChanged(integration) so jwt_bearer's caches follow.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import replace

import asyncpg

from inboundlib.events import ENTITY_INTEGRATION, INTEGRATION_CHANGED, EventBus, registry_changed
from inboundlib.kek import KeyEncryptor, integration_secret_label
from inboundlib.oauth.scopes import is_valid_scope_token
from services.client_registry.api import (
    CLAIM_OPERATORS,
    USER_FIELDS,
    AlreadyExists,
    ClaimRule,
    InvalidArgument,
    JwtBearerIntegration,
    NotFound,
    is_plausible_id,
)
from services.client_registry.pg import ts
from services.client_registry.trust import (
    ASYMMETRIC_ALGORITHMS,
    check_algorithms,
    check_certificate_pem,
    check_https_url,
    check_jwks,
    check_text,
)

log = logging.getLogger(__name__)

SUBJECT_KINDS = ("user", "client")
# RFC 7518 §3.2: an HMAC key as long as the hash at least.
MIN_HMAC_SECRET = 32
MAX_HMAC_SECRET = 512
MAX_RULES = 50
MAX_LIFETIME = 86_400
_CLAIM_NAME = re.compile(r"^[A-Za-z0-9_:.\-]{1,128}$")
_COLUMNS = ("id, name, client_id, issuer, jwks_uri, jwks, certificate_pem, kid, algorithms, allow_hs256,"
            " subject_kind, user_field, claim_rules::text AS claim_rules, scopes, max_assertion_lifetime,"
            " require_jti, active, created_at, updated_at")


def _integration(row: asyncpg.Record) -> JwtBearerIntegration:
    return JwtBearerIntegration(
        id=row["id"], name=row["name"], client_id=row["client_id"], issuer=row["issuer"], jwks_uri=row["jwks_uri"],
        jwks=row["jwks"], certificate_pem=row["certificate_pem"], kid=row["kid"],
        algorithms=tuple(row["algorithms"]), allow_hs256=row["allow_hs256"], subject_kind=row["subject_kind"],
        user_field=row["user_field"], claim_rules=tuple(ClaimRule(**r) for r in json.loads(row["claim_rules"])),
        scopes=tuple(row["scopes"]), max_assertion_lifetime=row["max_assertion_lifetime"],
        require_jti=row["require_jti"], active=row["active"], created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]))


def _check_claim_rules(rules: tuple[ClaimRule, ...]) -> list[dict[str, str]]:
    if len(rules) > MAX_RULES:
        raise InvalidArgument(f"at most {MAX_RULES} claim rules")
    checked = []
    for position, rule in enumerate(rules, 1):
        if not _CLAIM_NAME.match(rule.claim):
            raise InvalidArgument(f"claim rule {position}: a claim name is 1 to 128 of A-Z a-z 0-9 _ : . -")
        if rule.operator not in CLAIM_OPERATORS:
            raise InvalidArgument(f"claim rule {position}: the operator is one of {', '.join(CLAIM_OPERATORS)}")
        checked.append({"claim": rule.claim, "operator": rule.operator,
                        "value": check_text(f"claim rule {position}'s value", rule.value, 1000)})
    return checked


def _check_secret(secret: bytes) -> bytes:
    if not MIN_HMAC_SECRET <= len(secret) <= MAX_HMAC_SECRET:
        raise InvalidArgument(f"an HS256 secret is {MIN_HMAC_SECRET} to {MAX_HMAC_SECRET} bytes (RFC 7518 §3.2)")
    return secret


def _check(integration: JwtBearerIntegration, has_secret: bool) -> JwtBearerIntegration:
    """The record's rules, one at a time; `has_secret`: an HS256 secret is (or will be) stored."""
    sources = [s for s in (integration.jwks_uri, integration.jwks, integration.certificate_pem) if s]
    if has_secret and not integration.allow_hs256:
        raise InvalidArgument("a shared secret needs allow_hs256 (the operator's explicit choice)")
    if len(sources) + has_secret != 1:
        raise InvalidArgument("an integration trusts exactly one key source: jwks_uri, jwks, certificate_pem,"
                              " or (with allow_hs256) an HS256 secret")
    allowed = ("HS256",) if has_secret else ASYMMETRIC_ALGORITHMS
    if integration.subject_kind not in SUBJECT_KINDS:
        raise InvalidArgument(f"subject_kind is one of {', '.join(SUBJECT_KINDS)}")
    if integration.user_field not in USER_FIELDS:
        raise InvalidArgument(f"user_field is one of {', '.join(USER_FIELDS)}")
    bad_scopes = [s for s in integration.scopes if not is_valid_scope_token(s)]
    if bad_scopes:
        raise InvalidArgument("malformed scopes")
    if not 0 < integration.max_assertion_lifetime <= MAX_LIFETIME:
        raise InvalidArgument(f"max_assertion_lifetime is 1 to {MAX_LIFETIME} seconds")
    if integration.kid and not is_plausible_id(integration.kid):
        raise InvalidArgument("kid is 1 to 256 printable characters")
    _check_claim_rules(integration.claim_rules)
    return replace(
        integration,
        name=check_text("name", integration.name, 200, required=True),
        issuer=check_text("issuer", integration.issuer, 2000, required=True),
        jwks_uri=check_https_url("jwks_uri", integration.jwks_uri) if integration.jwks_uri else "",
        jwks=check_jwks("jwks", integration.jwks) if integration.jwks else "",
        certificate_pem=check_certificate_pem("certificate_pem", integration.certificate_pem)
        if integration.certificate_pem else "",
        algorithms=tuple(check_algorithms("algorithms", integration.algorithms, allowed)),
        scopes=tuple(dict.fromkeys(integration.scopes)))


async def _require_client(conn: asyncpg.Connection, integration: JwtBearerIntegration) -> None:
    """The client exists, and the integration's scopes are within its own (its tokens never carry
    more than the client may hold). Holds the client's row until the write commits."""
    scopes = None if not is_plausible_id(integration.client_id) else await conn.fetchval(
        "SELECT scopes FROM clients WHERE client_id = $1 FOR SHARE", integration.client_id)
    if scopes is None:
        raise InvalidArgument("no such client")
    beyond = sorted(set(integration.scopes) - set(scopes))
    if beyond:
        raise InvalidArgument(f"scopes the client does not have: {beyond}")


class IntegrationRepository:
    def __init__(self, pool: asyncpg.Pool, events: EventBus | None, encryptor: KeyEncryptor | None = None):
        self.pool = pool
        self.events = events
        self.encryptor = encryptor

    def _changed(self, integration_id: str, change: str) -> None:
        if self.events is not None:
            self.events.publish(INTEGRATION_CHANGED, registry_changed(ENTITY_INTEGRATION, integration_id, change))

    def _seal(self, integration_id: str, secret: bytes) -> bytes:
        if self.encryptor is None:
            raise InvalidArgument("an HS256 integration needs the registry's key-encryption keys"
                                  " (INBOUND_KEY_ENCRYPTION_KEYS_FILE): none are configured")
        return self.encryptor.encrypt(integration_secret_label(integration_id), secret)

    async def create_integration(self, integration: JwtBearerIntegration,
                                 hmac_secret: bytes = b"") -> JwtBearerIntegration:
        """A new integration under a new id (the record's id is ignored)."""
        checked = _check(integration, has_secret=bool(hmac_secret))
        integration_id = str(uuid.uuid4())
        sealed = self._seal(integration_id, _check_secret(hmac_secret)) if hmac_secret else None
        async with self.pool.acquire() as conn, conn.transaction():
            await _require_client(conn, checked)
            try:
                row = await conn.fetchrow(
                    f"INSERT INTO jwt_bearer_integrations (id, name, client_id, issuer, jwks_uri, jwks,"
                    f" certificate_pem, kid, algorithms, allow_hs256, sealed_secret, subject_kind, user_field,"
                    f" claim_rules, scopes, max_assertion_lifetime, require_jti, active)"
                    f" VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14::jsonb,$15,$16,$17,$18)"
                    f" RETURNING {_COLUMNS}",
                    integration_id, checked.name, checked.client_id, checked.issuer, checked.jwks_uri, checked.jwks,
                    checked.certificate_pem, checked.kid, list(checked.algorithms), checked.allow_hs256, sealed,
                    checked.subject_kind, checked.user_field, json.dumps(_check_claim_rules(checked.claim_rules)),
                    list(checked.scopes), checked.max_assertion_lifetime, checked.require_jti, checked.active)
            except asyncpg.UniqueViolationError:
                raise AlreadyExists("an integration with that name exists already") from None
        log.info("integration created", extra={"integration_id": integration_id, "client_id": checked.client_id})
        self._changed(integration_id, "created")
        return _integration(row)

    async def get_integration(self, id: str) -> JwtBearerIntegration | None:
        if not is_plausible_id(id):
            return None
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM jwt_bearer_integrations WHERE id = $1", id)
        return _integration(row) if row is not None else None

    async def find_integrations(self, client_id: str, issuer: str) -> list[JwtBearerIntegration]:
        """The integrations of (client, iss), active or not (the grant refuses inactive ones itself)."""
        if not is_plausible_id(client_id) or len(issuer) > 2000:
            return []
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM jwt_bearer_integrations"
                                     f" WHERE client_id = $1 AND issuer = $2 ORDER BY created_at, id", client_id, issuer)
        return [_integration(row) for row in rows]

    async def list_integrations(self) -> list[JwtBearerIntegration]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM jwt_bearer_integrations ORDER BY created_at, id")
        return [_integration(row) for row in rows]

    async def update_integration(self, integration: JwtBearerIntegration,
                                 hmac_secret: bytes | None = None) -> JwtBearerIntegration:
        """Replaces integration `integration.id` with this record (its client stays). `hmac_secret`:
        None keeps the stored secret while the integration is still HS256 (a move to another key
        source drops it); bytes replace it (sealed)."""
        async with self.pool.acquire() as conn, conn.transaction():
            current = None if not is_plausible_id(integration.id) else await conn.fetchrow(
                "SELECT client_id, sealed_secret FROM jwt_bearer_integrations WHERE id = $1 FOR UPDATE",
                integration.id)
            if current is None:
                raise NotFound("no such integration")
            other_source = bool(integration.jwks_uri or integration.jwks or integration.certificate_pem)
            if hmac_secret:
                sealed = self._seal(integration.id, _check_secret(hmac_secret))
            elif other_source or hmac_secret == b"":
                sealed = None
            else:
                sealed = current["sealed_secret"]
            checked = _check(replace(integration, client_id=current["client_id"]), has_secret=sealed is not None)
            await _require_client(conn, checked)
            try:
                row = await conn.fetchrow(
                    f"UPDATE jwt_bearer_integrations SET name=$2, issuer=$3, jwks_uri=$4, jwks=$5,"
                    f" certificate_pem=$6, kid=$7, algorithms=$8, allow_hs256=$9, sealed_secret=$10,"
                    f" subject_kind=$11, user_field=$12, claim_rules=$13::jsonb, scopes=$14,"
                    f" max_assertion_lifetime=$15, require_jti=$16, active=$17, updated_at=now()"
                    f" WHERE id = $1 RETURNING {_COLUMNS}",
                    checked.id, checked.name, checked.issuer, checked.jwks_uri, checked.jwks, checked.certificate_pem,
                    checked.kid, list(checked.algorithms), checked.allow_hs256, sealed, checked.subject_kind,
                    checked.user_field, json.dumps(_check_claim_rules(checked.claim_rules)), list(checked.scopes),
                    checked.max_assertion_lifetime, checked.require_jti, checked.active)
            except asyncpg.UniqueViolationError:
                raise AlreadyExists("an integration with that name exists already") from None
        log.info("integration updated", extra={"integration_id": checked.id})
        self._changed(checked.id, "updated")
        return _integration(row)

    async def delete_integration(self, id: str) -> bool:
        if not is_plausible_id(id):
            return False
        status = await self.pool.execute("DELETE FROM jwt_bearer_integrations WHERE id = $1", id)
        deleted = status.endswith(" 1")
        if deleted:
            log.info("integration deleted", extra={"integration_id": id})
            self._changed(id, "deleted")
        return deleted

    async def get_integration_secrets(self, ids: list[str]) -> list[bytes]:
        """The sealed HS256 secrets, in order (b"" for none or unknown). Never opened here."""
        wanted = list({i for i in ids if is_plausible_id(i)})
        found: dict[str, bytes] = {}
        if wanted:
            rows = await self.pool.fetch("SELECT id, sealed_secret FROM jwt_bearer_integrations"
                                         " WHERE id = ANY($1::text[]) AND sealed_secret IS NOT NULL", wanted)
            found = {row["id"]: bytes(row["sealed_secret"]) for row in rows}
        return [found.get(i, b"") for i in ids]

"""token_issuer's signing keys over Postgres. Private keys arrive encrypted by
token_issuer (AES-256-GCM under its key-encryption key): the registry never
holds one in clear. Adding one publishes RegistryChanged(signing_key)."""
from __future__ import annotations

import logging

import asyncpg

from inboundlib.events import ENTITY_SIGNING_KEY, EventBus, registry_changed, registry_subject
from services.client_registry.api import InvalidArgument, SigningKeyRecord, is_plausible_id
from services.client_registry.pg import from_ts, plausible_time, ts

log = logging.getLogger(__name__)


class SigningKeyRepository:
    """Implements api.SigningKeyStore over Postgres."""

    def __init__(self, pool: asyncpg.Pool, events: EventBus | None):
        self.pool = pool
        self.events = events

    async def list_signing_keys(self) -> list[SigningKeyRecord]:
        rows = await self.pool.fetch(
            "SELECT kid, alg, encrypted_private_key, public_jwk, created_at, activates_at FROM signing_keys"
            " ORDER BY activates_at, created_at")
        return [SigningKeyRecord(kid=r["kid"], alg=r["alg"], encrypted_private_key=bytes(r["encrypted_private_key"]),
                                 public_jwk_json=r["public_jwk"], created_at=ts(r["created_at"]),
                                 activates_at=ts(r["activates_at"])) for r in rows]

    async def add_signing_key(self, key: SigningKeyRecord, only_if_none: bool) -> bool:
        if not is_plausible_id(key.kid) or not plausible_time(key.activates_at):
            raise InvalidArgument("a signing key needs a printable kid and an activation time")
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # Serialises the first start of several token_issuer replicas: one key per
                # algorithm, not one each. `only_if_none` asks about the key's algorithm alone: an
                # issuer signing ID tokens with RS256 beside ES256 access tokens needs one of each.
                await conn.execute("SELECT pg_advisory_xact_lock(7001)")
                if only_if_none and await conn.fetchval("SELECT count(*) FROM signing_keys WHERE alg = $1", key.alg):
                    return False
                await conn.execute(
                    # created_at from the database clock, to the microsecond: it orders two
                    # rotations within one second (the later one signs).
                    "INSERT INTO signing_keys (kid, alg, encrypted_private_key, public_jwk, created_at,"
                    " activates_at) VALUES ($1, $2, $3, $4, clock_timestamp(), $5)",
                    key.kid, key.alg, key.encrypted_private_key, key.public_jwk_json, from_ts(key.activates_at))
        except asyncpg.UniqueViolationError:
            return False  # the same key twice (a retried call): it is there
        except asyncpg.CheckViolationError:
            raise InvalidArgument(f"unsupported signing algorithm {key.alg!r}") from None
        log.info("signing key added", extra={"kid": key.kid, "alg": key.alg})
        if self.events is not None:
            self.events.publish(registry_subject(ENTITY_SIGNING_KEY),
                                registry_changed(ENTITY_SIGNING_KEY, key.kid, "created"))
        return True

    async def rewrap_signing_key(self, kid: str, expected: bytes, encrypted_private_key: bytes) -> bool:
        """Compare-and-swap of one key's ciphertext: replaced only while the stored one is
        `expected`, so a rewrap never overwrites another's newer one. Nothing else of the
        key changes (the same key, encrypted again): no event, replicas keep what they hold."""
        if not is_plausible_id(kid) or not encrypted_private_key:
            raise InvalidArgument("a rewrap needs a kid and the new ciphertext")
        status = await self.pool.execute(
            "UPDATE signing_keys SET encrypted_private_key = $3 WHERE kid = $1 AND encrypted_private_key = $2",
            kid, expected, encrypted_private_key)
        replaced = status == "UPDATE 1"
        log.info("signing key rewrapped" if replaced else "signing key not rewrapped: changed meanwhile",
                 extra={"kid": kid})
        return replaced

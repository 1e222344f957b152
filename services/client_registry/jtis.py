"""The used-jti store over Postgres: implements api.JtiStore (replay refusal for JWTs
Inbound accepts from others: client assertions, JWT-bearer assertions, providers' tokens;
RFC 7523 §3 item 7, RFC 7519 §4.1.7).

A claim is one INSERT ... ON CONFLICT: the first use of (namespace, jti) inserts its row
and wins; a second use while that row lives finds it and loses; a row whose time is over
counts as free (its token can no longer be accepted anyway, and the purge may not have
come by yet), so the new use takes it over. Concurrent claims of one jti meet at its
primary key: exactly one wins, whatever the replicas. Expired rows are purged in bounded
batches beside the registry's other purges.
"""
from __future__ import annotations

import asyncpg

from services.client_registry.api import ItemError, JtiClaim, is_plausible_id
from services.client_registry.pg import batch_then_items, from_ts, plausible_time

# The namespaces the JWT validator uses: one per trust, so one issuer's jti cannot block another's.
NAMESPACE_PREFIXES = ("client:", "integration:", "provider:")
PURGE_BATCH = 10_000

_CLAIM = """
INSERT INTO used_jtis AS u (namespace, jti, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT (namespace, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE u.expires_at <= now()
RETURNING namespace, jti
"""


def _problem(claim: JtiClaim) -> str | None:
    if not is_plausible_id(claim.namespace) or not claim.namespace.startswith(NAMESPACE_PREFIXES):
        return "a jti namespace is client:<id>, integration:<id> or provider:<name>"
    if not is_plausible_id(claim.jti):
        return "a jti is 1 to 256 printable characters"
    if not plausible_time(claim.expires_at) or claim.expires_at == 0:
        return "a jti claim needs its expiry (unix seconds)"
    return None


class JtiRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def claim_jtis(self, claims: list[JtiClaim]) -> list[bool | ItemError]:
        """One answer per claim, in order: True for the first use (now stored until its
        expiry), False for a replay. The same (namespace, jti) twice in one batch: the first
        wins, the others are replays (one statement cannot insert a row twice)."""
        return await batch_then_items(claims, self._claim, "jti claim", _problem)

    async def _claim(self, claims: list[JtiClaim]) -> list[bool]:
        first: dict[tuple[str, str], int] = {}
        for i, claim in enumerate(claims):
            first.setdefault((claim.namespace, claim.jti), i)
        unique = [claims[i] for i in first.values()]
        rows = await self.pool.fetch(_CLAIM, [c.namespace for c in unique], [c.jti for c in unique],
                                     [from_ts(c.expires_at) for c in unique])
        won = {(row["namespace"], row["jti"]) for row in rows}
        return [first[(c.namespace, c.jti)] == i and (c.namespace, c.jti) in won for i, c in enumerate(claims)]

    async def purge_expired(self, batch: int = PURGE_BATCH) -> int:
        """Drop the rows expired when the purge starts, `batch` at a time (short transactions,
        short locks). The cut-off is fixed: while jtis expire faster than batches are deleted
        (a busy system), a cut-off moving with each round's now() would never let it finish,
        nor the purges after it run; rows expiring meanwhile wait for the next purge."""
        cutoff = await self.pool.fetchval("SELECT now()")
        purged = 0
        while True:
            status = await self.pool.execute(
                "DELETE FROM used_jtis WHERE ctid IN"
                " (SELECT ctid FROM used_jtis WHERE expires_at <= $2 LIMIT $1)", batch, cutoff)
            count = int(status.split()[-1])
            purged += count
            if count < batch:
                return purged

"""The used-jti purge ends on a busy system (services/client_registry/jtis.py): it deletes
what had expired when it started, while more jtis keep expiring under it."""
from __future__ import annotations

from services.client_registry.jtis import JtiRepository


class BusyTable:
    """used_jtis as the purge sees it: each DELETE round takes a moment, during which as many
    rows expire as a batch holds (tokens expiring faster than the purge deletes them)."""

    def __init__(self, expired: int):
        self.now = 0
        self.expiries = [0] * expired
        self.rounds = 0

    async def fetchval(self, sql: str):
        assert sql == "SELECT now()"
        return self.now

    async def execute(self, sql: str, batch: int, *cutoff):
        self.rounds += 1
        assert self.rounds < 1000, "the purge does not end"
        # The statement compares with its parameter, or (without one) with now().
        limit = cutoff[0] if cutoff else self.now
        doomed = [e for e in self.expiries if e <= limit][:batch]
        for e in doomed:
            self.expiries.remove(e)
        self.now += 1
        self.expiries += [self.now] * batch
        return f"DELETE {len(doomed)}"


async def test_the_purge_ends_while_jtis_keep_expiring():
    table = BusyTable(expired=25)
    assert await JtiRepository(table).purge_expired(batch=10) == 25
    assert table.rounds == 3

"""Paging the revocations while a transaction open anywhere holds the snapshot's
xmin back: one catch-up still reads everything visible (past full pages of rows it
cannot yet prove finished), and the next one starts again from the safe cursor."""
from __future__ import annotations

import time

from services.client_registry.api import RevocationCursor, RevocationPage, RevocationRecord
from services.client_registry.revocations import next_cursor
from services.token_issuer.revocations import RevocationSet, RevocationSync

NOW = int(time.time())


class SnapshotRevocations:
    """The registry's ListRevocations as Postgres answers it: rows ordered by (txid, id),
    visible once committed, with the snapshot's xmin set by the test (the oldest
    transaction still open), paged through the real next_cursor."""

    def __init__(self, xmin: int):
        self.xmin = xmin
        self.rows: list[dict] = []
        self.reads: list[RevocationCursor] = []

    def commit(self, txid: int, value: str) -> None:
        self.rows.append({"txid": txid, "id": len(self.rows) + 1, "value": value})

    async def list_revocations(self, after: RevocationCursor = RevocationCursor(),
                               limit: int = 10_000) -> RevocationPage:
        self.reads.append(after)
        rows = sorted((r for r in self.rows if (r["txid"], r["id"]) > (after.txid, after.id)),
                      key=lambda r: (r["txid"], r["id"]))[:limit]
        safe, scan, more = next_cursor(after, rows, self.xmin, limit)
        records = [RevocationRecord(id=r["id"], kind="jti", value=r["value"], client_id="c", expires_at=NOW + 600)
                   for r in rows]
        return RevocationPage(records, safe, more, scan)


def revoked(s: RevocationSet, jti: str) -> bool:
    return s.is_revoked(jti=jti, grant_id="", client_id="c", issued_at_ms=NOW * 1000)


def test_a_full_page_of_unfinished_work_keeps_the_safe_cursor_but_reads_on():
    after = RevocationCursor(5, 1)
    rows = [{"txid": 10, "id": 2}, {"txid": 11, "id": 3}]
    assert next_cursor(after, rows, xmin=10, limit=2) == (after, RevocationCursor(11, 3), True)
    assert next_cursor(after, rows, xmin=11, limit=2) == (RevocationCursor(10, 2), RevocationCursor(11, 3), True)
    assert next_cursor(after, rows, xmin=12, limit=2) == (RevocationCursor(11, 3), RevocationCursor(11, 3), True)
    assert next_cursor(after, rows[:1], xmin=10, limit=2) == (RevocationCursor(10, 0), RevocationCursor(10, 2),
                                                              False)


async def test_one_catch_up_reads_past_full_pages_held_back_by_an_open_transaction():
    registry = SnapshotRevocations(xmin=100)  # transaction 100 is open: nothing from 100 on is proved finished
    registry.commit(50, "old")  # finished before it
    for i in range(10):  # more than three pages committed after it
        registry.commit(101 + i, f"after-{i}")
    revocations = RevocationSet()
    sync = RevocationSync(revocations, registry, None, page_size=3)

    assert await sync.catch_up() == 11
    assert all(revoked(revocations, f"after-{i}") for i in range(10)) and revoked(revocations, "old")
    assert sync.cursor == RevocationCursor(50, 1)  # past the finished row only

    # Transaction 100 commits a revocation: its row sorts before everything read so far.
    registry.commit(100, "slow")
    registry.xmin = 200
    fresh = RevocationSet()
    sync.revocations = fresh
    await sync.catch_up()
    assert revoked(fresh, "slow") and all(revoked(fresh, f"after-{i}") for i in range(10))
    assert sync.cursor == RevocationCursor(200, 0)  # everything is finished now
    registry.reads.clear()
    assert await sync.catch_up() == 0 and registry.reads == [RevocationCursor(200, 0)]

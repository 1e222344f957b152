"""No revocation is lost to a replica's resync, with writers that take no lock:
sequence ids are handed out in one order and committed in another, and the
read cursor (services/client_registry/revocations.py) only moves past
transactions Postgres proves finished. Real Postgres, real concurrency."""
from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest

from inboundlib import db
from services.client_registry.api import RevocationCursor, RevocationRecord
from services.client_registry.client import RevocationsClient
from services.client_registry.revocations import RevocationRepository, insert_revocations
from services.token_issuer.revocations import RevocationSet, RevocationSync
from tests.support import ISSUER_SERVICE, eventually


def jti(value: str) -> RevocationRecord:
    return RevocationRecord(kind="jti", value=value, client_id="cursor-test", expires_at=int(time.time()) + 600)


@pytest.fixture
async def pool(stack):
    pool = await db.create_pool(stack.database_url, min_size=2, max_size=12)
    yield pool
    await pool.close()


async def naive_read(pool, after_id: int, prefix: str) -> tuple[set[str], int]:
    """What the old resync did without its global lock: everything above the highest id seen."""
    rows = await pool.fetch("SELECT id, value FROM revocations WHERE id > $1 ORDER BY id", after_id)
    return {r["value"] for r in rows if r["value"].startswith(prefix)}, max([after_id] + [r["id"] for r in rows])


async def read_all(repo: RevocationRepository, cursor: RevocationCursor) -> tuple[set[str], RevocationCursor]:
    """As a replica's catch-up reads: on past full pages, back to the safe cursor next time."""
    seen: set[str] = set()
    position, held = cursor, False
    while True:
        page = await repo.list_revocations(position, 10_000)
        seen |= {r.value for r in page.records}
        if not held:
            cursor, held = page.next, page.next != page.read_on_from
        position = page.read_on_from
        if not page.more:
            return seen, cursor


async def test_a_revocation_committed_after_a_newer_one_is_read_once_it_commits(pool):
    repo = RevocationRepository(pool)
    prefix = f"order-{uuid.uuid4().hex[:8]}-"
    _, cursor = await read_all(repo, RevocationCursor())
    _, naive_mark = await naive_read(pool, 0, prefix)

    slow = await pool.acquire()
    try:
        tx = slow.transaction()
        await tx.start()
        [slow_id] = await insert_revocations(slow, [jti(prefix + "slow")])  # takes its id first ...
        [fast] = await repo.add_revocations([jti(prefix + "fast")])  # ... commits second
        assert isinstance(fast, int) and slow_id < fast

        seen, cursor = await read_all(repo, cursor)
        naive_seen, naive_mark = await naive_read(pool, naive_mark, prefix)
        assert prefix + "fast" in seen and prefix + "slow" not in seen  # not committed yet
        assert naive_seen == {prefix + "fast"}
        await tx.commit()
    finally:
        await pool.release(slow)

    seen, cursor = await read_all(repo, cursor)
    naive_seen, _ = await naive_read(pool, naive_mark, prefix)
    assert prefix + "slow" in seen
    assert prefix + "slow" not in naive_seen  # the naive watermark had already passed its id: lost


async def test_concurrent_writers_and_a_concurrent_reader_lose_nothing(pool):
    """Eight writers without any lock, each holding its transaction open a little after
    taking its id, one of them for long; a replica's RevocationSync reads all along.
    Every committed revocation reaches the replica; a naive id watermark read at the
    same moments loses the slow one."""
    repo = RevocationRepository(pool)
    prefix = f"race-{uuid.uuid4().hex[:8]}-"
    revocations = RevocationSet()
    sync = RevocationSync(revocations, repo, None)
    await sync.catch_up()
    _, naive_mark = await naive_read(pool, 0, prefix)
    naive_seen: set[str] = set()
    written: list[str] = []
    writing = True

    async def writer(n: int, hold: float) -> None:
        for i in range(12):
            async with pool.acquire() as conn, conn.transaction():
                batch = [jti(f"{prefix}{n}-{i}-{k}") for k in range(random.randint(1, 3))]
                await insert_revocations(conn, batch)
                await asyncio.sleep(random.uniform(0, hold))  # committed later than its id says
            written.extend(r.value for r in batch)

    async def slow_writer() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await insert_revocations(conn, [jti(prefix + "slow")])
            await asyncio.sleep(0.5)  # others take and commit higher ids meanwhile
        written.append(prefix + "slow")

    async def reader() -> None:
        nonlocal naive_mark
        while writing:
            await sync.catch_up()
            seen, naive_mark = await naive_read(pool, naive_mark, prefix)
            naive_seen.update(seen)
            await asyncio.sleep(0.005)

    reading = asyncio.create_task(reader())
    await asyncio.gather(slow_writer(), *(writer(n, 0.02) for n in range(7)))
    writing = False
    await reading
    await sync.catch_up()

    missing = [v for v in written if not revocations.is_revoked(jti=v, grant_id="", client_id="x", issued_at_ms=0)]
    assert len(written) > 50 and missing == []
    assert prefix + "slow" not in naive_seen  # the race was real: a naive watermark skipped it


async def test_the_cursor_pages_through_more_than_a_page(pool):
    repo = RevocationRepository(pool)
    prefix = f"page-{uuid.uuid4().hex[:8]}-"
    _, cursor = await read_all(repo, RevocationCursor())
    outcomes = await repo.add_revocations([jti(f"{prefix}{i}") for i in range(25)])
    assert all(isinstance(o, int) for o in outcomes)
    wanted = {f"{prefix}{i}" for i in range(25)}
    seen: set[str] = set()
    pages = 0

    async def read_a_page() -> bool:
        nonlocal cursor, pages
        page = await repo.list_revocations(cursor, 10)
        assert len(page.records) <= 10
        seen.update(r.value for r in page.records)
        cursor, pages = page.next, pages + 1
        return wanted <= seen

    # (An unrelated transaction open elsewhere can hold the cursor back a moment.)
    await eventually(read_a_page, message="every revocation read through the cursor")
    assert pages >= 3


async def test_a_catch_up_reads_past_full_pages_while_a_long_transaction_holds_the_cursor(stack, pool):
    """Any transaction open on the cluster holds xmin back; more than a page of
    revocations committed after it must all be read by one catch-up (through the
    running registry, a small page), and the one it commits itself by the next."""
    prefix = f"held-{uuid.uuid4().hex[:8]}-"
    channel = stack.channel("client_registry", caller=ISSUER_SERVICE)  # revocations are token_issuer's to read
    revocations = RevocationSet()
    sync = RevocationSync(revocations, RevocationsClient(channel), None, page_size=10)
    held = await pool.acquire()
    try:
        await sync.catch_up()
        tx = held.transaction()
        await tx.start()
        held_txid = await held.fetchval("SELECT pg_current_xact_id()::text::bigint")
        values = [f"{prefix}{i}" for i in range(35)]  # more than three pages, committed after it
        assert all(isinstance(o, int) for o in await RevocationRepository(pool).add_revocations(
            [jti(v) for v in values]))

        await sync.catch_up()
        missing = [v for v in values if not revocations.is_revoked(jti=v, grant_id="", client_id="cursor-test")]
        assert missing == []
        assert sync.cursor.txid <= held_txid  # not past what the open transaction may still write

        await insert_revocations(held, [jti(prefix + "slow")])
        await tx.commit()
        await sync.catch_up()
        assert revocations.is_revoked(jti=prefix + "slow", grant_id="", client_id="cursor-test")
    finally:
        await pool.release(held)
        await channel.close()

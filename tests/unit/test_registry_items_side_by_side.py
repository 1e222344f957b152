"""services/client_registry/pg.py's per-item transactions, which code consumption
(authorizations.py) and refresh token rotation (refresh_tokens.py) share: one item's
failure is its ItemError alone, the database being away fails the call, and a deadlock
Postgres broke is retried a bounded number of times."""
from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from services.client_registry.api import ITEM_INTERNAL, ItemError
from services.client_registry.pg import DEADLOCK_ATTEMPTS, in_transaction_retrying_deadlocks, items_side_by_side


async def test_one_items_failure_is_its_item_error_alone():
    async def one(item: int) -> int:
        if item == 2:
            raise asyncpg.UniqueViolationError("duplicate")
        return item * 10

    assert await items_side_by_side([1, 2, 3], one, "test step", "the item could not be done") == [
        10, ItemError(ITEM_INTERNAL, "the item could not be done"), 30]


@pytest.mark.parametrize("away", [ConnectionRefusedError(), asyncpg.CannotConnectNowError("starting"),
                                  asyncio.CancelledError()])
async def test_the_database_away_or_a_cancellation_fails_the_call(away):
    async def one(item: int) -> int:
        if item == 2:
            raise away
        return item

    with pytest.raises(type(away)):
        await items_side_by_side([1, 2, 3], one, "test step", "the item could not be done")


class Pool:
    """A pool whose transactions the test counts."""

    def __init__(self):
        self.transactions = 0

    @contextlib.asynccontextmanager
    async def _acquire(self):
        yield self

    def acquire(self):
        return self._acquire()

    @contextlib.asynccontextmanager
    async def _transaction(self):
        self.transactions += 1
        yield

    def transaction(self):
        return self._transaction()


async def test_a_broken_deadlock_is_retried_in_a_new_transaction():
    pool, failures = Pool(), [asyncpg.DeadlockDetectedError("deadlock")] * (DEADLOCK_ATTEMPTS - 1)

    async def run(conn) -> str:
        if failures:
            raise failures.pop()
        return "done"

    assert await in_transaction_retrying_deadlocks(pool, run) == "done"
    assert pool.transactions == DEADLOCK_ATTEMPTS


async def test_deadlocks_without_end_fail_after_the_last_attempt():
    pool = Pool()

    async def run(conn) -> str:
        raise asyncpg.DeadlockDetectedError("deadlock")

    with pytest.raises(asyncpg.DeadlockDetectedError):
        await in_transaction_retrying_deadlocks(pool, run)
    assert pool.transactions == DEADLOCK_ATTEMPTS

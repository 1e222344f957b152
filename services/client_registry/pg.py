"""What every Postgres repository of the registry shares: time conversions, and
running a batch so that one bad item never fails its neighbours (in one statement, or
one transaction per item)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import TypeVar

import asyncpg

from inboundlib.db import UNAVAILABLE_ERRORS
from services.client_registry.api import ITEM_INTERNAL, ITEM_INVALID, ItemError

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Times beyond this are junk (year 9999 is as far as Python's datetime goes).
MAX_UNIX_SECONDS = 253_402_300_799


def ts(value: datetime | None) -> int:
    return int(value.timestamp()) if value else 0


def ms(value: datetime | None) -> int:
    """A timestamptz as Unix milliseconds, exactly (no float rounding)."""
    if value is None:
        return 0
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ts(value: int) -> datetime:
    return datetime.fromtimestamp(value, tz=timezone.utc)


def from_ms(value: int) -> datetime:
    seconds, millis = divmod(value, 1000)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=millis * 1000)


def plausible_time(seconds: int) -> bool:
    return 0 <= seconds <= MAX_UNIX_SECONDS


async def batch_then_items(items: Sequence[Item], run: Callable[[list[Item]], Awaitable[list[Result]]],
                           what: str, check: Callable[[Item], str | None] | None = None) -> list[Result | ItemError]:
    """`run` the batch in one round trip, one result per item. An item `check` refuses
    (it says why) gets an ItemError without reaching Postgres; if Postgres still refuses
    the batch as data (one bad item), each item runs alone, so only the bad one fails.
    The database being away is not an item's fault: that raises, for the caller to
    answer UNAVAILABLE."""
    results: list[Result | ItemError | None] = [None] * len(items)
    valid: list[int] = []
    for i, item in enumerate(items):
        problem = check(item) if check is not None else None
        if problem:
            results[i] = ItemError(ITEM_INVALID, problem)
        else:
            valid.append(i)
    for i, outcome in zip(valid, await _run_batch([items[i] for i in valid], run, what)):
        results[i] = outcome
    return results  # type: ignore[return-value]


async def _run_batch(items: list[Item], run: Callable[[list[Item]], Awaitable[list[Result]]],
                     what: str) -> list[Result | ItemError]:
    if not items:
        return []
    try:
        return list(await run(items))
    except UNAVAILABLE_ERRORS:
        raise
    except asyncpg.PostgresError as exc:
        if len(items) == 1:
            return [_refused(what, exc)]
    results: list[Result | ItemError] = []
    for item in items:
        try:
            results.append((await run([item]))[0])
        except UNAVAILABLE_ERRORS:
            raise
        except asyncpg.PostgresError as exc:
            results.append(_refused(what, exc))
    return results


def _refused(what: str, exc: asyncpg.PostgresError) -> ItemError:
    log.warning("%s refused by Postgres", what, extra={"error": type(exc).__name__, "sqlstate": exc.sqlstate})
    return ItemError(ITEM_INTERNAL, f"{what} could not be stored")


# Two transactions locking the same rows in opposite orders: Postgres ends one, which is retried.
DEADLOCK_ATTEMPTS = 3


async def items_side_by_side(items: Sequence[Item], one: Callable[[Item], Awaitable[Result]], what: str,
                             failed: str) -> list[Result | ItemError]:
    """`one` for each item, side by side (each in a transaction of its own, on its own
    connection): one item's trouble is its ItemError (`failed` says what could not be done)
    and never fails another. The database being away, or a cancellation, fails the call
    (UNAVAILABLE for the caller), not an item."""
    outcomes = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and (isinstance(outcome, UNAVAILABLE_ERRORS)
                                                    or not isinstance(outcome, Exception)):
            raise outcome
    results: list[Result | ItemError] = []
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            log.warning("%s failed", what, extra={"error": type(outcome).__name__,
                                                  "sqlstate": getattr(outcome, "sqlstate", "")})
            outcome = ItemError(ITEM_INTERNAL, failed)
        results.append(outcome)
    return results


async def in_transaction_retrying_deadlocks(pool, run: Callable[[asyncpg.Connection], Awaitable[Result]]) -> Result:
    """`run` in a transaction of its own; a deadlock Postgres broke is retried (the retry
    finds what the other transaction did), at most DEADLOCK_ATTEMPTS times."""
    for attempt in range(DEADLOCK_ATTEMPTS):
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await run(conn)
        except asyncpg.DeadlockDetectedError:
            if attempt == DEADLOCK_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")

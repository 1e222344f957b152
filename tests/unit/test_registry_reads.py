"""A read Postgres refuses (statement timeout, pg_cancel_backend, a lock held by a
migration) raises, for the servicer to answer UNAVAILABLE: it is never "no such
client", which callers would cache and answer with 401s."""
from __future__ import annotations

import asyncpg
import pytest

from inboundlib.db import UNAVAILABLE_ERRORS
from services.client_registry.clients import ClientRepository


class RefusingPool:
    """A pool whose every statement Postgres cancels, counting what reached it."""

    def __init__(self, error: BaseException):
        self.error = error
        self.statements: list[tuple] = []

    async def fetch(self, query, *args):
        self.statements.append(args)
        raise self.error


@pytest.mark.parametrize("error", [asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
                                   asyncpg.LockNotAvailableError("could not obtain lock")])
async def test_a_cancelled_client_lookup_raises_unavailable_instead_of_not_found(error):
    pool = RefusingPool(error)
    with pytest.raises(type(error)) as caught:
        await ClientRepository(pool, None).get_clients(["app", "other"])
    assert isinstance(caught.value, UNAVAILABLE_ERRORS)
    assert len(pool.statements) == 1  # one statement for the batch, not one retry per id


async def test_any_other_refused_lookup_raises_too():
    pool = RefusingPool(asyncpg.InternalServerError("something odd"))
    with pytest.raises(asyncpg.InternalServerError):
        await ClientRepository(pool, None).get_clients(["app"])


async def test_only_an_implausible_id_is_answered_not_found_and_it_never_reaches_sql():
    pool = RefusingPool(asyncpg.QueryCanceledError("cancelled"))
    assert await ClientRepository(pool, None).get_clients(["bad\x00id", "x" * 5000, ""]) == [None, None, None]
    assert pool.statements == []

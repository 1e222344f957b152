"""Coalescer: one item never fails its neighbours; budgets are honoured before any work."""
from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest

from inboundlib import budget
from inboundlib.batching import Coalescer, Expired
from inboundlib.grpcx import peer_going_away

_names = itertools.count()


class Send:
    """Answers item*10; fails the whole call when a poisoned item is in it, or with `fail_first` once."""

    def __init__(self, *, poison=None, fail_first: BaseException | None = None):
        self.poison = poison
        self.fail_first = fail_first
        self.calls: list[list] = []

    async def __call__(self, items, timeout):
        self.calls.append(list(items))
        await asyncio.sleep(0)
        if self.fail_first is not None:
            exc, self.fail_first = self.fail_first, None
            raise exc
        if self.poison is not None and self.poison in items:
            raise ValueError("the whole call broke")
        return [item * 10 for item in items]


def coalescer(send, **kwargs) -> Coalescer:
    kwargs.setdefault("max_in_flight", 1)
    return Coalescer(f"test_robust_{next(_names)}", send, **kwargs)


def going_away(code=grpc.StatusCode.CANCELLED) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="server stopping")


async def burst(c: Coalescer, items):
    return await asyncio.gather(*(c.submit(i, 2.0) for i in items), return_exceptions=True)


async def test_an_idempotent_call_split_so_the_poisoned_item_fails_alone():
    send = Send(poison=3)
    results = await burst(coalescer(send, idempotent=True), [1, 2, 3, 4, 5])
    assert results[:2] == [10, 20] and results[3:] == [40, 50]
    assert isinstance(results[2], ValueError)


async def test_control_without_splitting_the_poisoned_item_fails_its_neighbours():
    """What the split prevents (and what a call that is not idempotent must accept)."""
    send = Send(poison=3)
    results = await burst(coalescer(send, idempotent=False), [1, 2, 3, 4, 5])
    assert [isinstance(r, ValueError) for r in results].count(True) >= 2


async def test_an_idempotent_call_is_sent_once_more_when_its_peer_went_away():
    send = Send(fail_first=going_away())
    c = coalescer(send, idempotent=True, transient=peer_going_away)
    assert await c.submit(7, 2.0) == 70
    assert send.calls == [[7], [7]]


async def test_only_once():
    class AlwaysGone(Send):
        async def __call__(self, items, timeout):
            self.calls.append(list(items))
            raise going_away(grpc.StatusCode.UNAVAILABLE)

    send = AlwaysGone()
    c = coalescer(send, idempotent=True, transient=peer_going_away)
    with pytest.raises(grpc.aio.AioRpcError):
        await c.submit(7, 2.0)
    assert len(send.calls) == 2


async def test_a_call_that_is_not_idempotent_is_never_sent_again():
    send = Send(fail_first=going_away())
    c = coalescer(send, idempotent=False, transient=peer_going_away)
    with pytest.raises(grpc.aio.AioRpcError):
        await c.submit(7, 2.0)
    assert send.calls == [[7]]


async def test_a_wrong_result_count_is_split_for_idempotent_calls():
    class Short(Send):
        async def __call__(self, items, timeout):
            self.calls.append(list(items))
            return [item * 10 for item in items][: max(1, len(items) - 1)]

    send = Short()
    results = await burst(coalescer(send, idempotent=True), [1, 2, 3])
    assert results == [10, 20, 30]


async def test_an_item_whose_budget_has_passed_is_refused_without_being_sent():
    send = Send()
    c = coalescer(send)
    with budget.within(0.0):
        with pytest.raises(Expired):
            await c.submit(1, 2.0)
    assert send.calls == []


async def test_the_call_timeout_is_the_budget_left_not_the_callers_default():
    seen: list[float] = []

    async def send(items, timeout):
        seen.append(timeout)
        return [0 for _ in items]

    c = coalescer(send)
    with budget.within(0.5):
        await c.submit(1, 10.0)
    assert 0 < seen[0] <= 0.5


def test_batches_in_flight_is_a_setting_read_through_env(monkeypatch):
    from inboundlib import batching
    from inboundlib.config import ConfigError

    monkeypatch.setattr(batching, "_configured_in_flight", None)
    monkeypatch.setenv("INBOUND_BATCHES_IN_FLIGHT", "3")
    assert batching.default_max_in_flight() == 3
    monkeypatch.setattr(batching, "_configured_in_flight", None)
    monkeypatch.setenv("INBOUND_BATCHES_IN_FLIGHT", "many")
    with pytest.raises(ConfigError):
        batching.default_max_in_flight()
    monkeypatch.setattr(batching, "_configured_in_flight", None)
    monkeypatch.delenv("INBOUND_BATCHES_IN_FLIGHT")
    assert batching.default_max_in_flight() == batching.DEFAULT_MAX_IN_FLIGHT == 1

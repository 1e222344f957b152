"""inboundlib.batching.Coalescer: adaptive batching with bounds, deadlines and error fan-out."""
from __future__ import annotations

import asyncio
import functools
import itertools

import pytest
from prometheus_client import REGISTRY

from inboundlib.batching import Coalescer, Expired, Overloaded
from tests.support import eventually

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"test_{prefix}_{next(_names)}"


class FakeSend:
    """Records every batch; each call waits on its own gate unless `block` is False."""

    def __init__(self, *, block: bool = True, respond=None):
        self.block = block
        self.respond = respond or (lambda items: [item * 10 for item in items])
        self.batches: list[list] = []
        self.timeouts: list[float] = []
        self.gates: list[asyncio.Event] = []

    async def __call__(self, items, timeout):
        self.batches.append(list(items))
        self.timeouts.append(timeout)
        gate = asyncio.Event()
        self.gates.append(gate)
        if self.block:
            await gate.wait()
        result = self.respond(items)
        if isinstance(result, BaseException):
            raise result
        return result

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(1):
            while len(self.batches) < n:
                await asyncio.sleep(0)

    def release(self, index: int) -> None:
        self.gates[index].set()

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()


def make(prefix: str, send: FakeSend, **kwargs) -> Coalescer:
    """A Coalescer with one batch in flight unless a test asks otherwise (the default may be tuned)."""
    kwargs.setdefault("max_in_flight", 1)
    return Coalescer(unique(prefix), send, **kwargs)


async def settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def drain(send: FakeSend, tasks, calls_cap: int = 100):
    """Release batches one by one until every task is done; returns the task results/exceptions."""
    async with asyncio.timeout(2):
        while not all(t.done() for t in tasks):
            send.release_all()
            await asyncio.sleep(0)
            assert len(send.batches) <= calls_cap
    return await asyncio.gather(*tasks, return_exceptions=True)


# --- low load: no added latency -----------------------------------------------------


async def test_single_request_goes_out_at_once():
    send = FakeSend(block=False)
    c = make("single", send)
    assert await c.submit(4, 1.0) == 40
    assert send.batches == [[4]]


async def test_sequential_requests_each_go_alone():
    send = FakeSend(block=False)
    c = make("seq", send)
    results = [await c.submit(i, 1.0) for i in range(5)]
    assert results == [0, 10, 20, 30, 40]
    assert send.sizes == [1, 1, 1, 1, 1]


async def test_first_request_is_sent_before_submit_yields_to_waiting():
    send = FakeSend()
    c = make("immediate", send)
    task = asyncio.create_task(c.submit(1, 1.0))
    await send.wait_calls(1)
    assert send.batches == [[1]]
    send.release(0)
    assert await task == 10


# --- gathering while a batch is in flight ------------------------------------------


async def test_requests_gather_while_one_is_in_flight():
    send = FakeSend()
    c = make("gather", send, max_batch=32)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    rest = [asyncio.create_task(c.submit(i, 1.0)) for i in range(1, 6)]
    await settle()
    assert send.sizes == [1]  # nothing more goes out while the first is in flight
    send.release(0)
    await send.wait_calls(2)
    assert send.batches == [[0], [1, 2, 3, 4, 5]]
    send.release(1)
    assert await first == 0
    assert await asyncio.gather(*rest) == [10, 20, 30, 40, 50]
    assert send.sizes == [1, 5]


async def test_concurrent_burst_is_one_then_batches_of_max_batch():
    send = FakeSend()
    c = make("burst", send, max_batch=4)
    tasks = [asyncio.create_task(c.submit(i, 1.0)) for i in range(10)]
    await send.wait_calls(1)
    await settle()
    assert send.batches == [[0]]
    for n in range(1, 4):
        send.release(n - 1)
        await send.wait_calls(n + 1)
        await settle()
        assert len(send.batches) == n + 1  # exactly one batch in flight at a time
    send.release(3)
    assert await asyncio.gather(*tasks) == [i * 10 for i in range(10)]
    assert send.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


async def test_default_max_batch_is_32():
    send = FakeSend()
    c = make("default32", send)
    tasks = [asyncio.create_task(c.submit(i, 1.0)) for i in range(40)]
    results = await drain(send, tasks)
    assert results == [i * 10 for i in range(40)]
    assert send.sizes == [1, 32, 7]


async def test_results_are_routed_to_their_own_callers():
    send = FakeSend(respond=lambda items: [f"r-{item}" for item in items])
    c = make("route", send, max_batch=8)
    tasks = [asyncio.create_task(c.submit(f"q{i}", 1.0)) for i in range(6)]
    results = await drain(send, tasks)
    assert results == [f"r-q{i}" for i in range(6)]
    assert send.batches == [["q0"], ["q1", "q2", "q3", "q4", "q5"]]


async def test_with_the_default_in_flight_the_first_goes_alone_and_the_rest_gather():
    send = FakeSend()
    c = Coalescer(unique("default_inflight"), send, max_batch=8)
    tasks = [asyncio.create_task(c.submit(i, 1.0)) for i in range(6)]
    results = await drain(send, tasks)
    assert results == [i * 10 for i in range(6)]
    assert send.sizes[0] == 1          # no added latency for the first request
    assert max(send.sizes) > 1         # the rest gathered
    assert sum(send.sizes) == 6


async def test_max_in_flight_two():
    send = FakeSend()
    c = make("inflight2", send, max_batch=8, max_in_flight=2)
    tasks = [asyncio.create_task(c.submit(i, 1.0)) for i in range(6)]
    await send.wait_calls(2)
    await settle()
    assert send.batches == [[0], [1]]  # two single calls in flight, the rest wait
    send.release(1)
    await send.wait_calls(3)
    await settle()
    assert send.batches == [[0], [1], [2, 3, 4, 5]]
    send.release_all()
    assert await asyncio.gather(*tasks) == [i * 10 for i in range(6)]


async def test_queue_drains_after_last_batch_returns():
    """Requests submitted while a later batch is in flight are still sent (no stall)."""
    send = FakeSend()
    c = make("nostall", send, max_batch=2)
    t0 = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    t1 = asyncio.create_task(c.submit(1, 1.0))
    await settle()
    send.release(0)
    await send.wait_calls(2)
    t2 = asyncio.create_task(c.submit(2, 1.0))
    await settle()
    send.release(1)
    await send.wait_calls(3)
    send.release(2)
    assert await asyncio.gather(t0, t1, t2) == [0, 10, 20]
    assert send.batches == [[0], [1], [2]]


# --- the send timeout ---------------------------------------------------------------


async def test_send_gets_remaining_time_of_the_longest_deadline_in_batch():
    send = FakeSend()
    c = make("timeout", send, max_batch=8)
    first = asyncio.create_task(c.submit(0, 2.0))
    await send.wait_calls(1)
    assert 1.5 < send.timeouts[0] <= 2.0
    queued = [asyncio.create_task(c.submit(1, 0.5)), asyncio.create_task(c.submit(2, 5.0)),
              asyncio.create_task(c.submit(3, 1.0))]
    await settle()
    send.release(0)
    await send.wait_calls(2)
    assert 4.5 < send.timeouts[1] <= 5.0
    send.release(1)
    await asyncio.gather(first, *queued)


# --- deadlines ----------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0.0, -1.0])
async def test_already_expired_request_raises_expired_and_is_not_sent(timeout):
    send = FakeSend(block=False)
    c = make("expired0", send)
    with pytest.raises(Expired):
        await c.submit(1, timeout)
    assert send.batches == []
    assert await c.submit(2, 1.0) == 20  # the coalescer is still usable


async def test_request_expiring_in_the_queue_raises_expired_and_is_skipped():
    send = FakeSend()
    c = make("expiredq", send, max_batch=8)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    short = asyncio.create_task(c.submit(1, 0.01))
    long_ = asyncio.create_task(c.submit(2, 1.0))
    await eventually(short.done, timeout=5, message="the short request given up at its deadline, in the queue")
    send.release(0)
    await send.wait_calls(2)
    send.release(1)
    assert await first == 0
    with pytest.raises(Expired):
        await short
    assert await long_ == 20
    assert send.batches == [[0], [2]]


async def test_all_queued_expired_means_no_empty_batch_and_next_request_goes_at_once():
    send = FakeSend()
    c = make("allexpired", send)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    doomed = [asyncio.create_task(c.submit(i, 0.01)) for i in (1, 2)]
    await eventually(lambda: all(task.done() for task in doomed), timeout=5,
                     message="the queued requests given up at their deadlines")
    send.release(0)
    await first
    for task in doomed:
        with pytest.raises(Expired):
            await task
    assert send.batches == [[0]]
    later = asyncio.create_task(c.submit(3, 1.0))
    await send.wait_calls(2)
    assert send.batches == [[0], [3]]
    send.release(1)
    assert await later == 30


async def test_queued_request_gives_up_at_its_own_deadline_while_a_batch_is_in_flight():
    """submit() waits at most `timeout`, even while an earlier (slow) batch holds the only slot."""
    send = FakeSend()
    c = make("deadline_inflight", send, max_batch=8)
    first = asyncio.create_task(c.submit(0, 10.0))
    await send.wait_calls(1)
    later = asyncio.create_task(c.submit(2, 1.0))
    # The batch in flight never returns by itself: only the request's own deadline can end
    # this wait (the outer bound is generous and would fail with TimeoutError, not Expired).
    with pytest.raises(Expired):
        await asyncio.wait_for(c.submit(1, 0.05), 10)
    send.release(0)
    await send.wait_calls(2)
    send.release(1)
    assert await first == 0
    assert await later == 20
    assert send.batches == [[0], [2]]  # the expired request is not sent afterwards


async def test_in_flight_request_gives_up_at_its_own_deadline():
    send = FakeSend()
    c = make("deadline_sent", send)
    with pytest.raises(Expired):  # its batch is held in flight: only its own deadline ends the wait
        await asyncio.wait_for(c.submit(1, 0.05), 10)
    assert send.batches == [[1]]
    send.release(0)
    await settle()  # the late result is dropped without error
    send.block = False
    assert await c.submit(2, 1.0) == 20


async def test_short_deadline_in_a_batch_expires_alone():
    send = FakeSend()
    c = make("deadline_mixed", send, max_batch=8)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    short = asyncio.create_task(c.submit(1, 0.1))
    long_ = asyncio.create_task(c.submit(2, 1.0))
    await settle()
    send.release(0)
    await send.wait_calls(2)
    assert send.batches[1] == [1, 2]
    with pytest.raises(Expired):
        await short
    assert not long_.done()
    send.release(1)
    assert await long_ == 20
    await first


async def test_cancelled_waiter_is_dropped_from_the_next_batch():
    send = FakeSend()
    c = make("cancel", send, max_batch=8)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    a = asyncio.create_task(c.submit(1, 1.0))
    b = asyncio.create_task(c.submit(2, 1.0))
    await settle()
    a.cancel()
    await settle()
    send.release(0)
    await send.wait_calls(2)
    send.release(1)
    assert await b == 20
    assert a.cancelled()
    assert send.batches == [[0], [2]]
    await first


async def test_cancelled_waiter_in_flight_does_not_break_others():
    send = FakeSend()
    c = make("cancel_inflight", send, max_batch=8)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    a = asyncio.create_task(c.submit(1, 1.0))
    b = asyncio.create_task(c.submit(2, 1.0))
    await settle()
    send.release(0)
    await send.wait_calls(2)
    a.cancel()
    await settle()
    send.release(1)
    assert await b == 20
    assert a.cancelled()
    await first


# --- back-pressure ------------------------------------------------------------------


async def test_overloaded_when_max_pending_reached():
    name = unique("overload")
    send = FakeSend()
    c = Coalescer(name, send, max_batch=8, max_pending=2, max_in_flight=1)
    before = REGISTRY.get_sample_value("inbound_batch_rejected_total", {"call": name}) or 0.0
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)  # in flight, not pending
    queued = [asyncio.create_task(c.submit(i, 1.0)) for i in (1, 2)]
    await settle()
    with pytest.raises(Overloaded):  # refused, not queued (queued, it would end as Expired or a result)
        await asyncio.wait_for(c.submit(3, 1.0), 10)
    with pytest.raises(Overloaded):
        await c.submit(4, 1.0)
    after = REGISTRY.get_sample_value("inbound_batch_rejected_total", {"call": name})
    assert after == before + 2
    send.release(0)
    await send.wait_calls(2)
    send.release(1)
    assert await first == 0
    assert await asyncio.gather(*queued) == [10, 20]
    assert send.batches == [[0], [1, 2]]
    # once the queue has drained, requests are accepted again
    send.block = False
    assert await c.submit(5, 1.0) == 50


async def test_in_flight_items_do_not_count_against_max_pending():
    send = FakeSend()
    c = make("pending_inflight", send, max_batch=8, max_pending=1)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    second = asyncio.create_task(c.submit(1, 1.0))
    await settle()
    assert not second.done()
    with pytest.raises(Overloaded):
        await c.submit(2, 1.0)
    send.release_all()
    await send.wait_calls(2)
    send.release_all()
    assert await asyncio.gather(first, second) == [0, 10]


# --- failures -----------------------------------------------------------------------


class Boom(Exception):
    pass


async def test_send_failure_reaches_every_waiter_in_the_batch():
    error = Boom("issuer down")
    calls = itertools.count()
    send = FakeSend(respond=lambda items: error if next(calls) == 1 else [i * 10 for i in items])
    c = make("fail", send, max_batch=8)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    batch = [asyncio.create_task(c.submit(i, 1.0)) for i in range(1, 4)]
    await settle()
    send.release(0)
    await send.wait_calls(2)
    send.release(1)
    assert await first == 0  # the earlier batch is unaffected
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert all(r is error for r in results)
    # the coalescer recovers: in-flight count was released
    send.block = False
    assert await c.submit(9, 1.0) == 90
    assert send.sizes == [1, 3, 1]


async def test_send_failure_on_single_request_propagates():
    send = FakeSend(block=False, respond=lambda items: Boom("x"))
    c = make("fail1", send)
    with pytest.raises(Boom):
        await c.submit(1, 1.0)
    with pytest.raises(Boom):
        await c.submit(2, 1.0)
    assert send.sizes == [1, 1]


async def test_failure_does_not_stall_requests_queued_behind_it():
    calls = itertools.count()
    send = FakeSend(respond=lambda items: Boom("first") if next(calls) == 0 else [i * 10 for i in items])
    c = make("fail_queue", send, max_batch=8)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    queued = [asyncio.create_task(c.submit(i, 1.0)) for i in (1, 2)]
    await settle()
    send.release(0)
    with pytest.raises(Boom):
        await first
    await send.wait_calls(2)
    send.release(1)
    assert await asyncio.gather(*queued) == [10, 20]
    assert send.batches == [[0], [1, 2]]


@pytest.mark.parametrize("respond", [
    lambda items: [1] * (len(items) + 1),
    lambda items: [1] * (len(items) - 1),
    lambda items: [],
], ids=["too-many", "too-few", "none"])
async def test_result_count_mismatch_is_an_error_for_every_waiter(respond):
    calls = itertools.count()
    send = FakeSend(respond=lambda items: [0] if next(calls) == 0 else respond(items))
    c = make("mismatch", send, max_batch=8)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    batch = [asyncio.create_task(c.submit(i, 1.0)) for i in range(1, 4)]
    await settle()
    send.release(0)
    await send.wait_calls(2)
    send.release(1)
    await first
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert "3 requests" in str(results[0])
    send.block = False
    send.respond = lambda items: [i * 10 for i in items]
    assert await c.submit(7, 1.0) == 70


async def test_result_count_mismatch_single_request():
    send = FakeSend(block=False, respond=lambda items: [])
    c = make("mismatch1", send)
    with pytest.raises(RuntimeError):
        await c.submit(1, 1.0)


async def test_results_may_be_any_sequence():
    send = FakeSend(block=False, respond=lambda items: tuple(i + 1 for i in items))
    c = make("tuple", send)
    assert await c.submit(1, 1.0) == 2


async def test_per_item_errors_are_results_not_failures():
    """A batched RPC carries per-item errors as data; the coalescer hands each caller its own result."""
    err = ValueError("item 2 failed")
    send = FakeSend(respond=lambda items: [err if i == 2 else i for i in items])
    c = make("peritem", send, max_batch=8)
    first = asyncio.create_task(c.submit(0, 1.0))
    await send.wait_calls(1)
    batch = [asyncio.create_task(c.submit(i, 1.0)) for i in (1, 2, 3)]
    results = await drain(send, [first, *batch])
    assert results == [0, 1, err, 3]


# --- every test here is bounded, so a regression that loses a waiter fails instead of hanging ----

TEST_TIMEOUT = 2.0


def _bounded(test):
    @functools.wraps(test)
    async def wrapper(*args, **kwargs):
        async with asyncio.timeout(TEST_TIMEOUT):
            return await test(*args, **kwargs)
    return wrapper


for _name, _obj in list(globals().items()):
    if _name.startswith("test_") and asyncio.iscoroutinefunction(_obj):
        globals()[_name] = _bounded(_obj)
del _name, _obj


# --- budgets and context of a batch ---------------------------------------------------------


async def test_an_item_is_sent_with_the_budget_it_has_left_not_the_one_it_had_when_queued(monkeypatch):
    """An item that waited behind a batch in flight hands the next hop only what its
    caller still waits (restamped when its batch is sent)."""
    import types

    import inboundlib.batching

    clock = types.SimpleNamespace(now=1000.0)
    clock.monotonic = lambda: clock.now
    monkeypatch.setattr(inboundlib.batching, "time", clock)
    stamped: dict[int, float] = {}
    send = FakeSend()
    c = Coalescer(unique("restamp"), send, max_batch=8, max_in_flight=1,
                  restamp=lambda item, left: stamped.__setitem__(item, left))
    first = asyncio.create_task(c.submit(0, 30.0))
    await send.wait_calls(1)
    queued = asyncio.create_task(c.submit(1, 30.0))
    await settle()
    held = 4.0
    clock.now += held  # the queued item's caller has waited this long behind the batch in flight
    send.release(0)
    await send.wait_calls(2)
    assert stamped[0] <= 30.0
    assert stamped[1] <= 30.0 - held, "the queued item kept the budget it had when it was queued"
    send.release(1)
    assert await first == 0 and await queued == 10


async def test_a_batch_runs_without_the_budget_request_id_or_actor_of_the_request_that_launched_it():
    from inboundlib import budget
    from inboundlib.actors import Actor, actor_var
    from inboundlib.logs import request_id_var

    seen = []

    async def send(items, timeout):
        seen.append((budget.remaining(999.0), request_id_var.get(), actor_var.get()))
        return items

    c = Coalescer(unique("context"), send, max_batch=8)
    request_id_var.set("req-1")
    actor_var.set(Actor("client", "app"))
    try:
        with budget.within(0.5):
            assert await c.submit(7, 5.0) == 7
    finally:
        request_id_var.set("")
        actor_var.set(None)
    assert seen == [(999.0, "", None)]


async def test_a_call_failed_because_its_peer_is_unavailable_is_not_split_into_one_call_per_item():
    """No item is to blame when the peer itself is down: sending each alone would only
    multiply the calls to a peer that is struggling."""
    class PeerDown(Exception):
        pass

    calls = []

    async def send(items, timeout):
        calls.append(list(items))
        raise PeerDown()

    c = Coalescer(unique("unavailable"), send, max_batch=8, max_in_flight=1, idempotent=True,
                  unavailable=lambda exc: isinstance(exc, PeerDown))
    first = asyncio.create_task(c.submit(0, 5.0))
    others = [asyncio.create_task(c.submit(i, 5.0)) for i in (1, 2, 3)]
    results = await asyncio.gather(first, *others, return_exceptions=True)
    assert all(isinstance(r, PeerDown) for r in results)
    assert sorted(map(len, calls)) == [1, 3], calls  # the lone first call, then the three together: no split

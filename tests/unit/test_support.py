"""The shared wait (`tests/support.py`) and bus fake (`tests/fakes.py`) themselves:
a wait that cannot fail, or fails without saying what it saw, would hide bugs."""
from __future__ import annotations

import itertools

import pytest

from inbound.events.v1 import events_pb2
from tests.fakes import FakeBus
from tests.support import eventually, eventually_sync


async def test_eventually_returns_the_first_value_that_satisfies():
    counter = itertools.count()
    assert await eventually(lambda: next(counter), until=lambda n: n >= 3, timeout=5) == 3


async def test_eventually_awaits_async_probes():
    counter = itertools.count()

    async def probe():
        return next(counter)

    assert await eventually(probe, until=lambda n: n == 2, timeout=5) == 2


async def test_eventually_fails_showing_the_last_value():
    with pytest.raises(AssertionError, match=r"rows: not met within 0.2 s .*last value: \[1, 2\]"):
        await eventually(lambda: [1, 2], until=lambda rows: len(rows) == 1, timeout=0.2, message="rows")


async def test_eventually_retries_only_the_errors_it_is_told_to_ignore():
    calls = itertools.count()

    def flaky():
        if next(calls) < 2:
            raise ConnectionError("not yet")
        return "up"

    assert await eventually(flaky, ignore=(ConnectionError,), timeout=5) == "up"
    with pytest.raises(KeyError):
        await eventually(lambda: {}["x"], ignore=(ConnectionError,), timeout=5)
    with pytest.raises(AssertionError, match="last error: ConnectionError: down"):
        await eventually(lambda: (_ for _ in ()).throw(ConnectionError("down")), ignore=(ConnectionError,),
                         timeout=0.1)


def test_eventually_sync_fails_showing_the_last_value():
    counter = itertools.count()
    assert eventually_sync(lambda: next(counter), until=lambda n: n == 2, timeout=5) == 2
    with pytest.raises(AssertionError, match="last value: 503"):
        eventually_sync(lambda: 503, until=lambda status: status == 200, timeout=0.1)


async def test_the_fake_bus_delivers_by_nats_subject_rules():
    bus, seen = FakeBus(), []

    async def handler(event):
        seen.append(event.event_id)

    await bus.subscribe("inbound.events.token.>", handler)
    await bus.subscribe("inbound.events.*.rotated", handler)
    bus.publish("inbound.events.token.revoked", events_pb2.Event(event_id="a"))
    bus.publish("inbound.events.keys.rotated", events_pb2.Event(event_id="b"))
    bus.publish("inbound.events.token", events_pb2.Event(event_id="c"))  # `>` needs one more token
    assert seen == []  # nothing before delivery
    assert await bus.deliver() == 3
    assert seen == ["a", "b"]
    assert [e.event_id for e in bus.events("inbound.events.token.*")] == ["a"]

"""EventBus against a real NATS: batched publishing, subscribers, the bounded buffer."""
from __future__ import annotations

import asyncio
import logging
import uuid

from inbound.events.v1 import events_pb2
from inboundlib.events import BATCH_HEADER, CLIENT_CHANGED, EventBus, decode_message
from inboundlib.metrics import EVENTS_DROPPED
from services.devstack import free_port
from tests.support import eventually, nats_connect


def changed(i: int, tag: str = "c") -> events_pb2.Event:
    return events_pb2.Event(registry_changed=events_pb2.RegistryChanged(entity="client", id=f"{tag}{i}",
                                                                        change="updated"))


async def test_a_burst_goes_out_in_batches_and_every_subscriber_sees_every_event(stack):
    # The registry's subject (the server lets only the registry and all_in_one publish there), ids of
    # this test's own: what the registry itself publishes meanwhile is left out of the counts.
    subject, tag = CLIENT_CHANGED, f"burst-{uuid.uuid4().hex[:8]}-"
    bus = EventBus(stack.nats_settings("all_in_one"), "test-burst")  # publishes and listens
    seen: list[str] = []

    async def collect(event: events_pb2.Event) -> None:
        if event.registry_changed.id.startswith(tag):
            seen.append(event.registry_changed.id)

    raw = await nats_connect(stack, "token_issuer")  # a listener of client changes
    messages = []

    async def keep(msg) -> None:
        if any(e.registry_changed.id.startswith(tag) for e in decode_message(msg.data, msg.headers)):
            messages.append(msg)

    await raw.subscribe(stack.installation.subject(subject), cb=keep)
    await bus.start()
    await asyncio.wait_for(bus.connected.wait(), 5)
    await bus.subscribe(subject, collect)  # returns once the server has the subscription (flushed)
    await raw.flush()
    ids = [bus.publish(subject, changed(i, tag)) for i in range(1000)]
    await bus.flush(10)
    await eventually(lambda: len(seen), until=lambda n: n >= 1000, message="events seen by the subscriber")
    await bus.close()
    await raw.close()
    assert seen == [f"{tag}{i}" for i in range(1000)]  # every event, in order
    assert len(set(ids)) == 1000
    assert len(messages) < 1000  # several events shared a message
    batched = [m for m in messages if (m.headers or {}).get(BATCH_HEADER)]
    assert batched and all(len(decode_message(m.data, m.headers)) <= 256 for m in messages)


async def test_events_wait_in_the_buffer_while_nats_is_unreachable_and_the_bound_drops_and_logs(caplog):
    bus = EventBus(f"nats://127.0.0.1:{free_port()}", "test-bound", buffer_limit=10)
    before = EVENTS_DROPPED.labels("test-bound")._value.get()
    with caplog.at_level(logging.ERROR, logger="inboundlib.events"):
        for i in range(15):
            bus.publish("test.bound", changed(i))  # never blocks, never raises
    assert bus.pending == 10
    assert EVENTS_DROPPED.labels("test-bound")._value.get() - before == 5
    assert any("event buffer full" in r.getMessage() for r in caplog.records)
    await bus.close(flush_timeout=0.1)


async def test_after_a_reconnect_hooks_run_and_subscriptions_still_deliver(tmp_path):
    from services.devstack import PrivateNats

    server = PrivateNats(tmp_path / "nats", free_port())
    server.start()
    bus = EventBus(server.url, "test-reconnect")
    connects: list[float] = []
    seen: list[str] = []

    async def hook() -> None:
        connects.append(asyncio.get_running_loop().time())

    async def collect(event: events_pb2.Event) -> None:
        seen.append(event.registry_changed.id)

    bus.on_reconnect(hook)
    await bus.subscribe("test.reconnect", collect)  # before the first connection
    try:
        await bus.start()
        await asyncio.wait_for(bus.connected.wait(), 5)
        await eventually(lambda: connects, message="the hook run on the first connection")
        server.stop()
        await eventually(lambda: not bus.connected.is_set(), message="the bus noticing that NATS is gone")
        server.start()
        await eventually(lambda: len(connects) >= 2 and bus.connected.is_set(),
                         message="the hook run again after the reconnect")
        bus.publish("test.reconnect", changed(7))
        assert await eventually(lambda: seen, message="the event delivered after the reconnect") == ["c7"]
    finally:
        await bus.close(flush_timeout=1)
        server.stop()


async def test_a_full_buffer_sheds_low_priority_events_first():
    bus = EventBus(f"nats://127.0.0.1:{free_port()}", "test-priority", buffer_limit=4)
    for i in range(3):
        bus.publish("test.p", changed(i), low_priority=True)  # refused requests, say
    bus.publish("test.p", changed(100))
    assert bus.pending == 4
    for i in range(101, 104):  # important events push the low-priority ones out, oldest first
        bus.publish("test.p", changed(i))
    assert bus.pending == 4
    bus.publish("test.p", changed(999), low_priority=True)  # no room: dropped
    kept = [event.registry_changed.id for _, event, _ in list(bus._buffer) + list(bus._low)]
    assert kept == ["c100", "c101", "c102", "c103"]
    bus.publish("test.p", changed(104))  # nothing low left to shed: the new one is dropped
    assert bus.pending == 4
    await bus.close(flush_timeout=0.1)

"""Durable and buffered event delivery (INBOUND_EVENTS_DELIVERY) of one EventBus:
while NATS is unreachable, `durable()` returns once the spool holds the event
(fsync'ed, shared by a round), refuses when the spool is full, and the spool is
replayed in order once NATS is there; buffered delivery answers at once and
reports its loss window in metrics."""
from __future__ import annotations

import asyncio
import os
import time

import nats
import pytest
from prometheus_client import REGISTRY

from inbound.events.v1 import events_pb2
from inboundlib.events import AuditUnavailable, EventBus, Installation, decode_message
from inboundlib.spool import Spool
from services.devstack import PrivateNats, free_port
from tests.support import eventually

SUBJECT = "test.delivery"  # of the default installation (a bus without settings)
INSTALLATION = Installation()


def issued(i: int) -> events_pb2.Event:
    return events_pb2.Event(token_issued=events_pb2.TokenIssued(client_id="c", jti=f"j{i}"))


def unreachable() -> str:
    return f"nats://127.0.0.1:{free_port()}"


async def publish_durably(bus: EventBus, n: int, start: int = 0) -> list[str]:
    """n requests at once, each answered only once its event is durable (the token path)."""
    async def one(i: int) -> str:
        event_id = bus.publish(SUBJECT, issued(i), awaited=True)
        await bus.durable(event_id)
        return event_id
    return list(await asyncio.gather(*(one(start + i) for i in range(n))))


async def test_durable_while_nats_is_down_means_in_the_spool_fsynced_in_batches(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool", 1 << 20)
    bus = EventBus(unreachable(), "test-durable-down", spool=spool)
    await bus.start()
    fsyncs = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    try:
        await asyncio.wait_for(publish_durably(bus, 200), 10)
        # Every one is on disk now (read back from the files by a spool of its own, below),
        # none only in memory, and the 200 shared a few fsyncs, not one each.
        assert bus.pending == 0 and spool.unread >= 1
        assert len(fsyncs) <= 10, len(fsyncs)
    finally:
        await bus.close(flush_timeout=0.1)
    reader = Spool(tmp_path / "spool", 1 << 20)
    reader.open()
    assert sorted(e.token_issued.jti for r in reader.read(1000) for e in r.events) == sorted(
        f"j{i}" for i in range(200))
    reader.close()


async def test_a_full_spool_refuses_the_request_instead_of_answering_it_unaudited(tmp_path):
    spool = Spool(tmp_path / "spool", 64 << 10)
    bus = EventBus(unreachable(), "test-durable-full", spool=spool)
    await bus.start()
    refused_before = REGISTRY.get_sample_value("inbound_events_refused_total", {"source": "test-durable-full"}) or 0
    try:
        answered = 0
        with pytest.raises(AuditUnavailable) as refused:
            for i in range(10_000):
                await asyncio.wait_for(publish_durably(bus, 1, i), 5)
                answered += 1
        assert refused.value.code == "temporarily_unavailable"
        assert 0 < answered < 10_000 and spool.bytes <= 64 << 10
        assert spool.unread == answered  # each answered one is spooled; the refused one is not
        assert REGISTRY.get_sample_value("inbound_events_refused_total",
                                         {"source": "test-durable-full"}) - refused_before >= 1
    finally:
        await bus.close(flush_timeout=0.1)


async def test_buffered_answers_at_once_and_reports_its_loss_window():
    bus = EventBus(unreachable(), "test-buffered")  # no spool: buffered delivery
    await bus.start()
    try:
        old = issued(0)
        old.occurred_at_unix_ms = int((time.time() - 30) * 1000)
        bus.publish(SUBJECT, old, awaited=True)
        await asyncio.wait_for(publish_durably(bus, 4, 1), 1)  # does not wait for NATS
        assert REGISTRY.get_sample_value("inbound_events_in_memory", {"source": "test-buffered"}) == 5
        assert REGISTRY.get_sample_value("inbound_events_in_memory_oldest_seconds",
                                         {"source": "test-buffered"}) >= 29
    finally:
        await bus.close(flush_timeout=0.1)


async def test_the_spool_is_replayed_in_order_when_nats_comes_and_each_event_is_in_the_stream_once(tmp_path):
    server = PrivateNats(tmp_path / "nats", free_port())
    spool = Spool(tmp_path / "spool", 1 << 20)
    bus = EventBus(server.url, "test-replay", spool=spool)
    await bus.start()
    try:
        first = await publish_durably(bus, 300)
        assert spool.unread >= 1 and bus.pending == 0
        server.start()
        second = await publish_durably(bus, 50, 300)  # behind the spooled ones, whatever the path
        await eventually(lambda: spool.empty, message="the spool replayed")
        await bus.flush(5)
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(INSTALLATION.subject(SUBJECT), stream=INSTALLATION.stream)
            got: list[str] = []
            while True:
                try:
                    msgs = await sub.fetch(100, timeout=1)
                except nats.errors.TimeoutError:
                    break
                got += [e.event_id for m in msgs for e in decode_message(m.data, m.headers)]
        finally:
            await nc.close()
        assert got == first + second
    finally:
        await bus.close(flush_timeout=1)
        server.stop()


async def test_the_grant_runner_answers_a_refusal_only_once_it_is_audited(tmp_path):
    from inboundlib.grants.runner import GrantRunner
    from inboundlib.oauth.errors import InvalidClient
    from tests.unit.test_grant_runner import ForgetfulGrant, clients, request

    spool = Spool(tmp_path / "spool", 64 << 10)
    bus = EventBus(unreachable(), "test-runner-durable", spool=spool)
    await bus.start()
    runner = GrantRunner(ForgetfulGrant(), clients(), events=bus)
    try:
        with pytest.raises(InvalidClient):
            await runner.handle(request(secret="wrong"))
        assert spool.unread == 1 and bus.pending == 0  # spooled before the answer
        with pytest.raises(AuditUnavailable):  # refusals may fill half the spool
            for i in range(10_000):
                await bus.durable(bus.publish(SUBJECT, issued(i), low_priority=True, awaited=True))
        with pytest.raises(AuditUnavailable) as refused:
            await runner.handle(request(secret="wrong"))
        assert refused.value.code == "temporarily_unavailable"  # not an unaudited invalid_client
    finally:
        await bus.close(flush_timeout=0.1)


async def test_a_replay_that_fails_unexpectedly_does_not_stop_delivery(tmp_path, caplog):
    """The send loop outlives an error it did not plan for (here a spooled segment gone
    from under it): callers awaiting `durable` are answered, never left waiting for good."""
    server = PrivateNats(tmp_path / "nats", free_port())
    spool = Spool(tmp_path / "spool", 1 << 20)
    bus = EventBus(server.url, "test-loop-survives", spool=spool)
    await bus.start()
    try:
        await publish_durably(bus, 1)  # NATS is not there yet: spooled
        for segment in (tmp_path / "spool").glob("*.spool"):
            segment.unlink()
        server.start()
        await eventually(lambda: "event send round failed" in caplog.text, message="the failed replay logged")
        await asyncio.wait_for(publish_durably(bus, 1, 1), 5)
    finally:
        await bus.close(flush_timeout=0.1)
        server.stop()


async def test_large_events_are_cut_into_messages_nats_takes(tmp_path):
    """256 events of 8 KiB would be one 2 MiB message, past NATS's max_payload (1 MiB):
    refused for good. Messages are cut by size too, so every event is stored."""
    server = PrivateNats(tmp_path / "nats", free_port())
    server.start()
    bus = EventBus(server.url, "test-large-events")
    await bus.start()
    try:
        await asyncio.wait_for(bus.connected.wait(), 10)
        events = [issued(i) for i in range(300)]
        for event in events:
            event.token_issued.scope = "s" * (8 << 10)
            bus.publish(SUBJECT, event)
        await bus.flush(10)
        nc = await nats.connect(server.url)
        try:
            info = await nc.jetstream().stream_info(INSTALLATION.stream)
        finally:
            await nc.close()
        assert bus.pending == 0 and info.state.messages > 2  # several messages, all stored
        sub_nc = await nats.connect(server.url)
        try:
            sub = await sub_nc.jetstream().pull_subscribe(INSTALLATION.subject(SUBJECT), stream=INSTALLATION.stream)
            msgs = await sub.fetch(info.state.messages, timeout=5)
            got = [e.event_id for m in msgs for e in decode_message(m.data, m.headers)]
        finally:
            await sub_nc.close()
        assert got == [e.event_id for e in events]
    finally:
        await bus.close(flush_timeout=0.1)
        server.stop()

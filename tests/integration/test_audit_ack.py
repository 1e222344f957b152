"""The audit consumer acks a message only once its insert has committed."""
from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import nats

from inbound.events.v1 import events_pb2
from inboundlib.events import STREAM, TOKEN_ISSUED


async def test_a_message_is_not_acked_while_its_insert_cannot_commit(stack):
    pg = await asyncpg.connect(stack.database_url)
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    event = events_pb2.Event(event_id=uuid.uuid4().hex, occurred_at_unix_ms=int(time.time() * 1000),
                             token_issued=events_pb2.TokenIssued(client_id="ack-test", jti=uuid.uuid4().hex))
    tx = pg.transaction()
    await tx.start()
    try:
        await pg.execute("LOCK TABLE audit_log IN SHARE MODE")  # inserts wait; reads still work
        ack = await js.publish(TOKEN_ISSUED, event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id})
        deadline = time.monotonic() + 10
        while True:  # wait until the consumer has been handed our message
            info = await js.consumer_info(STREAM, "audit")
            if info.delivered.stream_seq >= ack.seq or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert info.delivered.stream_seq >= ack.seq, "the audit consumer never fetched the message"
        await asyncio.sleep(0.5)
        info = await js.consumer_info(STREAM, "audit")
        assert info.ack_floor.stream_seq < ack.seq and info.num_ack_pending >= 1, \
            "acked before the insert committed: a crash now would lose the event"
    finally:
        await tx.rollback()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if await pg.fetchval("SELECT count(*) FROM audit_log WHERE event_id = $1", event.event_id) == 1:
            break
        await asyncio.sleep(0.05)
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE event_id = $1", event.event_id) == 1
    info = await js.consumer_info(STREAM, "audit")
    assert info.ack_floor.stream_seq >= ack.seq  # acked once stored
    await nc.close()
    await pg.close()

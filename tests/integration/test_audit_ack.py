"""The audit consumer acks a message only once its insert has committed
(against the separate processes and the one-process mode)."""
from __future__ import annotations

import time
import uuid

import asyncpg
import pytest

from inbound.events.v1 import events_pb2
from inboundlib.events import TOKEN_ISSUED
from services.audit.consumer import DURABLE
from tests.support import audit_caught_up, audit_copies, eventually, nats_connect

pytestmark = pytest.mark.both_modes

WAITING_INSERT = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'
   AND query ILIKE '%INSERT INTO audit_log%'
"""


async def test_a_message_is_not_acked_while_its_insert_cannot_commit(stack):
    pg = await asyncpg.connect(stack.database_url)
    watcher = await asyncpg.connect(stack.database_url)
    # The one-process identity: it may both publish token events and read the audit consumer's state.
    nc = await nats_connect(stack, "all_in_one")
    js = nc.jetstream()
    stream = stack.installation.stream
    event = events_pb2.Event(event_id=uuid.uuid4().hex, occurred_at_unix_ms=int(time.time() * 1000),
                             token_issued=events_pb2.TokenIssued(client_id="ack-test", jti=uuid.uuid4().hex))
    try:
        tx = pg.transaction()
        await tx.start()
        try:
            await pg.execute("LOCK TABLE audit_log IN SHARE MODE")  # inserts wait; reads still work
            ack = await js.publish(stack.installation.subject(TOKEN_ISSUED), event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id})
            await eventually(lambda: js.consumer_info(stream, DURABLE),
                             until=lambda info: info.delivered.stream_seq >= ack.seq,
                             message="the audit consumer fetching the message")
            # The consumer is now inside its insert, blocked by our lock: an ack sent before
            # the insert (the fault this test is for) has been sent by now.
            await eventually(lambda: watcher.fetchval(WAITING_INSERT), until=lambda n: n >= 1,
                             message="the consumer's insert waiting for the lock")
            await nc.flush()
            info = await js.consumer_info(stream, DURABLE)
            assert info.ack_floor.stream_seq < ack.seq and info.num_ack_pending >= 1, \
                "acked before the insert committed: a crash now would lose the event"
        finally:
            await tx.rollback()
        jti = event.token_issued.jti
        await eventually(lambda: audit_copies(pg, [jti]), until=lambda copies: copies.get(jti, 0) >= 1,
                         message="the event stored once the lock is gone")
        await eventually(lambda: js.consumer_info(stream, DURABLE),
                         until=lambda info: info.ack_floor.stream_seq >= ack.seq, message="acked once stored")
        # Once, counted by the token's jti (the event id is the table's key: counting by it
        # could never show a copy stored again after the blocked insert was redelivered).
        await audit_caught_up(stack)
        assert await audit_copies(pg, [jti]) == {jti: 1}
    finally:
        await nc.close()
        await watcher.close()
        await pg.close()

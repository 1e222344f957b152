"""JetStream durable pull consumer: every event of this installation (`<installation>.events.>`,
in its stream `<INSTALLATION>_EVENTS`) into the audit log.

The loop: fetch a batch (up to 256, waiting at most 1 s), decode it, insert it
in one statement, and ack each message only after that insert has committed.
So a crash anywhere before the ack means redelivery, and redelivery is
harmless: the insert ignores an event id that is already stored.

- NATS down at start or gone later: connect is retried forever and nats-py
  reconnects; a fetch meanwhile just times out. The stream is created if it
  does not exist yet (the same definition publishers use), and the consumer is
  (re)created whenever fetching keeps failing (a NATS that lost its state).
- Postgres trouble: the batch is kept, not acked, and the insert is retried
  with back-off; the messages are kept "in progress" so JetStream does not hand
  them to another replica meanwhile. Stopping before it commits, they are
  nak'ed, so JetStream delivers them again at once (to this or another replica).
- A message that is not an Event is logged and terminated (never redelivered)
  so it cannot wedge the consumer; a row Postgres refuses as data is the same,
  and so is a message whose events are not those of its subject
  (inboundlib.events.PAYLOADS): NATS lets a grant service send token.denied,
  not a token_issued row or a registry change dressed up as one.
- Shutdown: the batch in hand is finished (stored and acked), then it stops.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

import asyncpg
import nats
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter, Gauge, Histogram

from inboundlib import workers
from inboundlib.events import (
    BATCH_HEADER,
    PAYLOADS,
    NatsSettings,
    as_settings,
    describe_connect_error,
    ensure_stream,
    log_nats_error,
)
from services.audit.api import AuditRecord
from services.audit.log import AuditLog, decode, decode_batch

log = logging.getLogger(__name__)

STORED = Counter("inbound_audit_events_stored_total", "Events newly stored in the audit log")
DUPLICATES = Counter("inbound_audit_events_duplicate_total", "Events delivered again that were already stored")
REJECTED = Counter("inbound_audit_events_rejected_total", "Messages that could not be stored (logged and dropped)",
                   ["reason"])
STORE_FAILURES = Counter("inbound_audit_store_failures_total", "Batch inserts that failed and were retried")
LAG = Gauge("inbound_audit_consumer_pending", "Messages in the stream not yet delivered to the audit consumer")
BATCH_SECONDS = Histogram("inbound_audit_batch_seconds", "Time to store and ack one batch",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))

# The durable consumer lives in the installation's own stream, so its name needs no prefix:
# two installations on one NATS have two streams, each with its own `audit` consumer.
DURABLE = "audit"


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep that ends early on stop."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except (asyncio.TimeoutError, TimeoutError):
        pass


class Consumer:
    def __init__(self, nats: NatsSettings | str, audit_log: AuditLog, *, durable: str = DURABLE, batch: int = 256,
                 fetch_timeout: float = 1.0, ack_wait: float = 30.0, max_ack_pending: int = 4096):
        self.nats = as_settings(nats)
        self.installation = self.nats.installation
        self.log = audit_log
        self.durable = durable
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self._nc: nats.NATS | None = None
        self._sub = None
        self._closing = False

    # --- connection and binding -------------------------------------------------------------------

    async def _connect(self, stop: asyncio.Event) -> bool:
        delay = 0.2
        while not stop.is_set():
            try:
                self._nc = await nats.connect(
                    **self.nats.connect_options("audit"), max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                    connect_timeout=2, allow_reconnect=True, error_cb=self._on_error,
                    disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect)
                log.info("nats connected")
                return True
            except Exception as exc:  # NATS may come up later
                log.warning("nats connect failed, retrying", extra={"error": describe_connect_error(exc)})
                await _sleep(stop, delay)
                delay = min(delay * 2, 5.0)
        return False

    async def _on_error(self, exc: Exception) -> None:
        log_nats_error(exc)

    async def _on_disconnect(self) -> None:
        if not self._closing:
            log.warning("nats disconnected")

    async def _on_reconnect(self) -> None:
        log.info("nats reconnected")

    async def _bind(self) -> None:
        """The stream and the durable consumer exist (created if not), and we pull from it."""
        js = self._nc.jetstream(timeout=3)
        await ensure_stream(js, self.installation)
        config = ConsumerConfig(
            name=self.durable, durable_name=self.durable, description="audit log writer",
            filter_subject=self.installation.subjects, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait, max_ack_pending=self.max_ack_pending, max_deliver=-1)
        try:
            await js.add_consumer(self.installation.stream, config)
        except nats.js.errors.BadRequestError as exc:
            # It exists with other settings (an operator changed them): use it as it is.
            log.warning("audit consumer exists with other settings; using it", extra={"error": str(exc)})
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
        self._sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.installation.stream)
        log.info("audit consumer bound", extra={"stream": self.installation.stream, "consumer": self.durable})

    # --- the loop -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if not await self._connect(stop):
            return
        try:
            await self._loop(stop)
        finally:
            self._closing = True
            try:
                if self._nc.is_connected:
                    await self._nc.flush(timeout=2)  # the last acks reach the server
            except Exception:
                pass
            try:
                await self._nc.close()
            except Exception:
                pass

    async def _loop(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            if self._sub is None or failures >= 3:
                try:
                    await self._bind()
                    failures = 0
                except Exception as exc:
                    log.warning("cannot bind the audit consumer yet, retrying",
                                extra={"error": f"{type(exc).__name__}: {exc}"})
                    await _sleep(stop, 1.0)
                    continue
            try:
                msgs = await self._sub.fetch(self.batch, timeout=self.fetch_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                if self._nc.is_connected:
                    LAG.set(0)
                continue
            except Exception as exc:  # the consumer is gone, NATS is restarting, ...
                failures += 1
                log.warning("fetch failed", extra={"error": f"{type(exc).__name__}: {exc}", "failures": failures})
                if failures < 3:  # at 3, re-bind at once (NATS may have lost the consumer)
                    await _sleep(stop, 0.2 * 2 ** failures)
                continue
            failures = 0
            await self._handle(msgs, stop)

    async def _handle(self, msgs: list, stop: asyncio.Event) -> None:
        started = time.perf_counter()
        good: list[tuple[object, list[AuditRecord]]] = []
        async for msg in workers.sliced(msgs):  # decoding a fetch is long: the loop gets turns
            try:
                records = self._decode(msg)
            except Exception as exc:  # Undecodable, or anything odd about it: never wedge on one message
                REJECTED.labels("undecodable").inc()
                log.error("undecodable message on the event stream, dropped",
                          extra={"subject": msg.subject, "error": f"{type(exc).__name__}: {exc}",
                                 "bytes": len(msg.data)})
                await self._term(msg)
                continue
            wrong = self._not_of_its_subject(msg.subject, records)
            if wrong:
                REJECTED.labels("wrong_subject").inc()
                log.error("events not of their message's subject (forged?), dropped",
                          extra={"subject": msg.subject, "type": wrong, "events": len(records)})
                await self._term(msg)
                continue
            good.append((msg, records))
        for msg in await self._store(good, stop):  # acks only after the insert committed
            try:
                await msg.ack()
            except Exception as exc:  # a lost ack means a redelivery, which the insert ignores
                log.warning("ack failed", extra={"error": type(exc).__name__})
        try:
            LAG.set(msgs[-1].metadata.num_pending)
        except Exception:
            pass
        BATCH_SECONDS.observe(time.perf_counter() - started)

    @staticmethod
    def _decode(msg) -> list[AuditRecord]:
        fallback_id, fallback_ms = "", int(time.time() * 1000)
        try:
            meta = msg.metadata
            fallback_ms = int(meta.timestamp.timestamp() * 1000)
            fallback_id = f"nats:{meta.stream}:{meta.sequence.stream}:{fallback_ms}"
        except Exception:
            pass
        headers = msg.headers or {}
        fallback_id = headers.get("Nats-Msg-Id") or fallback_id
        if headers.get(BATCH_HEADER):
            return decode_batch(msg.data, fallback_id=fallback_id, fallback_time_ms=fallback_ms)
        return [decode(msg.data, fallback_id=fallback_id, fallback_time_ms=fallback_ms)]

    def _not_of_its_subject(self, subject: str, records: list[AuditRecord]) -> str:
        """The type of the first event that its subject does not carry ("" if all fit).
        A subject this build does not know is a newer build's: its events are kept."""
        expected = PAYLOADS.get(self.installation.relative(subject))
        if expected is None:
            return ""
        kind, entity = expected
        for record in records:
            if record.type != kind or (entity and json.loads(record.detail_json).get("entity") != entity):
                return record.type
        return ""

    @staticmethod
    async def _term(msg) -> None:
        try:
            await msg.term()
        except Exception:
            pass

    async def _store(self, pending: list[tuple[object, list[AuditRecord]]], stop: asyncio.Event) -> list:
        """Store the batch, retrying until it commits; returns the messages now safe to ack
        (all of them, unless stopping while Postgres is down: those are delivered again later)."""
        done: list = []
        delay = 0.2
        last_touch = time.monotonic()
        while pending:
            records = [record for _, batch in pending for record in batch]
            try:
                new = await self.log.store(records)
                STORED.inc(new)
                DUPLICATES.inc(len(records) - new)
                return done + [msg for msg, _ in pending]
            except asyncpg.DataError:
                # Some row is not storable as data: store them one by one, drop the bad one loudly.
                stored, pending = await self._store_one_by_one(pending)
                done += stored
                continue
            except Exception as exc:
                STORE_FAILURES.inc()
                log.warning("storing audit events failed, will retry",
                            extra={"error": f"{type(exc).__name__}: {exc}", "events": len(records)})
            if stop.is_set():
                log.warning("stopping with unstored events; they will be delivered again",
                            extra={"events": len(records)})
                for msg, _ in pending:  # at once, not after ack_wait
                    try:
                        await msg.nak()
                    except Exception:
                        pass
                return done
            if time.monotonic() - last_touch > self.ack_wait / 3:
                last_touch = time.monotonic()
                for msg, _ in pending:  # keep them ours (not redelivered elsewhere) while we retry
                    try:
                        await msg.in_progress()
                    except Exception:
                        pass
            await _sleep(stop, delay)
            delay = min(delay * 2, 5.0)
        return done

    async def _store_one_by_one(self, batch: list[tuple[object, list[AuditRecord]]]) -> tuple[list, list]:
        """After a DataError: each record alone. Returns (messages done, messages still pending for retry).
        A message is done when each of its records is stored or refused as data (logged, dropped)."""
        done, pending = [], []
        for msg, records in batch:
            retry, refused = False, 0
            for record in records:
                try:
                    new = await self.log.store([record])
                    STORED.inc(new)
                    DUPLICATES.inc(1 - new)
                except asyncpg.DataError as exc:
                    refused += 1
                    REJECTED.labels("unstorable").inc()
                    log.error("audit event refused by Postgres, dropped",
                              extra={"event_id": record.event_id, "type": record.type, "error": str(exc)})
                except Exception:
                    retry = True  # not a data problem: the whole message is retried (stored ones are no-ops)
            if retry:
                pending.append((msg, records))
            elif refused == len(records):
                await self._term(msg)
            else:
                done.append(msg)
        return done, pending

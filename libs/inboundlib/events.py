"""Events on NATS JetStream (DESIGN.md: events are protobuf with a unique id).

`EventBus.publish` never blocks and never fails the caller: events go into a
bounded in-memory buffer that a background task sends to JetStream, each with
`Nats-Msg-Id` = event id so a retried publish is stored once. While NATS is
down the buffer holds them (past its bound, new events are dropped, counted
and logged); when NATS is back, they are sent in order.

Cache invalidation listens with plain core subscriptions on the same subjects.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable

import nats
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError

from inbound.events.v1 import events_pb2
from inboundlib.logs import request_id_var
from inboundlib.metrics import EVENTS_BUFFERED, EVENTS_DROPPED

log = logging.getLogger(__name__)

STREAM = "INBOUND_EVENTS"
SUBJECT_PREFIX = "inbound.events."
CLIENT_CHANGED = "inbound.events.registry.client"
KEYS_ROTATED = "inbound.events.keys.rotated"
TOKEN_ISSUED = "inbound.events.token.issued"
TOKEN_DENIED = "inbound.events.token.denied"
TOKEN_REVOKED = "inbound.events.token.revoked"
REVOKED_TOKEN_INTROSPECTED = "inbound.events.token.introspected_revoked"

PUBLISH_ROUND = 128

Handler = Callable[[events_pb2.Event], Awaitable[None]]


async def ensure_stream(js) -> None:
    """Create (or bring up to date) the INBOUND_EVENTS stream; publishers and the audit consumer both call it."""
    config = StreamConfig(name=STREAM, subjects=[SUBJECT_PREFIX + ">"], duplicate_window=120,
                          max_age=14 * 24 * 3600)
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


class EventBus:
    def __init__(self, url: str, source: str, *, buffer_limit: int = 100_000):
        self.url = url
        self.source = source
        self.buffer_limit = buffer_limit
        self._buffer: deque[tuple[str, bytes, str]] = deque()
        self._wake = asyncio.Event()
        self._nc: nats.NATS | None = None
        self._js = None
        self._handlers: list[tuple[str, Handler]] = []
        self._subscribed: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._drop_logged_at = 0.0
        self.connected = asyncio.Event()

    async def start(self) -> None:
        """Connect in the background; the service starts even while NATS is down."""
        self._tasks.append(asyncio.create_task(self._connect_loop(), name="nats-connect"))
        self._tasks.append(asyncio.create_task(self._send_loop(), name="nats-send"))

    async def _connect_loop(self) -> None:
        delay = 0.2
        while not self._closing:
            try:
                self._nc = await nats.connect(
                    self.url, name=self.source, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                    connect_timeout=2, allow_reconnect=True,
                    disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect,
                    error_cb=self._on_error,
                )
                self._js = self._nc.jetstream(timeout=3)
                await self._ensure_stream()
                for subject, handler in self._handlers:
                    await self._subscribe(subject, handler)
                self.connected.set()
                self._wake.set()
                log.info("nats connected")
                return
            except Exception as exc:  # keep trying: NATS may come up later
                log.warning("nats connect failed, retrying", extra={"error": type(exc).__name__})
                if self._nc is not None:
                    try:
                        await self._nc.close()
                    except Exception:
                        pass
                    self._nc = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _ensure_stream(self) -> None:
        await ensure_stream(self._js)

    async def _on_disconnect(self) -> None:
        self.connected.clear()
        log.warning("nats disconnected")

    async def _on_reconnect(self) -> None:
        self.connected.set()
        self._wake.set()
        log.info("nats reconnected")

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats error", extra={"error": repr(exc)})

    def publish(self, subject: str, event: events_pb2.Event) -> str:
        """Queue an event; returns its id. Never blocks, never raises for NATS trouble."""
        if not event.event_id:
            event.event_id = uuid.uuid4().hex
        if not event.occurred_at_unix_ms:
            event.occurred_at_unix_ms = int(time.time() * 1000)
        event.source = event.source or self.source
        event.request_id = event.request_id or request_id_var.get()
        if len(self._buffer) >= self.buffer_limit:
            EVENTS_DROPPED.labels(self.source).inc()
            now = time.monotonic()
            if now - self._drop_logged_at > 5:
                self._drop_logged_at = now
                log.error("event buffer full, dropping events", extra={"limit": self.buffer_limit})
            return event.event_id
        self._buffer.append((subject, event.SerializeToString(), event.event_id))
        self._wake.set()
        return event.event_id

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def _send_loop(self) -> None:
        """Publish in pipelined rounds (up to PUBLISH_ROUND at once, each awaiting its ack);
        what fails stays at the front of the buffer and is retried with the same id."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._buffer:
                EVENTS_BUFFERED.labels(self.source).observe(len(self._buffer))
            while self._buffer and self._js is not None and self.connected.is_set():
                round_ = [self._buffer.popleft() for _ in range(min(PUBLISH_ROUND, len(self._buffer)))]
                outcomes = await asyncio.gather(
                    *(self._js.publish(subject, data, headers={"Nats-Msg-Id": event_id}, timeout=2)
                      for subject, data, event_id in round_), return_exceptions=True)
                failed = [item for item, outcome in zip(round_, outcomes) if isinstance(outcome, BaseException)]
                if failed:
                    self._buffer.extendleft(reversed(failed))
                    log.warning("event publish failed, will retry",
                                extra={"failed": len(failed), "error": type(next(
                                    o for o in outcomes if isinstance(o, BaseException))).__name__})
                    await asyncio.sleep(0.5)
            if self._buffer:  # not connected: look again shortly
                await asyncio.sleep(0.2)
                self._wake.set()

    async def subscribe(self, subject: str, handler: Handler) -> None:
        """Deliver every event on `subject` to `handler` (now, or once connected)."""
        self._handlers.append((subject, handler))
        if self._nc is not None and self._nc.is_connected:
            await self._subscribe(subject, handler)

    async def _subscribe(self, subject: str, handler: Handler) -> None:
        key = f"{subject}#{id(handler)}"
        if key in self._subscribed:
            return
        self._subscribed.add(key)

        async def on_message(msg) -> None:
            event = events_pb2.Event()
            try:
                event.ParseFromString(msg.data)
            except Exception:
                log.warning("undecodable event", extra={"subject": msg.subject})
                return
            try:
                await handler(event)
            except Exception:
                log.exception("event handler failed", extra={"subject": msg.subject})

        await self._nc.subscribe(subject, cb=on_message)

    async def flush(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while self._buffer and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def close(self, flush_timeout: float = 2.0) -> None:
        await self.flush(flush_timeout)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except BaseException:
                pass
        if self._buffer:
            log.warning("events not sent at shutdown", extra={"count": len(self._buffer)})
        if self._nc is not None:
            try:
                await self._nc.drain()
            except Exception:
                pass

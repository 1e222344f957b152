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
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError

from inbound.events.v1 import events_pb2
from inboundlib import actors
from inboundlib.logs import request_id_var
from inboundlib.metrics import EVENTS_BUFFERED, EVENTS_DROPPED

log = logging.getLogger(__name__)

STREAM = "INBOUND_EVENTS"
SUBJECT_PREFIX = "inbound.events."
# RegistryChanged events go to inbound.events.registry.<entity>; subscribe to
# one entity's subject, or to REGISTRY_CHANGED_ALL for every entity.
REGISTRY_CHANGED_PREFIX = "inbound.events.registry."
REGISTRY_CHANGED_ALL = REGISTRY_CHANGED_PREFIX + ">"
ENTITY_CLIENT = "client"
ENTITY_SIGNING_KEY = "signing_key"


def registry_subject(entity: str) -> str:
    return REGISTRY_CHANGED_PREFIX + entity


CLIENT_CHANGED = registry_subject(ENTITY_CLIENT)
SIGNING_KEY_CHANGED = registry_subject(ENTITY_SIGNING_KEY)
KEYS_ROTATED = "inbound.events.keys.rotated"
TOKEN_ISSUED = "inbound.events.token.issued"
TOKEN_DENIED = "inbound.events.token.denied"
TOKEN_REVOKED = "inbound.events.token.revoked"
REVOKED_TOKEN_INTROSPECTED = "inbound.events.token.introspected_revoked"
ACCESS_DENIED = "inbound.events.access.denied"

ROUND_EVENTS = 1024
MESSAGE_EVENTS = 256
BATCH_HEADER = "Inbound-Event-Batch"

Handler = Callable[[events_pb2.Event], Awaitable[None]]


def registry_changed(entity: str, id: str, change: str) -> events_pb2.Event:
    """The one change event of every registry entity (publish names its actor)."""
    return events_pb2.Event(registry_changed=events_pb2.RegistryChanged(entity=entity, id=id, change=change))


def actor_to_pb(who: actors.Actor) -> events_pb2.Actor:
    return events_pb2.Actor(kind=who.kind, id=who.id)


async def ensure_stream(js) -> None:
    """Create the INBOUND_EVENTS stream if it does not exist; publishers and the audit
    consumer both call it. An existing stream is left as it is (an operator may have
    given it replicas or limits of their own)."""
    try:
        await js.stream_info(STREAM)
        return
    except NotFoundError:
        pass
    try:
        await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT_PREFIX + ">"], duplicate_window=120,
                                         max_age=14 * 24 * 3600))
    except BadRequestError:
        pass  # created meanwhile by another process


class EventBus:
    def __init__(self, url: str, source: str, *, buffer_limit: int = 100_000):
        self.url = url
        self.source = source
        self.buffer_limit = buffer_limit
        self._buffer: deque[tuple[str, events_pb2.Event]] = deque()
        self._low: deque[tuple[str, events_pb2.Event]] = deque()
        self._wake = asyncio.Event()
        self._nc: nats.NATS | None = None
        self._js = None
        self._handlers: list[tuple[str, Handler]] = []
        self._subscribed: set[str] = set()
        self._reconnect_hooks: list[Callable[[], Awaitable[None]]] = []
        self._hook_tasks: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._drop_logged_at = 0.0
        self._sending = 0  # events taken from the buffer whose publish is not acked yet
        self.connected = asyncio.Event()
        # Counts (re)connections, raised before `connected` is set: what a cache stored
        # during an earlier connection may have missed invalidations, even though the
        # reconnect hooks that drop it have not run yet.
        self.connections = 0

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
                self._subscribed = set()  # subscriptions belong to a connection
                for subject, handler in list(self._handlers):
                    await self._subscribe(subject, handler)
                await self._nc.flush(timeout=2)  # the server has them before we rely on them
                await self._ensure_stream()
                self.connections += 1
                self.connected.set()
                self._wake.set()
                log.info("nats connected")
                self._run_reconnect_hooks()
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
        self.connections += 1
        self.connected.set()
        self._wake.set()
        log.info("nats reconnected")
        self._run_reconnect_hooks()

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` whenever a connection to NATS is (re)made: events published
        while disconnected were missed by this process's subscriptions, so caches
        kept current by them must catch up (drop, or re-read their source)."""
        self._reconnect_hooks.append(hook)

    def _run_reconnect_hooks(self) -> None:
        for hook in self._reconnect_hooks:
            task = asyncio.get_running_loop().create_task(self._run_hook(hook))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    async def _run_hook(self, hook) -> None:
        try:
            await hook()
        except Exception as exc:
            log.warning("reconnect hook failed", extra={"hook": getattr(hook, "__qualname__", "?"),
                                                        "error": type(exc).__name__})

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats error", extra={"error": repr(exc)})

    def publish(self, subject: str, event: events_pb2.Event, *, low_priority: bool = False) -> str:
        """Queue an event; returns its id. Never blocks, never raises for NATS trouble.

        `low_priority` marks events a caller can cause at will (refused requests,
        revoked tokens presented again): when the buffer is full they go first, so
        a flood of them during a NATS outage cannot push out issued or revoked tokens."""
        if not event.event_id:
            event.event_id = uuid.uuid4().hex
        if not event.occurred_at_unix_ms:
            event.occurred_at_unix_ms = int(time.time() * 1000)
        event.source = event.source or self.source
        if not event.HasField("actor"):
            # Whoever is in context (an operator through inboundctl, ...), else the service itself.
            event.actor.CopyFrom(actor_to_pb(actors.current() or actors.Actor(actors.SERVICE, self.source)))
        if event.HasField("registry_changed") and not event.registry_changed.HasField("actor"):
            event.registry_changed.actor.CopyFrom(event.actor)  # the change keeps who made it
        event.request_id = event.request_id or request_id_var.get()
        if len(self._buffer) + len(self._low) >= self.buffer_limit:
            if low_priority or not self._low:
                self._dropped()
                return event.event_id
            self._low.popleft()
            self._dropped()
        (self._low if low_priority else self._buffer).append((subject, event))
        self._wake.set()
        return event.event_id

    def _dropped(self) -> None:
        EVENTS_DROPPED.labels(self.source).inc()
        now = time.monotonic()
        if now - self._drop_logged_at > 5:
            self._drop_logged_at = now
            log.error("event buffer full, dropping events", extra={"limit": self.buffer_limit})

    @property
    def pending(self) -> int:
        """Events not yet stored by JetStream (buffered or in flight)."""
        return len(self._buffer) + len(self._low) + self._sending

    async def _send_loop(self) -> None:
        """Adaptive batches, as on the hot-path RPCs: whatever gathered while the
        previous round was in flight goes out now, one message per subject
        (EventBatch, up to MESSAGE_EVENTS events), each awaiting its ack. What
        fails stays at the front of the buffer and is sent again with the same
        message id, so JetStream stores it once."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._buffer or self._low:
                EVENTS_BUFFERED.labels(self.source).observe(len(self._buffer) + len(self._low))
            while (self._buffer or self._low) and self._js is not None and self.connected.is_set():
                taken = [self._buffer.popleft() for _ in range(min(ROUND_EVENTS, len(self._buffer)))]
                taken += [self._low.popleft() for _ in range(min(ROUND_EVENTS - len(taken), len(self._low)))]
                messages = _group(taken)
                self._sending = len(taken)
                try:
                    outcomes = await asyncio.gather(*(self._publish(subject, events) for subject, events in messages),
                                                    return_exceptions=True)
                finally:
                    self._sending = 0
                failed = [(subject, event) for (subject, events), outcome in zip(messages, outcomes)
                          if isinstance(outcome, BaseException) for event in events]
                if failed:
                    self._buffer.extendleft(reversed(failed))
                    error = next(o for o in outcomes if isinstance(o, BaseException))
                    log.warning("event publish failed, will retry",
                                extra={"events": len(failed), "error": type(error).__name__})
                    if isinstance(error, (NoStreamResponseError, NotFoundError)):
                        await self._recreate_stream()
                    await asyncio.sleep(0.5)
            if self._buffer or self._low:  # not connected: look again shortly
                await asyncio.sleep(0.2)
                self._wake.set()

    async def _publish(self, subject: str, events: list[events_pb2.Event]) -> None:
        if len(events) == 1:
            data, headers = events[0].SerializeToString(), {"Nats-Msg-Id": events[0].event_id}
        else:
            # A stable id for this exact group, so a retry of it is de-duplicated.
            data = events_pb2.EventBatch(events=events).SerializeToString()
            headers = {"Nats-Msg-Id": f"{events[0].event_id}+{len(events)}", BATCH_HEADER: "1"}
        await self._js.publish(subject, data, headers=headers, timeout=2)

    async def _recreate_stream(self) -> None:
        """NATS came back without its data (a new server, a wiped volume): make the stream again."""
        try:
            await self._ensure_stream()
        except Exception as exc:
            log.warning("stream re-create failed", extra={"error": type(exc).__name__})

    async def subscribe(self, subject: str, handler: Handler) -> None:
        """Deliver every event on `subject` to `handler` (now, or once connected)."""
        self._handlers.append((subject, handler))
        if self._nc is not None and not self._nc.is_closed:
            # Connected or reconnecting: nats-py replays subscriptions on reconnect.
            await self._subscribe(subject, handler)
            if self._nc.is_connected:
                try:
                    await self._nc.flush(timeout=2)
                except Exception:
                    pass

    async def _subscribe(self, subject: str, handler: Handler) -> None:
        key = f"{subject}#{id(handler)}"
        if key in self._subscribed:
            return
        self._subscribed.add(key)

        async def on_message(msg) -> None:
            try:
                events = decode_message(msg.data, msg.headers)
            except Exception:
                log.warning("undecodable event", extra={"subject": msg.subject})
                return
            for event in events:
                try:
                    await handler(event)
                except Exception:
                    log.exception("event handler failed", extra={"subject": msg.subject})

        await self._nc.subscribe(subject, cb=on_message)

    async def flush(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def close(self, flush_timeout: float = 5.0) -> None:
        await self.flush(flush_timeout)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except BaseException:
                pass
        if self.pending:
            log.warning("events not sent at shutdown", extra={"count": self.pending})
        if self._nc is not None:
            try:
                await self._nc.drain()
            except Exception:
                pass


def _group(taken: list[tuple[str, events_pb2.Event]]) -> list[tuple[str, list[events_pb2.Event]]]:
    """Events by subject, in order, cut into messages of at most MESSAGE_EVENTS."""
    by_subject: dict[str, list[events_pb2.Event]] = {}
    for subject, event in taken:
        by_subject.setdefault(subject, []).append(event)
    return [(subject, events[i:i + MESSAGE_EVENTS])
            for subject, events in by_subject.items() for i in range(0, len(events), MESSAGE_EVENTS)]


def decode_message(data: bytes, headers: dict | None) -> list[events_pb2.Event]:
    """The events one JetStream message carries (one Event, or an EventBatch)."""
    if headers and headers.get(BATCH_HEADER):
        batch = events_pb2.EventBatch()
        batch.ParseFromString(data)
        return list(batch.events)
    event = events_pb2.Event()
    event.ParseFromString(data)
    return [event]

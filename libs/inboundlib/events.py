"""Events on NATS JetStream (DESIGN.md: events are protobuf with a unique id).

`EventBus.publish` never blocks and never fails the caller: events go into a
bounded in-memory buffer that a background task sends to JetStream, each with
`Nats-Msg-Id` = event id so a retried publish is stored once. What happens
while NATS cannot take them depends on the delivery (INBOUND_EVENTS_DELIVERY):

- durable (the default; the bus has a spool, inboundlib.spool): events go to a
  local append-only spool, fsync'ed, and are replayed in order when NATS is
  back (or at the next start). A caller that must not answer before its event
  is durable (the token path: a token is answered only once its audit event
  is) publishes with `awaited=True` and then `await bus.durable(event_id)`:
  that returns once JetStream acknowledged the event or the spool holds it, and
  raises AuditUnavailable (temporarily_unavailable) when the spool is full.
  Concurrent callers share one publish round and one fsync.
- buffered (no spool; chosen explicitly): the buffer holds them in memory (past
  its bound, new events are dropped, counted and logged) and `durable` returns
  at once; what a crash would lose is reported in metrics (EVENTS_IN_MEMORY and
  the age of the oldest).

Cache invalidation listens with plain core subscriptions on the same subjects.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
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
from inboundlib.metrics import (
    EVENTS_BUFFERED,
    EVENTS_DROPPED,
    EVENTS_IN_MEMORY,
    EVENTS_IN_MEMORY_OLDEST_SECONDS,
    EVENTS_REFUSED,
    EVENTS_SPOOL_BYTES,
)
from inboundlib.oauth.errors import TemporarilyUnavailable
from inboundlib.spool import Spool, SpoolFull

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
REPLAY_MESSAGES = 64  # spooled messages replayed per round
RETRY_SECONDS = 0.5  # after a failed publish, events go to the spool (or wait, buffered) this long
BATCH_HEADER = "Inbound-Event-Batch"

Handler = Callable[[events_pb2.Event], Awaitable[None]]
# An event waiting to be sent: its subject, itself, and the future of a caller awaiting its durability.
Entry = tuple[str, events_pb2.Event, "asyncio.Future | None"]


class AuditUnavailable(TemporarilyUnavailable):
    """An event could not be made durable (NATS unreachable and the spool full, or
    the spool failed): the request that caused it is refused rather than answered
    unaudited."""


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
    def __init__(self, url: str, source: str, *, buffer_limit: int = 100_000, spool: Spool | None = None):
        self.url = url
        self.source = source
        self.buffer_limit = buffer_limit
        self.spool = spool  # durable delivery when set (see the module docstring)
        self._buffer: deque[Entry] = deque()
        self._low: deque[Entry] = deque()
        self._inflight: list[Entry] = []  # taken from the buffers by the round in progress
        self._waiters: dict[str, asyncio.Future] = {}  # event id -> durable, for `durable()`
        self._retry_at = 0.0  # until then, publish to JetStream is not tried (durable: spool instead)
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="event-spool") if spool else None
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
        self._full_logged_at = 0.0
        self.connected = asyncio.Event()
        # Counts (re)connections, raised before `connected` is set: what a cache stored
        # during an earlier connection may have missed invalidations, even though the
        # reconnect hooks that drop it have not run yet.
        self.connections = 0
        EVENTS_IN_MEMORY.labels(source).set_function(lambda: self.pending)
        EVENTS_IN_MEMORY_OLDEST_SECONDS.labels(source).set_function(self._oldest_in_memory_age)
        EVENTS_SPOOL_BYTES.labels(source).set_function(lambda: self.spool.bytes if self.spool else 0)

    async def start(self) -> None:
        """Connect in the background; the service starts even while NATS is down.
        Durable: the spool is opened first (what it holds is replayed once connected)."""
        if self.spool is not None:
            await self._on_disk(self.spool.open)
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

    def publish(self, subject: str, event: events_pb2.Event, *, low_priority: bool = False,
                awaited: bool = False) -> str:
        """Queue an event; returns its id. Never blocks, never raises for NATS trouble.

        `low_priority` marks events a caller can cause at will (refused requests,
        revoked tokens presented again): when the buffer is full they go first, so
        a flood of them during a NATS outage cannot push out issued or revoked tokens
        (and in the spool they may fill only half of it).
        `awaited`: the caller will `await durable(id)` (and must)."""
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
        waiter = None
        if awaited and self.spool is not None:
            waiter = self._waiters[event.event_id] = asyncio.get_running_loop().create_future()
        if len(self._buffer) + len(self._low) >= self.buffer_limit:
            if low_priority or not self._low:
                self._dropped()
                _resolve(waiter, AuditUnavailable(detail="event buffer full"))
                return event.event_id
            _resolve(self._low.popleft()[2], AuditUnavailable(detail="event buffer full"))
            self._dropped()
        (self._low if low_priority else self._buffer).append((subject, event, waiter))
        self._wake.set()
        return event.event_id

    async def durable(self, *event_ids: str) -> None:
        """Return once these events (published with `awaited=True`) are durable:
        acknowledged by JetStream, or in the spool. Raises AuditUnavailable if one
        cannot be (the spool is full). Buffered delivery: returns at once."""
        waiters = [self._waiters[i] for i in event_ids if i in self._waiters]
        try:
            for outcome in await asyncio.gather(*waiters, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
        finally:
            for i in event_ids:
                self._waiters.pop(i, None)

    def _dropped(self) -> None:
        EVENTS_DROPPED.labels(self.source).inc()
        now = time.monotonic()
        if now - self._drop_logged_at > 5:
            self._drop_logged_at = now
            log.error("event buffer full, dropping events", extra={"limit": self.buffer_limit})

    @property
    def pending(self) -> int:
        """Events held only in this process's memory (buffered or in flight): a crash loses them."""
        return len(self._buffer) + len(self._low) + len(self._inflight)

    def _oldest_in_memory_age(self) -> float:
        heads = [q[0][1].occurred_at_unix_ms for q in (self._inflight, self._buffer, self._low) if q]
        return max(0.0, time.time() - min(heads) / 1000) if heads else 0.0

    async def _on_disk(self, fn, *args, **kwargs):
        """Spool work in the bus's one disk thread: in order, and never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._disk, lambda: fn(*args, **kwargs))

    async def _send_loop(self) -> None:
        """Adaptive batches, as on the hot-path RPCs: whatever gathered while the
        previous round was in flight goes out now, one message per subject
        (EventBatch, up to MESSAGE_EVENTS events), each awaiting its ack.

        Buffered: what fails stays at the front of the buffer and is sent again
        with the same message id, so JetStream stores it once. Durable: while NATS
        is unreachable (or a publish failed a moment ago), or older events still
        wait in the spool, events go to the spool behind them, so order is kept;
        once connected, the spool is replayed from its oldest record."""
        while True:
            pause = self._retry_at - time.monotonic() if self._retry_at > time.monotonic() else 0.2
            try:
                # Waiting for NATS (or a retry): look again shortly, or at once when events arrive.
                await asyncio.wait_for(self._wake.wait(), pause) if self._waiting() else await self._wake.wait()
            except (asyncio.TimeoutError, TimeoutError):
                pass
            self._wake.clear()
            if self._buffer or self._low:
                EVENTS_BUFFERED.labels(self.source).observe(len(self._buffer) + len(self._low))
            while True:
                can_publish = (self._js is not None and self.connected.is_set()
                               and time.monotonic() >= self._retry_at)
                if self.spool is not None and not (can_publish and self.spool.empty):
                    replayed = can_publish and await self._replay_round()
                    spooled = bool(self._buffer or self._low) and await self._spool_round()
                    if not (replayed or spooled):
                        break
                elif can_publish and (self._buffer or self._low):
                    await self._send_round()
                else:
                    break

    def _waiting(self) -> bool:
        """Something is left to do that NATS (or a retry, or spool space) must allow first."""
        return bool(self._buffer or self._low or (self.spool is not None and not self.spool.empty))

    def _take(self) -> tuple[list[Entry], list[Entry]]:
        """The next round: up to ROUND_EVENTS events, high priority first."""
        high = [self._buffer.popleft() for _ in range(min(ROUND_EVENTS, len(self._buffer)))]
        low = [self._low.popleft() for _ in range(min(ROUND_EVENTS - len(high), len(self._low)))]
        self._inflight = high + low
        return high, low

    def _put_back(self, high: list[Entry], low: list[Entry]) -> None:
        """In front, in order: the next round takes them first."""
        self._buffer.extendleft(reversed(high))
        self._low.extendleft(reversed(low))

    async def _send_round(self) -> None:
        high, low = self._take()
        messages = _group(high) + _group(low)
        try:
            outcomes = await asyncio.gather(*(self._publish(subject, [e for _, e, _ in entries])
                                              for subject, entries in messages), return_exceptions=True)
        except asyncio.CancelledError:  # closing: `close` spools or reports what is left
            self._put_back(high, low)
            raise
        finally:
            self._inflight = []
        failed: set[int] = set()
        for (_, entries), outcome in zip(messages, outcomes):
            if isinstance(outcome, BaseException):
                failed.update(id(entry) for entry in entries)
            else:
                for entry in entries:
                    _resolve(entry[2])
        if failed:
            # Buffered: the next round sends them again. Durable: they go to the spool now.
            self._put_back([e for e in high if id(e) in failed], [e for e in low if id(e) in failed])
            error = next(o for o in outcomes if isinstance(o, BaseException))
            log.warning("event publish failed, will retry",
                        extra={"events": len(failed), "error": type(error).__name__})
            self._retry_at = time.monotonic() + RETRY_SECONDS
            if isinstance(error, (NoStreamResponseError, NotFoundError)):
                await self._recreate_stream()

    async def _spool_round(self) -> bool:
        """Durable, NATS not available now: the events gathered go to the spool (one
        write and one fsync per priority). False if the spool cannot take them: then
        every caller waiting is refused, and the events stay in memory (sent if NATS
        comes back)."""
        high, low = self._take()
        try:
            for entries, low_priority in ((high, False), (low, True)):
                if not entries:
                    continue
                await self._on_disk(self.spool.append, [(subject, [e for _, e, _ in group])
                                                        for subject, group in _group(entries)],
                                    low_priority=low_priority)
                for entry in entries:
                    _resolve(entry[2])
                entries.clear()  # spooled: not put back below
        except Exception as exc:
            self._refuse_waiters(exc)
            self._put_back(high, low)
            return False
        except asyncio.CancelledError:
            self._put_back(high, low)
            raise
        finally:
            self._inflight = []
        return True

    def _refuse_waiters(self, exc: Exception) -> None:
        """The spool cannot take events: every request still waiting for one is refused
        (temporarily_unavailable), now rather than when its turn comes."""
        refused = [f for f in self._waiters.values() if not f.done()]
        for future in refused:
            _resolve(future, AuditUnavailable(detail="event spool full" if isinstance(exc, SpoolFull)
                                              else "event spool failed"))
        EVENTS_REFUSED.labels(self.source).inc(len(refused))
        now = time.monotonic()
        if now - self._full_logged_at > 5:
            self._full_logged_at = now
            if isinstance(exc, SpoolFull):
                log.error("event spool full: requests that need an audit event are refused",
                          extra={"limit_bytes": self.spool.limit_bytes})
            else:
                log.error("event spool failed: requests that need an audit event are refused",
                          extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _replay_round(self) -> bool:
        """Send the oldest spooled messages again, and move past those JetStream took.
        Each is sent as it was grouped, with the same message id. False if nothing was
        left or a publish failed (then not again before RETRY_SECONDS)."""
        records = await self._on_disk(self.spool.read, REPLAY_MESSAGES)
        if not records:
            return False
        outcomes = await asyncio.gather(*(self._publish(r.subject, r.events) for r in records),
                                        return_exceptions=True)
        done = next((i for i, o in enumerate(outcomes) if isinstance(o, BaseException)), len(records))
        await self._on_disk(self.spool.consume, records[:done])
        if done < len(records):
            error = outcomes[done]
            log.warning("event replay failed, will retry", extra={"error": type(error).__name__})
            self._retry_at = time.monotonic() + RETRY_SECONDS
            if isinstance(error, (NoStreamResponseError, NotFoundError)):
                await self._recreate_stream()
            return False
        if self.spool.empty:
            log.info("event spool replayed")
        return True

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
        """Send what is buffered (durable: or spool it), then disconnect. Durable: what
        could not be sent by `flush_timeout` is spooled, for the next start to replay."""
        await self.flush(flush_timeout)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except BaseException:
                pass
        if self.spool is not None:
            left = list(self._buffer) + list(self._low)
            try:
                if left:
                    await self._on_disk(self.spool.append, [(subject, [e for _, e, _ in entries])
                                                            for subject, entries in _group(left)])
                    self._buffer.clear()
                    self._low.clear()
            except Exception as exc:
                log.error("events not spooled at shutdown", extra={"count": len(left), "error": type(exc).__name__})
            await self._on_disk(self.spool.close)
            self._disk.shutdown(wait=True)
        if self.pending:
            log.warning("events not sent at shutdown", extra={"count": self.pending})
        if self._nc is not None:
            try:
                await self._nc.drain()
            except Exception:
                pass


def _group(taken: list[Entry]) -> list[tuple[str, list[Entry]]]:
    """Events by subject, in order, cut into messages of at most MESSAGE_EVENTS."""
    by_subject: dict[str, list[Entry]] = {}
    for entry in taken:
        by_subject.setdefault(entry[0], []).append(entry)
    return [(subject, entries[i:i + MESSAGE_EVENTS])
            for subject, entries in by_subject.items() for i in range(0, len(entries), MESSAGE_EVENTS)]


def _resolve(waiter: asyncio.Future | None, error: Exception | None = None) -> None:
    """Tell a caller awaiting `durable` that its event is durable (or, with `error`, cannot be)."""
    if waiter is None or waiter.done():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


def decode_message(data: bytes, headers: dict | None) -> list[events_pb2.Event]:
    """The events one JetStream message carries (one Event, or an EventBatch)."""
    if headers and headers.get(BATCH_HEADER):
        batch = events_pb2.EventBatch()
        batch.ParseFromString(data)
        return list(batch.events)
    event = events_pb2.Event()
    event.ParseFromString(data)
    return [event]

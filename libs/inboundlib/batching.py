"""Adaptive batching for hot-path RPCs (DESIGN.md, "Hot-path RPCs carry batches").

When no call is in flight a request goes out at once, so one caller sees no
added latency. While a call is in flight the next requests gather, up to
`max_batch`, and go out together as soon as it returns. The gRPC hop costs
far more than the work per item, so batching is what keeps a Python service
path cheap under load. The queue is bounded: past `max_pending` a request is
refused at once (back-pressure) instead of waiting without end.

Each item keeps its own deadline (the caller's remaining budget, see
inboundlib.budget): an item whose budget has passed is refused without being
sent, and a batch's call runs until the latest deadline among its items.

One item never fails its neighbours. A batched RPC answers per item; when a
whole call fails anyway, an `idempotent` call (a lookup, an introspection, a
revocation) is
- sent once more when its peer was going away (`transient(exc)`: a restart, a
  graceful stop cancelling what it could not finish), if time is left;
- otherwise split: each item is sent alone, so whichever item broke the call
  fails by itself.
A call that is not idempotent (issuing a token) is never repeated: its items
fail together, and the caller answers "try again later" for a transient failure.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from prometheus_client import Counter

from inboundlib import budget
from inboundlib.config import Env
from inboundlib.metrics import BATCH_REJECTED, BATCH_SIZE

Req = TypeVar("Req")
Res = TypeVar("Res")

log = logging.getLogger(__name__)

BATCH_RETRIED = Counter(
    "inbound_batch_retried_total",
    "Idempotent batched calls sent again after a failure (again: the peer went away; split: one by one)",
    ["call", "how"],
)

# Batches in flight per client, unless a client says otherwise. Measured on the real
# three-hop chain (python -m tools.measure_batches_in_flight: 2 shared cores, JWT,
# wrk at 64 connections, 1 and 2 alternating on one stack, 6 rounds each): one in
# flight gave 658 tokens/s and 1445 us of services' CPU per token (medians), two
# gave 549 tokens/s and 1600 us; one used less CPU in every pair of rounds. One
# batch in flight lets the next batch gather. INBOUND_BATCHES_IN_FLIGHT overrides
# it for a process (read once, through Env: a bad value stops the process).
DEFAULT_MAX_IN_FLIGHT = 1
_configured_in_flight: int | None = None


def default_max_in_flight() -> int:
    global _configured_in_flight
    if _configured_in_flight is None:
        _configured_in_flight = Env().int("INBOUND_BATCHES_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT, minimum=1, maximum=16)
    return _configured_in_flight


class Overloaded(Exception):
    """The queue in front of a batched call is full; the caller should shed load."""


class Expired(Exception):
    """The request's deadline passed before it could be sent, or before its answer came."""


# send(items, timeout_seconds) -> results, one per item in order.
SendBatch = Callable[[list[Req], float], Awaitable[Sequence[Res]]]


def _never(exc: BaseException) -> bool:
    return False


class Coalescer(Generic[Req, Res]):
    def __init__(self, name: str, send: SendBatch, *, max_batch: int = 32, max_in_flight: int | None = None,
                 max_pending: int = 4096, idempotent: bool = False,
                 transient: Callable[[BaseException], bool] = _never, resend: SendBatch | None = None,
                 restamp: Callable[[Req, float], None] | None = None,
                 unavailable: Callable[[BaseException], bool] = _never):
        self.name = name
        self._send = send
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight or default_max_in_flight()
        self._max_pending = max_pending
        self._idempotent = idempotent
        self._transient = transient
        # How to send once more after a transient failure (say, waiting for the channel
        # to be ready again instead of failing at once); `send` when not given.
        self._resend = resend or send
        # Sets an item's budget for the next hop from the seconds it has left, when sent.
        self._restamp = restamp
        # The peer itself is down or overloaded: no item is to blame, and sending each
        # alone would only multiply the calls to a peer that is struggling.
        self._unavailable = unavailable
        self._pending: deque[tuple[Req, asyncio.Future, float]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, item: Req, timeout: float) -> Res:
        """Send `item` in the next batch; wait at most `timeout` seconds (never beyond
        the current budget) for its result."""
        timeout = budget.remaining(timeout)
        if timeout <= 0:
            raise Expired(self.name)
        if len(self._pending) >= self._max_pending:
            BATCH_REJECTED.labels(self.name).inc()
            raise Overloaded(self.name)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        deadline = time.monotonic() + timeout
        self._pending.append((item, future, deadline))
        if self._in_flight < self._max_in_flight:
            self._launch()
        if not future.done():
            # Each request gives up at its own deadline, queued or sent. (A timer
            # handle is far cheaper than asyncio.wait_for's wrapper.)
            timer = loop.call_at(loop.time() + timeout, self._expire, future)
            future.add_done_callback(lambda _: timer.cancel())
        return await future

    def _expire(self, future: asyncio.Future) -> None:
        if not future.done():
            future.set_exception(Expired(self.name))

    def _launch(self) -> None:
        now = time.monotonic()
        batch: list[tuple[Req, asyncio.Future, float]] = []
        while self._pending and len(batch) < self._max_batch:
            item, future, deadline = self._pending.popleft()
            if future.done():
                continue
            if deadline <= now:
                future.set_exception(Expired(self.name))
                continue
            batch.append((item, future, deadline))
        if not batch:
            return
        self._in_flight += 1
        # Run for the whole batch, not in the context of whichever request launched it.
        task = asyncio.get_running_loop().create_task(self._run(batch), context=budget.shared_context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[tuple[Req, asyncio.Future, float]], retried: bool) -> Sequence[Res]:
        now = time.monotonic()
        if self._restamp is not None:
            for item, _, deadline in batch:
                self._restamp(item, deadline - now)
        timeout = max(deadline for _, _, deadline in batch) - now
        send = self._resend if retried else self._send
        results = await send([item for item, _, _ in batch], max(timeout, 0.001))
        if len(results) != len(batch):
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} requests")
        return results

    async def _run(self, batch: list[tuple[Req, asyncio.Future, float]]) -> None:
        try:
            BATCH_SIZE.labels(self.name).observe(len(batch))
            await self._deliver(batch, retried=False)
        except BaseException as exc:  # only cancellation gets here; every waiter learns of it
            _fail(batch, exc)
            raise
        finally:
            self._in_flight -= 1
            if self._pending and self._in_flight < self._max_in_flight:
                self._launch()

    async def _deliver(self, batch: list[tuple[Req, asyncio.Future, float]], *, retried: bool) -> None:
        try:
            results = await self._call(batch, retried)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._recover(batch, exc, retried)
            return
        for (_, future, _), result in zip(batch, results):
            if not future.done():
                future.set_result(result)

    async def _recover(self, batch: list[tuple[Req, asyncio.Future, float]], exc: Exception, retried: bool) -> None:
        now = time.monotonic()
        live = [entry for entry in batch if not entry[1].done() and entry[2] > now]
        _fail([entry for entry in batch if entry not in live], exc)
        if not live:
            return
        if not self._idempotent:
            _fail(live, exc)
            return
        if self._transient(exc):
            if retried:
                _fail(live, exc)
                return
            BATCH_RETRIED.labels(self.name, "again").inc()
            log.info("batched call failed as its peer went away; sending once more",
                     extra={"call": self.name, "items": len(live), "error": type(exc).__name__})
            await self._deliver(live, retried=True)
            return
        if len(live) == 1 or self._unavailable(exc):
            _fail(live, exc)
            return
        # Something in the batch broke the whole call: find which item by sending each alone.
        BATCH_RETRIED.labels(self.name, "split").inc()
        log.warning("batched call failed; sending its items one by one",
                    extra={"call": self.name, "items": len(live), "error": type(exc).__name__})
        await asyncio.gather(*(self._deliver([entry], retried=retried) for entry in live))


def _fail(batch: list[tuple[object, asyncio.Future, float]], exc: BaseException) -> None:
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(exc)

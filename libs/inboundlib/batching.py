"""Adaptive batching for hot-path RPCs (DESIGN.md, "Hot-path RPCs carry batches").

When no call is in flight a request goes out at once, so one caller sees no
added latency. While a call is in flight the next requests gather, up to
`max_batch`, and go out together as soon as it returns. The gRPC hop costs
far more than the work per item, so batching is what keeps a Python service
path cheap under load. The queue is bounded: past `max_pending` a request is
refused at once (back-pressure) instead of waiting without end.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from inboundlib.metrics import BATCH_REJECTED, BATCH_SIZE

Req = TypeVar("Req")
Res = TypeVar("Res")

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue in front of a batched call is full; the caller should shed load."""


class Expired(Exception):
    """The request's deadline passed before it could be sent."""


# send(items, timeout_seconds) -> results, one per item in order.
SendBatch = Callable[[list[Req], float], Awaitable[Sequence[Res]]]


class Coalescer(Generic[Req, Res]):
    def __init__(self, name: str, send: SendBatch, *, max_batch: int = 32, max_in_flight: int = 2,
                 max_pending: int = 4096):
        self.name = name
        self._send = send
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._max_pending = max_pending
        self._pending: deque[tuple[Req, asyncio.Future, float]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, item: Req, timeout: float) -> Res:
        """Send `item` in the next batch; wait at most `timeout` seconds for its result."""
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
            # Each request gives up at its own deadline, queued or sent: a batch's
            # call runs until the latest deadline among its items. (A timer handle
            # is far cheaper than asyncio.wait_for's wrapper.)
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
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Req, asyncio.Future, float]]) -> None:
        try:
            BATCH_SIZE.labels(self.name).observe(len(batch))
            timeout = max(deadline for _, _, deadline in batch) - time.monotonic()
            results = await self._send([item for item, _, _ in batch], max(timeout, 0.001))
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} requests")
            for (_, future, _), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
        except BaseException as exc:  # every waiter learns of the failure
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._in_flight -= 1
            if self._pending and self._in_flight < self._max_in_flight:
                self._launch()

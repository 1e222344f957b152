"""Bounded worker pools: CPU-heavy or blocking work off the event loop.

An event loop serves every request of its process (of every service, in the
one-process mode), so one 1–2 ms RSA signature or a 50 ms password hash on it
stalls every other request for as long. Such work goes to a pool of threads
instead:

- `CPU` for work that releases the GIL while it computes: RSA signing and
  verification through `cryptography` (OpenSSL), argon2 hashing (argon2-cffi).
  As many threads as cores: more would only queue inside OpenSSL.
- `BLOCKING` for calls that wait (blocking file or network I/O of a library
  with no async API): more threads, since they mostly sleep.

Each pool bounds the work waiting for it; past the bound `submit` raises
`Overloaded` at once (answered as `temporarily_unavailable`, 503) rather than
letting a queue grow without limit. Work that holds the GIL the whole time
(pure Python) gains nothing from a thread and belongs on the loop, in small
steps. Small, fast calls (an ES256 or EdDSA signature, ~50 µs) cost more to
hand over to a thread than to run: measure before moving them.
"""
from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from inboundlib.batching import Overloaded

T = TypeVar("T")


class WorkerPool:
    def __init__(self, name: str, threads: int, *, max_waiting: int):
        self.name = name
        self.threads = threads
        self.max_waiting = max_waiting
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0

    @property
    def pending(self) -> int:
        """Calls submitted and not finished (running or waiting for a thread)."""
        return self._pending

    async def submit(self, fn: Callable[..., T], /, *args, **kwargs) -> T:
        """`fn(*args, **kwargs)` on a thread of the pool; the caller's coroutine awaits it.
        Raises Overloaded when `threads + max_waiting` calls are already in the pool."""
        if self._pending >= self.threads + self.max_waiting:
            raise Overloaded(f"worker pool {self.name} full ({self._pending} calls)")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"inbound-{self.name}")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs))
        finally:
            self._pending -= 1

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


_CORES = os.cpu_count() or 1
# Shared by every service of a process: the cores are shared too.
CPU = WorkerPool("cpu", _CORES, max_waiting=1024)
BLOCKING = WorkerPool("blocking", 4 * _CORES + 4, max_waiting=1024)


def signs_slowly(alg: str) -> bool:
    """Whether a JWS signature with `alg` belongs in the CPU pool. Measured with
    `python -m bench.offload` (2 shared cores, 64 signers): RS256 ≈ 1 ms of CPU a
    token, which offloading takes off the loop (loop CPU per token 972 → 120 µs,
    a 1 ms timer's median lateness 183 → 0.25 ms) at a ~10% CPU cost; ES256 ≈ 100
    and EdDSA ≈ 90 µs, which the hand-over would double (220 and 175 µs) while
    halving the rate: those stay inline."""
    return alg.startswith(("RS", "PS"))



SLICE_SECONDS = 0.002


async def sliced(items: Iterable[T], seconds: float = SLICE_SECONDS) -> AsyncIterator[T]:
    """`items`, giving the event loop a turn whenever `seconds` of the caller's work
    have passed: for long stretches of pure Python over many items (the audit
    consumer decodes thousands of events a fetch), which a thread would not help
    (they hold the GIL) and which on the loop would hold up every request of the
    process for the whole stretch (measured in the one-process mode: 100–700 ms).
    Between items only: an item's own work is one step."""
    started = time.perf_counter()
    for item in items:
        yield item
        if time.perf_counter() - started >= seconds:
            await asyncio.sleep(0)
            started = time.perf_counter()

"""Process entry point shared by every service's __main__.

`run(name, main)` sets up JSON logs and uvloop, turns a ConfigError into a
clear message and exit code 2, and hands `main` an event that is set on
SIGTERM or SIGINT so it can stop gracefully.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from inboundlib import logs
from inboundlib.config import ConfigError, Env

log = logging.getLogger(__name__)


EVENT_LOOPS = ("uvloop", "asyncio")


def run(name: str, main: Callable[[asyncio.Event], Awaitable[None]], *, event_loop: str = "uvloop") -> None:
    """`event_loop` is the default of INBOUND_EVENT_LOOP. uvloop is faster, but when one
    process saturates its core with many connections it serves them unfairly: measured
    with every service in one process (wrk, 64 connections), p99 ≈ 1 s with 2 s
    timeouts under uvloop against 0.2–0.35 s under asyncio's loop at the same rate."""
    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        logs.configure(name)
        # What the imports made lives as long as the process: kept out of the
        # collector's full passes, which otherwise walk it all again and again
        # (measured: a fifth of the edge's CPU per token went to collection).
        gc.freeze()
        if Env().choice("INBOUND_EVENT_LOOP", event_loop, EVENT_LOOPS) == "uvloop":
            import uvloop

            uvloop.run(wrapper())
        else:
            asyncio.run(wrapper())
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
    log.info("stopped")


async def retry_until_ready(what: str, start: Callable[[], Awaitable[None]], stop: asyncio.Event,
                            timeout: float = 60.0) -> None:
    """Run `start` until it succeeds: a dependency (the registry, say) may come up after us."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.1
    while True:
        try:
            await start()
            return
        except ConfigError:
            raise
        except Exception as exc:
            if loop.time() > deadline or stop.is_set():
                raise RuntimeError(f"{what} not reachable after {timeout:.0f}s") from exc
            log.warning("waiting for dependency", extra={"dependency": what, "error": type(exc).__name__})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def open_database(url: str, migrations, stop: asyncio.Event, *, table: str | None = None,
                        min_size: int = 2, max_size: int = 10, migration_url: str = "",
                        runtime_privileges: dict[str, str] | None = None):
    """A connection pool on `url` with the service's `migrations` applied (inboundlib.db),
    waiting for Postgres while it is not up yet. With `migration_url` (the schema owner),
    migrations run as that role, which then grants `url`'s role `runtime_privileges`."""
    from inboundlib import db

    pool = None
    bookkeeping = {} if table is None else {"table": table}

    async def open_and_migrate() -> None:
        nonlocal pool
        if pool is None:
            pool = await db.create_pool(url, min_size=min(min_size, max_size), max_size=max_size)
        if not migration_url:
            await db.migrate(pool, migrations, **bookkeeping)
            return
        owner = await db.create_pool(migration_url, min_size=1, max_size=1)
        try:
            await db.migrate(owner, migrations, **bookkeeping, runtime_role=await pool.fetchval("SELECT current_user"),
                             runtime_privileges=runtime_privileges or {})
        finally:
            await owner.close()

    await retry_until_ready("postgres", open_and_migrate, stop)
    return pool

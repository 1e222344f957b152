"""Postgres access: a pool, and versioned migrations applied once on start.

Migrations are `NNNN_name.sql` files applied in order inside one transaction
that holds an advisory lock, so two replicas starting at once apply each
migration exactly once and the second sees the first's result. Services that
share a database keep their own bookkeeping table (`table`), each with its own
lock, so their version numbers never collide.
"""
from __future__ import annotations

import asyncio
import logging
import re
import zlib
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

# The database is unreachable, restarting or not answering in time (a statement
# timeout, an operator's pg_cancel_backend, a lock held by a migration), as opposed to
# refusing a statement as wrong: callers answer "try again later" (gRPC UNAVAILABLE),
# never "broken" and never "no such thing".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError, asyncpg.LockNotAvailableError,
)

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x1B0D  # the advisory lock of the default bookkeeping table
_DEFAULT_TABLE = "schema_migrations"
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=10)


def _migrations(folder: Path) -> list[tuple[int, str, str]]:
    found = []
    for path in sorted(folder.iterdir()):
        match = _MIGRATION.match(path.name)
        if match:
            found.append((int(match.group(1)), path.name, path.read_text()))
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {folder}")
    return found


def _lock_key(table: str) -> int:
    """One advisory lock per bookkeeping table; the default keeps its historical key."""
    return _LOCK_KEY if table == _DEFAULT_TABLE else 0x1B0D_0000_0000 + zlib.crc32(table.encode())


async def migrate(pool: asyncpg.Pool, folder: Path, *, table: str = _DEFAULT_TABLE) -> list[str]:
    """Apply pending migrations; returns the names applied by this call."""
    if not _TABLE_NAME.match(table):
        raise ValueError(f"bad migrations table name {table!r}")
    applied_now: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(table))
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch(f"SELECT version FROM {table}")}
        for version, name, sql in _migrations(folder):
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(f"INSERT INTO {table} (version, name) VALUES ($1, $2)", version, name)
            applied_now.append(name)
    if applied_now:
        log.info("migrations applied", extra={"migrations": applied_now, "table": table})
    return applied_now

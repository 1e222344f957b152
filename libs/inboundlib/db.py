"""Postgres access: a pool, and versioned migrations applied once on start.

Two roles (inboundlib.pgroles): a migration role that owns the schema
(INBOUND_MIGRATION_DATABASE_URL) and a runtime role (DATABASE_URL) that owns
nothing. Given both, a service migrates as the first and grants the second
exactly its RUNTIME_PRIVILEGES, in the migration's transaction; given only
DATABASE_URL, that one role does both (an install with one role).
TLS: asyncpg honours `sslmode` (and `sslrootcert`, `sslcert`, `sslkey`) in
either URL, e.g. `?sslmode=verify-full&sslrootcert=/etc/inbound/pg/ca.crt`.

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
from collections.abc import Mapping
from pathlib import Path

import asyncpg

from inboundlib.config import ConfigError

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


_PRIVILEGES = re.compile(r"^(SELECT|INSERT|UPDATE|DELETE)( \([a-z_, ]+\))?(, (SELECT|INSERT|UPDATE|DELETE)( \([a-z_, ]+\))?)*$")


async def _grant(conn: asyncpg.Connection, role: str, privileges: Mapping[str, str]) -> None:
    """Exactly `privileges` per table for `role` (whatever it had before is revoked), and
    USAGE on the serial sequences of tables it inserts into (identity columns need none)."""
    grantee = await conn.fetchval("SELECT quote_ident($1)", role)
    for table, granted in privileges.items():
        if not _TABLE_NAME.match(table) or not _PRIVILEGES.match(granted):
            raise ValueError(f"bad runtime privilege {table!r}: {granted!r}")
        await conn.execute(f"REVOKE ALL ON TABLE {table} FROM {grantee}")
        await conn.execute(f"GRANT {granted} ON TABLE {table} TO {grantee}")
        if "INSERT" in granted:
            for sequence in await conn.fetch(
                    "SELECT quote_ident(s.relname) AS name FROM pg_class s JOIN pg_depend d ON d.objid = s.oid"
                    " WHERE s.relkind = 'S' AND d.deptype = 'a' AND d.refobjid = $1::regclass", table):
                await conn.execute(f"GRANT USAGE ON SEQUENCE {sequence['name']} TO {grantee}")
    log.info("runtime role granted", extra={"role": role, "tables": sorted(privileges)})


def _lock_key(table: str) -> int:
    """One advisory lock per bookkeeping table; the default keeps its historical key."""
    return _LOCK_KEY if table == _DEFAULT_TABLE else 0x1B0D_0000_0000 + zlib.crc32(table.encode())


async def migrate(pool: asyncpg.Pool, folder: Path, *, table: str = _DEFAULT_TABLE, runtime_role: str = "",
                  runtime_privileges: Mapping[str, str] | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied by this call. With
    `runtime_role` (another role than the pool's), that role gets exactly
    `runtime_privileges` (table -> privileges) on those tables, and nothing else on them."""
    if not _TABLE_NAME.match(table):
        raise ValueError(f"bad migrations table name {table!r}")
    try:
        return await _migrate(pool, folder, table, runtime_role, runtime_privileges)
    except asyncpg.InsufficientPrivilegeError as exc:
        # Not a database that is not up yet (retried): a role that lacks a right, said now.
        user = await pool.fetchval("SELECT current_user")
        raise ConfigError(
            f"the migrations of {folder.parent.name} cannot run as role {user}: {exc}. The migration role "
            "(INBOUND_MIGRATION_DATABASE_URL, else DATABASE_URL's) must own the schema, or may CREATE in it; "
            "see the README, \"Postgres roles and TLS\"") from None


async def _migrate(pool: asyncpg.Pool, folder: Path, table: str, runtime_role: str,
                   runtime_privileges: Mapping[str, str] | None) -> list[str]:
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
        if runtime_role and runtime_role != await conn.fetchval("SELECT current_user"):
            # Under the migration lock: concurrent GRANTs on one table fail ("tuple concurrently updated").
            await _grant(conn, runtime_role, runtime_privileges or {})
    if applied_now:
        log.info("migrations applied", extra={"migrations": applied_now, "table": table})
    return applied_now

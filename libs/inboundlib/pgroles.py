"""The two Postgres roles of an installation, made for `make run`, `make test` and
the bench from a URL that may create roles (the private Postgres's superuser, or
DATABASE_URL's when it is one). Production makes the same roles once, by hand
(README, "Postgres roles").

- migration role (INBOUND_MIGRATION_DATABASE_URL): owns the schema; services run
  their migrations with it and then grant the runtime role what they need
  (inboundlib.db.migrate, each service's RUNTIME_PRIVILEGES).
- runtime role (DATABASE_URL): owns nothing and may not create anything; it gets
  only the table privileges the services grant it (the audit log: INSERT and
  SELECT), so no service can change or remove what it may only append.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg


@dataclass(frozen=True)
class DatabaseRoles:
    migration_url: str
    runtime_url: str
    migration_role: str
    runtime_role: str


def role_names(database: str) -> tuple[str, str]:
    """(migration, runtime) role names of `database`. Roles are cluster-wide: named after
    the database, so the suite's fresh databases on one server (and two suites at once)
    never share roles."""
    prefix = "inbound" if database == "postgres" else database
    return f"{prefix}_migration", f"{prefix}_runtime"


def drop_roles(admin_url: str, database: str) -> None:
    """Drop the roles of `database` once that database is dropped (they own nothing elsewhere)."""
    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            for name in role_names(database):
                await conn.execute(f"DROP ROLE IF EXISTS {await conn.fetchval('SELECT quote_ident($1)', name)}")
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, drop()).result()


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


class RolesNotMade(RuntimeError):
    """The URL's user may create roles but not set the database up for them."""


async def _create(admin_url: str) -> DatabaseRoles | None:
    conn = await asyncpg.connect(admin_url)
    try:
        superuser, createrole, owner = await conn.fetchrow(
            "SELECT r.rolsuper, r.rolcreaterole,"
            " pg_has_role(current_user, d.datdba, 'USAGE') AND pg_has_role(current_user, n.nspowner, 'USAGE')"
            " FROM pg_roles r, pg_database d, pg_namespace n"
            " WHERE r.rolname = current_user AND d.datname = current_database() AND n.nspname = 'public'")
        # Setting the roles up takes a superuser, or a user with CREATEROLE that owns the database
        # and its public schema (its GRANTs on them would otherwise be silently ignored).
        if not (superuser or (createrole and owner)):
            return None
        database = await conn.fetchval("SELECT current_database()")
        migration, runtime = role_names(database)
        password = secrets.token_hex(16)  # for servers that ask for one; trust-auth servers ignore it
        ident = {name: await conn.fetchval("SELECT quote_ident($1)", name)
                 for name in (migration, runtime, database)}
        try:
            async with conn.transaction():
                for name in (migration, runtime):
                    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
                    # Altering a role, only a superuser may even name these attributes (Postgres 15
                    # refuses NOSUPERUSER to a CREATEROLE user, 16 NOCREATEDB to one without CREATEDB).
                    attributes = "NOSUPERUSER NOCREATEDB NOCREATEROLE" if superuser or not exists else ""
                    verb = "ALTER" if exists else "CREATE"
                    await conn.execute(f"{verb} ROLE {ident[name]} LOGIN {attributes} PASSWORD '{password}'")
                # Only the migration role creates in the schema (Postgres 14 and older let everyone).
                await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                await conn.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {ident[migration]}")
                await conn.execute(f"GRANT USAGE ON SCHEMA public TO {ident[runtime]}")
                await conn.execute(f"GRANT CONNECT ON DATABASE {ident[database]} TO {ident[migration]},"
                                   f" {ident[runtime]}")
                # Tables made before the roles existed (an older `make run` database) move to the schema
                # owner; a user that is not a superuser may give a table only to a role it is a member of.
                tables = await conn.fetch("SELECT quote_ident(tablename) AS name FROM pg_tables"
                                          " WHERE schemaname = 'public' AND tableowner <> $1", migration)
                if tables and not superuser:
                    await conn.execute(f"GRANT {ident[migration]} TO CURRENT_USER")
                for table in tables:
                    await conn.execute(f"ALTER TABLE public.{table['name']} OWNER TO {ident[migration]}")
        except asyncpg.InsufficientPrivilegeError as exc:
            raise RolesNotMade(
                f"cannot make the roles {migration} and {runtime} in database {database}: {exc}. The "
                "database URL's user needs to be a superuser, or to have CREATEROLE and own the database and "
                "its tables; or give a user without CREATEROLE (the services then run as that one role)"
            ) from None
        return DatabaseRoles(migration_url=_with_user(admin_url, migration, password),
                             runtime_url=_with_user(admin_url, runtime, password),
                             migration_role=migration, runtime_role=runtime)
    finally:
        await conn.close()


def create_roles(admin_url: str) -> DatabaseRoles | None:
    """Make (or refresh) the migration and runtime roles of `admin_url`'s database;
    None when that URL's user may not (then it is used as it is): see `_create`."""
    # In a thread: the caller may be inside a running event loop (an async test fixture).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _create(admin_url)).result()

"""Postgres roles: the services run as a runtime role that owns nothing; the audit
log is append-only against that role itself (not only by its trigger); the schema
belongs to the migration role. Every statement is tried inside a transaction that
is rolled back, so the session's system is left as it was even if one succeeded."""
from __future__ import annotations

import asyncpg
import pytest


@pytest.fixture
async def roles(stack):
    conn = await asyncpg.connect(stack.database_url)
    try:
        may_create_roles = await conn.fetchval(
            "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    finally:
        await conn.close()
    if not may_create_roles:
        pytest.skip("the suite's DATABASE_URL may not create roles: the services run as that one role")
    assert stack.db_roles is not None, "the stack made no roles although its database URL may"
    return stack.db_roles


async def _refused(conn: asyncpg.Connection, statement: str) -> str:
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute(statement)
    except asyncpg.InsufficientPrivilegeError as exc:
        return str(exc)
    finally:
        await tr.rollback()
    raise AssertionError(f"the runtime role was allowed: {statement}")


async def test_the_runtime_role_appends_and_reads_the_audit_log_and_nothing_more(roles):
    conn = await asyncpg.connect(roles.runtime_url)
    try:
        for statement in ("UPDATE audit_log SET type = type", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            # "permission denied", not the append-only trigger's own refusal: the role may not even try.
            assert "permission denied for table audit_log" in await _refused(conn, statement), statement
        for statement in ("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
                          "DROP TRIGGER audit_log_append_only ON audit_log", "DROP TABLE audit_log"):
            assert "must be owner of" in await _refused(conn, statement), statement
        granted = {r["privilege_type"] for r in await conn.fetch(
            "SELECT privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = current_user AND table_name = 'audit_log'")}
        assert granted == {"INSERT", "SELECT"}
        tr = conn.transaction()  # it may append (rolled back: the session's log stays as it was)
        await tr.start()
        await conn.execute("INSERT INTO audit_log (event_id, occurred_at, type, detail)"
                           " VALUES ('role-test', now(), 'test', '{}')")
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE event_id = 'role-test'") == 1
        await tr.rollback()
    finally:
        await conn.close()


async def test_the_runtime_role_cannot_change_the_schema_or_the_signing_keys(roles):
    conn = await asyncpg.connect(roles.runtime_url)
    try:
        assert "permission denied for schema public" in await _refused(conn, "CREATE TABLE mine (a int)")
        for statement in ("ALTER TABLE clients ADD COLUMN mine int", "DROP TABLE signing_keys",
                          "CREATE INDEX mine ON clients (name)"):
            assert "must be owner" in await _refused(conn, statement), statement
        # A stored key is only ever re-encrypted: never removed, never given another kid.
        for statement in ("DELETE FROM signing_keys", "UPDATE signing_keys SET kid = kid || 'x'",
                          "TRUNCATE clients", "DELETE FROM schema_migrations"):
            assert "permission denied" in await _refused(conn, statement), statement
    finally:
        await conn.close()


async def test_the_services_connect_as_the_runtime_role_and_the_migration_role_owns_the_schema(stack, roles):
    conn = await asyncpg.connect(stack.database_url)
    try:
        users = {r["usename"] for r in await conn.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND usename IS NOT NULL")}
        # The services' pools (a test may hold a connection as the stack's admin user meanwhile);
        # the migration role's connection was closed once the migrations and grants were done.
        assert roles.runtime_role in users and roles.migration_role not in users
        assert stack.service_env("client_registry")["DATABASE_URL"] == roles.runtime_url
        owners = {r["tableowner"] for r in await conn.fetch(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")}
        assert owners == {roles.migration_role}
    finally:
        await conn.close()


async def test_a_user_with_createrole_but_not_superuser_makes_the_roles_again_and_again(stack, roles):
    """`make run` with DATABASE_URL naming a user that may create roles but is no superuser:
    the roles are made on every start (Postgres refuses such a user even to say NOSUPERUSER
    when altering a role), and a database it does not own is left as it is (its GRANTs on
    the schema would be silently ignored) rather than half set up."""
    from urllib.parse import urlsplit, urlunsplit

    from inboundlib.pgroles import create_roles, drop_roles
    admin = await asyncpg.connect(stack.database_url)
    creator, owned, foreign = "r3test_creator", "r3test_owned", "r3test_foreign"

    def url(database: str) -> str:
        parts = urlsplit(stack.database_url)
        return urlunsplit(parts._replace(netloc=f"{creator}@{parts.netloc.rpartition('@')[2]}", path=f"/{database}"))

    try:
        await admin.execute(f"CREATE ROLE {creator} LOGIN CREATEROLE PASSWORD 'x'")
        await admin.execute(f"CREATE DATABASE {owned} OWNER {creator}")
        await admin.execute(f"CREATE DATABASE {foreign}")
        first = create_roles(url(owned))
        second = create_roles(url(owned))  # the next `make run`
        assert first is not None and second is not None
        check = await asyncpg.connect(second.migration_url)
        try:
            assert await check.fetchval("SELECT has_schema_privilege('public', 'CREATE')")
            assert not await check.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        finally:
            await check.close()
        assert create_roles(url(foreign)) is None
    finally:
        for database in (owned, foreign):
            await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            drop_roles(stack.database_url, database)
        await admin.execute(f"DROP ROLE IF EXISTS {creator}")
        await admin.close()


async def test_migrations_as_a_role_that_may_not_create_stop_at_once_saying_why(roles):
    """A role without the right to migrate is a configuration error, said at start; not
    a database "not reachable" after a minute of retries."""
    from pathlib import Path

    from inboundlib import db
    from inboundlib.config import ConfigError
    from services.audit.assembly import MIGRATIONS

    pool = await db.create_pool(roles.runtime_url, min_size=1, max_size=1)
    try:
        with pytest.raises(ConfigError, match=f"cannot run as role {roles.runtime_role}: permission denied"):
            await db.migrate(pool, Path(MIGRATIONS), table="role_test_migrations")
    finally:
        await pool.close()


async def test_a_stored_token_changes_only_by_rotation_or_revocation(roles):
    """The runtime role may mark a refresh token consumed (with its replay window and
    answer) or revoked, and change nothing else of a stored token: not whose it is, its
    scope, its expiry or its family's end."""
    conn = await asyncpg.connect(roles.runtime_url)
    try:
        for column in ("client_id", "subject", "username", "scopes", "expires_at", "family_expires_at", "grant_id",
                       "kind", "issued_at", "token_hash"):
            statement = f"UPDATE opaque_tokens SET {column} = {column}"
            assert "permission denied" in await _refused(conn, statement), statement
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute("UPDATE opaque_tokens SET consumed_at = consumed_at, replay_until = replay_until,"
                               " rotation_response = rotation_response, revoked_at = revoked_at WHERE false")
        finally:
            await tr.rollback()
    finally:
        await conn.close()


async def test_the_browser_state_changes_only_as_the_flow_changes_it(roles):
    """A code stays bound to what it was minted for (client, redirect URI, scopes, user, nonce,
    PKCE challenge, grant): the runtime role may only mark it consumed. A session only ends, a
    pending request only completes, and a user's recorded grant is never rewritten."""
    conn = await asyncpg.connect(roles.runtime_url)
    try:
        for table, columns in (
                ("authorization_codes", ("code_hash", "client_id", "redirect_uri", "scopes", "user_id", "username",
                                         "sid", "auth_time_ms", "nonce", "code_challenge", "code_challenge_method",
                                         "grant_id", "created_at_ms", "expires_at")),
                ("browser_sessions", ("id_hash", "sid", "user_id", "auth_time_ms", "created_at", "expires_at")),
                ("authorization_requests", ("id_hash", "client_id", "request_json", "created_at", "expires_at")),
                ("user_grants", ("user_id", "client_id", "grant_id", "created_at"))):
            for column in columns:
                statement = f"UPDATE {table} SET {column} = {column}"
                assert "permission denied" in await _refused(conn, statement), statement
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute("UPDATE authorization_codes SET consumed_at = consumed_at WHERE false")
            await conn.execute("UPDATE browser_sessions SET ended_at = ended_at WHERE false")
            await conn.execute("UPDATE authorization_requests SET completed_at = completed_at WHERE false")
        finally:
            await tr.rollback()
    finally:
        await conn.close()

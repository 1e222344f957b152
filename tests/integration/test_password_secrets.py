"""The password grant on a system apart from the session's (tests/conftest.py's
debug_stack, shared with the refresh_token grant's tests), whose settings the session's stack
does not have: every process logs at DEBUG (so the scan below reads every line
any of them writes), and a username locks after two failures
(INBOUND_LOGIN_LOCK_AFTER=2), so a lock needs no waiting through back-offs.

1. A locked user's right password answers invalid_grant, byte for byte the
   answer to a wrong password (the description does not say "locked").
2. No password, no argon2 hash, no access or refresh token appears in any log
   line of any process (the services', NATS's, Postgres's) or in any audit row,
   after sign-ins with right and wrong passwords, a lock, and refreshes; nor in
   any row of the database but the hash in its user's row.
"""
from __future__ import annotations

import secrets
from pathlib import Path

import asyncpg
import httpx
import pytest

from inboundlib import redact
from services.client_registry.api import UserSpec
from services.client_registry.client import RegistryClient
from tests.support import DEBUG_ENV, OPERATOR, audit_caught_up, eventually, register_client


@pytest.fixture(scope="module")
def own_stack(debug_stack):
    """tests/conftest.py's debug system (DEBUG logs, a lock after two failures), shared with
    the refresh_token grant's tests."""
    assert (DEBUG_ENV["INBOUND_LOG_LEVEL"], DEBUG_ENV["INBOUND_LOGIN_LOCK_AFTER"]) == ("debug", "2")
    return debug_stack


async def _create_user(stack, password: str):
    channel = stack.channel("client_registry", caller=OPERATOR)
    try:
        return await RegistryClient(channel).create_user(
            UserSpec(username="user-" + secrets.token_hex(4), password=password))
    finally:
        await channel.close()


async def _post(stack, data, auth) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        return await http.post("/oauth/token", data=data, auth=auth)


def _password(username: str, password: str) -> dict:
    return {"grant_type": "password", "username": username, "password": password}


async def test_a_locked_users_right_password_is_refused_like_a_wrong_one(own_stack):
    client, secret = await register_client(own_stack, grant_types=["password"])
    password = "right-" + secrets.token_urlsafe(12)
    user = await _create_user(own_stack, password)
    auth = (client.client_id, secret)
    wrong = [await _post(own_stack, _password(user.username, password + "-wrong"), auth) for _ in range(2)]
    locked = await _post(own_stack, _password(user.username, password), auth)
    assert locked.status_code == wrong[0].status_code == 400
    assert locked.json()["error"] == "invalid_grant"
    assert locked.content == wrong[0].content == wrong[1].content
    assert "lock" not in locked.text.lower()


def _log_files(*stacks) -> list[Path]:
    """Every log file the stacks' processes write: each service's, NATS's, Postgres's."""
    return sorted({path for s in stacks for path in Path(s.state_dir).rglob("*.log") if path.is_file()})


async def test_no_password_hash_or_token_in_any_log_or_audit_row(own_stack, separate_stack):
    client, secret = await register_client(own_stack, grant_types=["password", "refresh_token"],
                                           token_format="opaque")
    jwt_client, jwt_secret = await register_client(own_stack, grant_types=["password"])
    password = "Secret-Password-" + secrets.token_urlsafe(16)
    wrong_password = "Wrong-Password-" + secrets.token_urlsafe(16)
    user = await _create_user(own_stack, password)
    auth = (client.client_id, secret)

    refused = await _post(own_stack, _password(user.username, wrong_password), auth)
    assert refused.json()["error"] == "invalid_grant"
    nobody = "nobody-" + secrets.token_hex(4)
    unknown = await _post(own_stack, _password(nobody, password), auth)
    assert unknown.json()["error"] == "invalid_grant"
    granted = await _post(own_stack, _password(user.username, password), auth)
    assert granted.status_code == 200, granted.text
    as_jwt = await _post(own_stack, _password(user.username, password), (jwt_client.client_id, jwt_secret))
    assert as_jwt.status_code == 200, as_jwt.text
    tokens = [granted.json()["access_token"], granted.json()["refresh_token"], as_jwt.json()["access_token"]]
    refresh_token = granted.json()["refresh_token"]
    for _ in range(2):  # §6, rotating: each answer is a new access and refresh token
        refreshed = await _post(own_stack, {"grant_type": "refresh_token", "refresh_token": refresh_token}, auth)
        assert refreshed.status_code == 200, refreshed.text
        refresh_token = refreshed.json()["refresh_token"]
        tokens += [refreshed.json()["access_token"], refresh_token]

    # Everything that happened is in the audit trail and the logs before they are read.
    await audit_caught_up(own_stack)
    conn = await asyncpg.connect(own_stack.database_url)
    try:
        # This test's own rows (the system is shared: other tests' rows would satisfy a bare count).
        ours = {client.client_id, jwt_client.client_id}
        rows = await eventually(lambda: conn.fetch("SELECT a.*, a::text AS whole FROM audit_log a"),
                                until=lambda rows: sum(r["type"] == "token_denied" and r["client_id"] in ours
                                                       for r in rows) >= 2
                                and sum(r["type"] == "token_issued" and r["client_id"] in ours for r in rows) >= 4,
                                message="the sign-ins' audit rows")
        tables = [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert {"users", "login_failures", "opaque_tokens", "audit_log"} <= set(tables)
        stored = {table: [r["whole"] for r in await conn.fetch(f'SELECT t::text AS whole FROM "{table}" t')]
                  for table in tables}
    finally:
        await conn.close()
    # The refusals' log lines name the usernames by fingerprint (the caller's word).
    await eventually(lambda: "\n".join(p.read_text(errors="replace") for p in _log_files(own_stack)),
                     until=lambda text: redact.unverified(user.username) in text and redact.unverified(nobody) in text,
                     message="the password service's refusals are in its log")

    secrets_to_find = {"the password": password, "the wrong password": wrong_password, "an argon2 hash": "$argon2"}
    for n, token in enumerate(tokens):
        secrets_to_find[f"token {n}"] = token
        secrets_to_find[f"the end of token {n}"] = token[-16:]
    files = _log_files(own_stack, separate_stack)  # the session's Postgres serves this stack's database too
    assert any(p.name == "password.log" for p in files), [p.name for p in files]
    assert len(rows) >= 6
    hits = []
    for path in files:
        text = path.read_text(errors="replace")
        hits += [f"{what} in {path.name}" for what, value in secrets_to_find.items() if value in text]
    for row in rows:
        hits += [f"{what} in audit row {row['type']}" for what, value in secrets_to_find.items()
                 if value in row["whole"]]
    # Every row of every table: no password in clear anywhere (the users table holds its
    # argon2 hash, and only it), no token but as a SHA-256 (or sealed, for a refresh's retry).
    assert any(user.id in whole and "$argon2id$" in whole for whole in stored["users"])
    for table, wholes in stored.items():
        for whole in wholes:
            hits += [f"{what} in a row of {table}" for what, value in secrets_to_find.items()
                     if (value in whole or value.encode().hex() in whole)
                     and not (table == "users" and what == "an argon2 hash")]
    assert hits == []

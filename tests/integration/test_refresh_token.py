"""The refresh_token grant end to end (RFC 6749 §6, RFC 9700 §4.14.2): HTTP POST
/oauth/token at the edge -> the refresh_token service -> the registry's atomic rotation
in Postgres and token_issuer, every part a real process.

The first refresh token of each family is issued by token_issuer's Issue (as the
password grant does), for a client's own family (subject = the client, no user).
The module runs on a system apart from the session's (tests/conftest.py's debug_stack,
shared with the password grant's secrets scan) with a short grace window
(INBOUND_REFRESH_GRACE_SECONDS=3), so that "after the window" comes soon, and every
process logging at DEBUG, so that the scan for tokens reads every line written;
waits are `eventually` polls, never sleeps."""
from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.client_registry.api import ClientSpec, ClientUpdate, UserSpec, UserUpdate
from services.client_registry.client import RegistryClient
from services.token_issuer.api import IssueRequest
from tests.support import DEBUG_ENV, OPERATOR, IssuerAs, audit_caught_up, ensure_scopes, eventually

GRACE = int(DEBUG_ENV["INBOUND_REFRESH_GRACE_SECONDS"])
TOKEN = "/oauth/token"


@pytest.fixture(scope="module")
def system(debug_stack):
    """tests/conftest.py's debug system (DEBUG logs, the short grace window), shared with the
    password grant's secrets scan."""
    assert DEBUG_ENV["INBOUND_LOG_LEVEL"] == "debug"
    return debug_stack


@pytest.fixture(scope="module")
async def operator_registry(system):
    channel = system.channel("client_registry", caller=OPERATOR)
    yield RegistryClient(channel)
    await channel.close()


@pytest.fixture(scope="module")
async def tokens(system):
    issuer = IssuerAs(system)
    yield issuer
    await issuer.close()


@pytest.fixture(scope="module")
async def http(system):
    async with httpx.AsyncClient(base_url=system.edge_url, timeout=30) as client:
        yield client


class App:
    """A registered client, its secret, and what it does at the token endpoint."""

    def __init__(self, record, secret, http, issuer):
        self.record, self.secret, self.http, self.issuer = record, secret, http, issuer

    @property
    def client_id(self) -> str:
        return self.record.client_id

    def auth(self) -> dict:
        if self.record.public:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()}

    async def first_refresh_token(self, scopes=("api.read", "api.write"), user=None) -> str:
        """A new family, as a grant issues its first token (token_issuer's Issue): the
        client's own, or `user`'s (as the password grant issues it)."""
        issued = await self.issuer.issue(IssueRequest(
            client_id=self.client_id, subject=user.id if user else self.client_id,
            username=user.username if user else "", scopes=tuple(scopes), format="opaque",
            lifetime_seconds=300, refresh_token_lifetime=3600,
            grant_type="password" if user else "client_credentials"))
        assert issued.refresh_token
        return issued.refresh_token

    async def refresh(self, refresh_token: str, **extra) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
        if self.record.public:
            data["client_id"] = self.client_id
        return await self.http.post(TOKEN, data=data, headers=self.auth())


@pytest.fixture
def make_app(operator_registry, http, tokens):
    async def make(**spec) -> App:
        spec.setdefault("name", "refresh-" + uuid.uuid4().hex[:8])
        spec.setdefault("grant_types", ["client_credentials", "refresh_token"])
        spec.setdefault("scopes", ["api.read", "api.write"])
        spec.setdefault("token_format", "opaque")
        await ensure_scopes(operator_registry, spec["scopes"])
        record, secret = await operator_registry.create_client(ClientSpec(**spec))
        return App(record, secret, http, tokens)
    return make


def error(reply: httpx.Response) -> str:
    assert reply.status_code in (400, 401), reply.text
    return reply.json()["error"]


async def active(tokens: IssuerAs, token: str) -> bool:
    return (await tokens.introspect(token)).active


# --- rotation and reuse ---------------------------------------------------------------------------------

async def test_a_refresh_rotates_and_the_consumed_token_reused_after_the_window_revokes_the_family(
        make_app, tokens):
    app = await make_app()
    first = await app.first_refresh_token()

    reply = await app.refresh(first)
    assert reply.status_code == 200, reply.text
    assert reply.headers["cache-control"] == "no-store"
    rotated = reply.json()
    assert rotated["token_type"] == "Bearer" and rotated["scope"] == "api.read api.write"
    assert rotated["refresh_token"].startswith("ibr_") and rotated["refresh_token"] != first
    assert await active(tokens, rotated["access_token"])

    second = (await app.refresh(rotated["refresh_token"])).json()
    assert second["refresh_token"] not in (first, rotated["refresh_token"])

    # The consumed first token again: the same answer while the window lasts, then a reuse.
    def replay_or_refusal(reply: httpx.Response) -> bool:
        if reply.status_code == 200:
            assert reply.json() == rotated, "a retry within the window answers the very same tokens"
            return False
        return True
    refused = await eventually(lambda: app.refresh(first), until=replay_or_refusal, timeout=GRACE + 30,
                               message="the consumed token refused once the grace window is over")
    assert error(refused) == "invalid_grant"

    # Reuse revoked the whole family: the latest successor and every access token of it.
    assert error(await app.refresh(second["refresh_token"])) == "invalid_grant"
    for access_token in (rotated["access_token"], second["access_token"]):
        await eventually(lambda t=access_token: active(tokens, t), until=lambda is_active: not is_active,
                         message="the family's access tokens introspect inactive")


async def test_concurrent_identical_refreshes_inside_the_window_all_get_the_same_tokens(make_app):
    """A mobile app's retries racing its first request (hydra#3604): none of them breaks the family."""
    app = await make_app()
    first = await app.first_refresh_token()

    async def refreshed() -> dict:
        # temporarily_unavailable (the first answer still in flight after the bounded wait) is
        # what a client retries; any other answer is final.
        reply = await eventually(lambda: app.refresh(first), until=lambda r: r.status_code != 503,
                                 message="an answer other than temporarily_unavailable")
        assert reply.status_code == 200, reply.text
        return reply.json()

    answers = await asyncio.gather(*(refreshed() for _ in range(6)))
    assert all(answer == answers[0] for answer in answers), answers
    # The family is intact: its successor refreshes.
    assert (await app.refresh(answers[0]["refresh_token"])).status_code == 200


# --- refusals that change nothing ------------------------------------------------------------------------

async def test_a_broader_scope_is_invalid_scope_and_leaves_the_token_usable(make_app):
    app = await make_app(scopes=["api.read", "api.write", "api.admin"])
    first = await app.first_refresh_token(scopes=("api.read",))
    for scope in ("api.read api.write", "api.read other"):
        assert error(await app.refresh(first, scope=scope)) == "invalid_scope"
    reply = await app.refresh(first, scope="api.read")
    assert reply.status_code == 200, reply.text
    assert reply.json()["scope"] == "api.read"


async def test_scope_narrows_for_the_access_token_and_the_family_keeps_its_own(make_app, tokens):
    app = await make_app()
    first = await app.first_refresh_token()
    narrowed = (await app.refresh(first, scope="api.read")).json()
    assert narrowed["scope"] == "api.read"
    assert (await tokens.introspect(narrowed["access_token"])).scope == "api.read"
    full = (await app.refresh(narrowed["refresh_token"])).json()
    assert full["scope"] == "api.read api.write"


async def test_another_clients_token_is_invalid_grant_and_does_not_end_the_family(make_app):
    owner, thief = await make_app(), await make_app()
    first = await owner.first_refresh_token()
    assert error(await thief.refresh(first)) == "invalid_grant"
    reply = await owner.refresh(first)
    assert reply.status_code == 200, reply.text


async def test_unknown_and_missing_tokens(make_app):
    app = await make_app()
    assert error(await app.refresh("ibr_" + "A" * 43)) == "invalid_grant"
    assert error(await app.refresh("not-a-token")) == "invalid_grant"
    reply = await app.http.post(TOKEN, data={"grant_type": "refresh_token"}, headers=app.auth())
    assert error(reply) == "invalid_request"


async def test_a_client_not_allowed_refresh_token_is_unauthorized_client(make_app):
    app = await make_app(grant_types=["client_credentials"])
    first = await app.first_refresh_token()
    assert error(await app.refresh(first)) == "unauthorized_client"


async def test_a_disabled_client_cannot_refresh(make_app, operator_registry):
    app = await make_app()
    first = await app.first_refresh_token()
    await operator_registry.update_client(app.client_id, ClientUpdate(active=False))
    reply = await eventually(lambda: app.refresh(first), until=lambda r: r.status_code != 200,
                             message="the disabled client refused")
    assert error(reply) == "invalid_client"


async def test_a_disabled_users_family_cannot_refresh(make_app, operator_registry, tokens):
    app = await make_app()
    user = await operator_registry.create_user(UserSpec(username="refresh-" + uuid.uuid4().hex[:8]))
    first = await app.first_refresh_token(user=user)
    reply = await app.refresh(first)
    assert reply.status_code == 200, reply.text
    assert (await tokens.introspect(reply.json()["access_token"])).username == user.username
    await operator_registry.update_user(user.id, UserUpdate(active=False))
    assert error(await app.refresh(reply.json()["refresh_token"])) == "invalid_grant"


async def test_a_public_client_refreshes_with_its_client_id_alone(make_app):
    app = await make_app(public=True, grant_types=["refresh_token"])
    first = await app.first_refresh_token()
    reply = await app.refresh(first)
    assert reply.status_code == 200, reply.text


async def test_a_confidential_client_must_authenticate(make_app):
    app = await make_app()
    first = await app.first_refresh_token()
    reply = await app.http.post(TOKEN, data={"grant_type": "refresh_token", "refresh_token": first,
                                             "client_id": app.client_id})
    assert error(reply) == "invalid_client"
    assert (await app.refresh(first)).status_code == 200  # the failed attempt consumed nothing


# --- revocation and metadata -----------------------------------------------------------------------------

async def test_revoking_a_refresh_token_ends_its_family(make_app, tokens):
    """RFC 7009 §2.1: revoking a refresh token invalidates the grant's tokens."""
    app = await make_app()
    rotated = (await app.refresh(await app.first_refresh_token())).json()
    reply = await app.http.post("/oauth/revoke", data={"token": rotated["refresh_token"],
                                                       "token_type_hint": "refresh_token"}, headers=app.auth())
    assert reply.status_code == 200, reply.text
    assert error(await app.refresh(rotated["refresh_token"])) == "invalid_grant"
    await eventually(lambda: active(tokens, rotated["access_token"]), until=lambda is_active: not is_active,
                     message="the family's access token introspects inactive")


async def test_the_metadata_lists_refresh_token(http):
    metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
    assert "refresh_token" in metadata["grant_types_supported"]
    # Public clients refresh with client_id alone (RFC 8414 §2, RFC 7591 §2: `none`).
    assert "none" in metadata["token_endpoint_auth_methods_supported"]


# --- no refresh token in any log line or audit row ------------------------------------------------------

async def test_no_refresh_or_access_token_in_any_log_or_audit_row(system, separate_stack, make_app):
    """Rotation, a retry, refusals (another client's, unknown) and a reuse revoking its
    family, then every log file of the system's processes and every audit row is read;
    and every row of every table: refresh tokens are stored as SHA-256 hashes, and the
    answer kept for retries is sealed (in bytea, so the tokens' hex is looked for too)."""
    owner, other = await make_app(), await make_app()
    first = await owner.first_refresh_token()
    rotated = (await owner.refresh(first)).json()
    assert (await owner.refresh(first)).json() == rotated  # a retry within the window
    assert error(await other.refresh(rotated["refresh_token"])) == "invalid_grant"
    assert error(await owner.refresh("ibr_" + first[4:][::-1])) == "invalid_grant"
    await eventually(lambda: owner.refresh(first), until=lambda r: r.status_code == 400,
                     timeout=GRACE + 30, message="the reuse after the window")

    await audit_caught_up(system)
    conn = await asyncpg.connect(system.database_url)
    try:
        # This test's own rows (the system is shared: other tests' rows would satisfy a bare count).
        rows = await eventually(
            lambda: conn.fetch("SELECT a.type, a.client_id, a::text AS whole FROM audit_log a"),
            until=lambda rows: {("token_denied", other.client_id), ("refresh_token_reused", owner.client_id)}
            <= {(r["type"], r["client_id"]) for r in rows},
            message="the refusals' and the reuse's audit rows")
        tables = [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert {"opaque_tokens", "audit_log"} <= set(tables)
        stored = {table: [r["whole"] for r in await conn.fetch(f'SELECT t::text AS whole FROM "{table}" t')]
                  for table in tables}
    finally:
        await conn.close()
    assert len(stored["opaque_tokens"]) >= 3  # the first token, its successor, the opaque access token
    files = sorted({p for s in (system, separate_stack) for p in Path(s.state_dir).rglob("*.log") if p.is_file()})
    assert any(p.name == "refresh_token.log" for p in files), [p.name for p in files]
    secret = {"the first refresh token": first[4:], "the successor": rotated["refresh_token"][4:],
              "the access token": rotated["access_token"][4:]}
    hits = []
    for path in files:
        text = path.read_text(errors="replace")
        hits += [f"{what} in {path.name}" for what, value in secret.items() if value in text]
    for row in rows:
        hits += [f"{what} in audit row {row['type']}" for what, value in secret.items() if value in row["whole"]]
    for table, wholes in stored.items():
        for whole in wholes:
            hits += [f"{what} in a row of {table}" for what, value in secret.items()
                     if value in whole or value.encode().hex() in whole]
    assert hits == []


# --- the one-process mode ----------------------------------------------------------------------------------

async def test_the_one_process_mode_rotates_and_answers_a_retry_the_same(single_stack):
    """services/all_in_one: the grant calls the registry in the same process, not over gRPC.
    The session's one-process system (its default grace window, 5 s), not one of its own."""
    single = single_stack
    channel = single.channel("client_registry", caller=OPERATOR)
    issuer = IssuerAs(single)
    try:
        await ensure_scopes(RegistryClient(channel), ["api.read"])
        record, secret = await RegistryClient(channel).create_client(ClientSpec(
            name="refresh-single-" + uuid.uuid4().hex[:8], grant_types=["refresh_token"], scopes=["api.read"],
            token_format="jwt"))
        async with httpx.AsyncClient(base_url=single.edge_url, timeout=30) as http:
            app = App(record, secret, http, issuer)
            first = await app.first_refresh_token(scopes=("api.read",))
            reply = await app.refresh(first)
            assert reply.status_code == 200, reply.text
            assert (await app.refresh(first)).json() == reply.json()
            assert (await app.refresh(reply.json()["refresh_token"])).status_code == 200
    finally:
        await issuer.close()
        await channel.close()

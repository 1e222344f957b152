"""The authorization endpoint's state in the registry (services/client_registry/authorizations.py)
against the running stack's Postgres and NATS: sessions, pending requests, consents, codes.

The repository runs over the registry's own database role (its grants are tested too) and
publishes as client_registry does; token_issuer then judges revocations on its own
(introspection, its revocation set fed over NATS). One round trip goes through the
registry's gRPC service as the authorization_code service, the only caller it admits.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
import time
import uuid

import asyncpg
import pytest

from inbound.events.v1 import events_pb2
from inboundlib import identity
from inboundlib.events import TOKEN_REVOKED, EventBus
from services.client_registry import revocations as revocation_rows
from services.client_registry.api import (
    GRANT_REVOCATION_LIFETIME,
    REFUSED_REVOKED,
    AuthorizationCodeRecord,
    BrowserSession,
    ClientSpec,
    CodeNotFound,
    CodeReused,
    CodeToConsume,
    InvalidArgument,
    ItemError,
    PendingAuthorization,
    Refused,
    Rotation,
    UserSpec,
    UserUpdate,
)
from services.client_registry.authorizations import AuthorizationRepository
from services.client_registry.client import RegistryClient
from services.client_registry.refresh_tokens import RefreshTokenRepository
from services.token_issuer.api import IssueRequest
from tests.support import ensure_scopes, eventually, nats_connect

SESSION_LIFETIME = 3600


@pytest.fixture(scope="module")
async def pool(stack):
    """The registry's own database role: its grants (assembly.RUNTIME_PRIVILEGES) are tested too."""
    pool = await asyncpg.create_pool(stack.db_roles.runtime_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def bus(stack):
    """Publishing as client_registry does (its NATS permissions)."""
    bus = EventBus(stack.nats_settings("client_registry"), "test-authorizations")
    await bus.start()
    yield bus
    await bus.close()


@pytest.fixture(scope="module")
def repo(pool, bus):
    return AuthorizationRepository(pool, bus)


@pytest.fixture(scope="module")
async def web(registry):
    """A confidential web client allowed the code flow (and refresh tokens)."""
    await ensure_scopes(registry, ["api.read"])
    client, _ = await registry.create_client(ClientSpec(
        name="authz-web", grant_types=["authorization_code", "refresh_token"], scopes=["openid", "api.read"],
        redirect_uris=["https://web.example/cb"]))
    return client


@pytest.fixture(scope="module")
async def other(registry):
    client, _ = await registry.create_client(ClientSpec(
        name="authz-other", grant_types=["authorization_code"], scopes=["openid"],
        redirect_uris=["https://other.example/cb"]))
    return client


async def new_user(registry, password: str = "") -> str:
    user = await registry.create_user(UserSpec(username="authz-" + uuid.uuid4().hex[:10],
                                               password=password or secrets.token_urlsafe(16)))
    return user.id


def sha(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def now_ms() -> int:
    return int(time.time() * 1000)


def session_of(user_id: str) -> tuple[str, BrowserSession]:
    cookie = secrets.token_urlsafe(32)
    return cookie, BrowserSession(id_hash=sha(cookie), sid=secrets.token_urlsafe(16), user_id=user_id,
                                  username="", client_address="192.0.2.7", user_agent="Test\x00Agent")


def code_for(client, user_id: str, *, grant_id: str = "") -> tuple[str, AuthorizationCodeRecord]:
    code = "ibc_" + secrets.token_urlsafe(32)
    return code, AuthorizationCodeRecord(
        code_hash=sha(code), client_id=client.client_id, redirect_uri=client.redirect_uris[0],
        scopes=("openid", "api.read"), user_id=user_id, username="someone", sid="sid-1", auth_time_ms=now_ms(),
        nonce="n-0S6", code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        code_challenge_method="S256", grant_id=grant_id or str(uuid.uuid4()))


async def revocation_of(pool, grant_id: str):
    return await pool.fetchrow("SELECT kind, client_id, revoked_by, expires_at FROM revocations"
                               " WHERE kind = 'grant' AND value = $1", grant_id)


# --- sessions -------------------------------------------------------------------------------------

async def test_a_session_is_stored_by_hash_and_read_back(repo, registry, pool):
    user_id = await new_user(registry)
    cookie, session = session_of(user_id)
    verified = now_ms()
    created = await repo.create_session(session, SESSION_LIFETIME, verified)
    assert (created.sid, created.user_id, created.auth_time_ms) == (session.sid, user_id, verified)
    assert created.username.startswith("authz-")  # the directory's, not the caller's
    assert created.user_agent == "TestAgent"  # control characters dropped
    assert created.expires_at - created.created_at == SESSION_LIFETIME
    assert await repo.get_session(sha(cookie)) == created
    assert await repo.get_session(sha("another cookie")) is None
    stored = await pool.fetchval("SELECT count(*) FROM browser_sessions WHERE id_hash = $1", sha(cookie))
    assert stored == 1 and await pool.fetchval(
        "SELECT count(*) FROM browser_sessions WHERE id_hash = convert_to($1, 'UTF8')", cookie) == 0


async def test_sign_out_ends_a_session_once_by_cookie_or_sid(repo, registry):
    user_id = await new_user(registry)
    cookie, session = session_of(user_id)
    await repo.create_session(session, SESSION_LIFETIME, now_ms())
    assert await repo.end_session(id_hash=sha(cookie)) is True
    assert await repo.get_session(sha(cookie)) is None
    assert await repo.end_session(id_hash=sha(cookie)) is False
    cookie, session = session_of(user_id)
    await repo.create_session(session, SESSION_LIFETIME, now_ms())
    assert await repo.end_session(sid=session.sid) is True
    assert await repo.get_session(sha(cookie)) is None


@pytest.mark.parametrize("change", ["password", "disable", "delete", "disable-then-enable"])
async def test_a_session_is_gone_once_its_user_changes(repo, registry, change):
    user_id = await new_user(registry)
    cookie, session = session_of(user_id)
    await repo.create_session(session, SESSION_LIFETIME, now_ms())
    assert await repo.get_session(sha(cookie)) is not None
    if change == "password":
        await registry.set_user_password(user_id, secrets.token_urlsafe(16))
    elif change == "disable":
        await registry.update_user(user_id, UserUpdate(active=False))
    elif change == "delete":
        await registry.delete_user(user_id)
    else:
        await registry.update_user(user_id, UserUpdate(active=False))
        await registry.update_user(user_id, UserUpdate(active=True))
    assert await repo.get_session(sha(cookie)) is None


async def test_a_session_is_refused_for_a_sign_in_older_than_a_change(repo, registry):
    user_id = await new_user(registry)
    signed_in = now_ms()
    await registry.set_user_password(user_id, secrets.token_urlsafe(16))  # after the sign-in
    cookie, session = session_of(user_id)
    with pytest.raises(InvalidArgument, match="sign in again"):
        await repo.create_session(session, SESSION_LIFETIME, signed_in)
    assert await repo.get_session(sha(cookie)) is None
    await registry.update_user(user_id, UserUpdate(active=False))
    with pytest.raises(InvalidArgument, match="disabled"):
        await repo.create_session(session, SESSION_LIFETIME, now_ms())
    with pytest.raises(InvalidArgument, match="verified_at_ms"):
        await repo.create_session(session, SESSION_LIFETIME, 0)


async def test_an_expired_session_is_gone(pool, bus, registry):
    user_id = await new_user(registry)
    clock = [time.time()]
    repo = AuthorizationRepository(pool, bus, clock=lambda: clock[0])
    cookie, session = session_of(user_id)
    await repo.create_session(session, 60, now_ms())
    assert await repo.get_session(sha(cookie)) is not None
    clock[0] += 61
    assert await repo.get_session(sha(cookie)) is None


# --- pending requests -----------------------------------------------------------------------------

async def test_a_pending_request_completes_once(repo, web):
    request_id = secrets.token_urlsafe(32)
    pending = PendingAuthorization(id_hash=sha(request_id), client_id=web.client_id,
                                   request_json='{"scope": "openid", "state": "xyz"}')
    stored = await repo.create_authorization_request(pending, 600)
    assert stored.expires_at - stored.created_at == 600
    assert (await repo.get_authorization_request(sha(request_id))).request_json == pending.request_json
    results = await asyncio.gather(*(repo.complete_authorization_request(sha(request_id)) for _ in range(8)))
    assert sorted(results) == [False] * 7 + [True]
    assert await repo.get_authorization_request(sha(request_id)) is None
    assert await repo.complete_authorization_request(sha(request_id)) is False


async def test_an_expired_pending_request_is_gone_and_cannot_complete(pool, bus, web):
    clock = [time.time()]
    repo = AuthorizationRepository(pool, bus, clock=lambda: clock[0])
    request_id = secrets.token_urlsafe(32)
    await repo.create_authorization_request(PendingAuthorization(
        id_hash=sha(request_id), client_id=web.client_id, request_json="{}"), 30)
    clock[0] += 31
    assert await repo.get_authorization_request(sha(request_id)) is None
    assert await repo.complete_authorization_request(sha(request_id)) is False


# --- consents -------------------------------------------------------------------------------------

async def test_consent_merges_scopes_and_is_listed(repo, registry, web, other):
    user_id = await new_user(registry)
    assert await repo.get_consent(user_id, web.client_id) is None
    first = await repo.grant_consent(user_id, web.client_id, ["openid", "api.read"])
    assert set(first.scopes) == {"openid", "api.read"}
    merged = await repo.grant_consent(user_id, web.client_id, ["profile", "openid"])
    assert set(merged.scopes) == {"openid", "api.read", "profile"}
    assert (await repo.get_consent(user_id, web.client_id)).scopes == merged.scopes
    await repo.grant_consent(user_id, other.client_id, ["openid"])
    assert {c.client_id for c in await repo.list_consents(user_id)} == {web.client_id, other.client_id}
    with pytest.raises(InvalidArgument):
        await repo.grant_consent(user_id, web.client_id, ['bad"scope'])


async def test_withdrawing_a_consent_revokes_every_recorded_grant(repo, registry, issuer, pool, web):
    user_id = await new_user(registry)
    await repo.grant_consent(user_id, web.client_id, ["openid", "api.read"])
    issued = []
    for _ in range(2):  # two code grants, each with tokens, and one implicit grant
        _, code = code_for(web, user_id)
        await repo.create_authorization_code(code, 60)
        issued.append(await issuer.issue(IssueRequest(
            client_id=web.client_id, subject=user_id, scopes=("api.read",), format="jwt", lifetime_seconds=600,
            grant_id=code.grant_id, refresh_token_lifetime=3600)))
    implicit_grant = str(uuid.uuid4())
    await repo.record_user_grant(user_id, web.client_id, implicit_grant)
    issued.append(await issuer.issue(IssueRequest(client_id=web.client_id, subject=user_id, scopes=("api.read",),
                                                  format="opaque", lifetime_seconds=600, grant_id=implicit_grant)))
    for token in issued:
        assert (await issuer.introspect(token.access_token)).active

    withdrawn, revoked = await repo.withdraw_consent(user_id, web.client_id, f"user:{user_id}")
    assert (withdrawn, revoked) == (True, 3)
    assert await repo.get_consent(user_id, web.client_id) is None
    for token in issued:
        row = await revocation_of(pool, token.grant_id)
        assert row is not None and row["client_id"] == web.client_id and "consent withdrawn" in row["revoked_by"]
        await eventually(lambda t=token: issuer.introspect(t.access_token), until=lambda info: not info.active,
                         message="a token of a withdrawn consent's grant is inactive")
        if token.refresh_token:
            assert not (await issuer.introspect(token.refresh_token)).active
    assert await repo.withdraw_consent(user_id, web.client_id, "") == (False, 0)  # nothing left


@pytest.mark.parametrize("flow", ["code", "implicit"])
async def test_a_grant_of_scopes_needing_no_consent_is_listed_and_withdrawn_like_any(repo, registry, web, flow):
    """"Sign in with" (openid alone) asks for no consent, yet the app gets tokens (a refresh
    token too): it is listed among the user's consents, and withdrawing it ends that grant."""
    user_id = await new_user(registry)
    _, record = code_for(web, user_id)
    if flow == "code":
        await repo.create_authorization_code(dataclasses.replace(record, scopes=("openid",)), 60)
    else:
        await repo.record_user_grant(user_id, web.client_id, record.grant_id)
    [listed] = await repo.list_consents(user_id)
    assert listed.client_id == web.client_id
    assert listed.scopes == (("openid",) if flow == "code" else ())
    assert await repo.withdraw_consent(user_id, web.client_id, "user") == (True, 1)
    assert await repo.list_consents(user_id) == []


# --- codes ----------------------------------------------------------------------------------------

async def test_a_code_is_consumed_once_among_concurrent_uses(repo, registry, web):
    user_id = await new_user(registry)
    code, record = code_for(web, user_id)
    stored = await repo.create_authorization_code(record, 60)
    assert stored.created_at_ms > 0 and stored.expires_at * 1000 > stored.created_at_ms
    outcomes = await repo.consume_authorization_codes([CodeToConsume(sha(code), web.client_id)] * 2
                                                      + [CodeToConsume(sha(code), web.client_id)] * 6)
    winners = [o for o in outcomes if isinstance(o, AuthorizationCodeRecord)]
    assert len(winners) == 1 and all(isinstance(o, CodeReused) for o in outcomes if o is not winners[0])
    won = winners[0]
    assert (won.grant_id, won.nonce, won.code_challenge, won.redirect_uri, won.scopes) == (
        record.grant_id, record.nonce, record.code_challenge, record.redirect_uri, record.scopes)


async def test_two_uses_that_meet_at_the_codes_row_consume_it_once(stack, repo, registry, web):
    """The interleaving forced, not left to timing: the row is held while both uses arrive, so
    both have read it before either writes unless reading it waits for the row (FOR UPDATE).
    Then exactly one consumes it and the other is the second use."""
    user_id = await new_user(registry)
    code, record = code_for(web, user_id)
    await repo.create_authorization_code(record, 60)
    owner = await asyncpg.connect(stack.database_url)
    watcher = await asyncpg.connect(stack.database_url)  # outside the holding transaction's stats snapshot
    try:
        holding = owner.transaction()
        await holding.start()
        await owner.execute("SELECT 1 FROM authorization_codes WHERE code_hash = $1 FOR UPDATE", sha(code))
        uses = [asyncio.ensure_future(repo.consume_authorization_codes([CodeToConsume(sha(code), web.client_id)]))
                for _ in range(2)]
        await eventually(lambda: watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE '%authorization_codes%' AND query NOT LIKE '%pg_stat_activity%'"),
            until=lambda waiting: waiting == 2, message="both uses waiting at the code's row")
        await holding.rollback()
        outcomes = [outcome for [outcome] in await asyncio.gather(*uses)]
    finally:
        await owner.close()
        await watcher.close()
    assert sorted(type(o).__name__ for o in outcomes) == ["AuthorizationCodeRecord", "CodeReused"], outcomes


async def test_a_second_use_revokes_the_grant_of_the_first(repo, registry, issuer, pool, web):
    user_id = await new_user(registry)
    code, record = code_for(web, user_id)
    await repo.create_authorization_code(record, 60)
    [first] = await repo.consume_authorization_codes([CodeToConsume(sha(code), web.client_id)])
    assert isinstance(first, AuthorizationCodeRecord)
    tokens = await issuer.issue(IssueRequest(client_id=web.client_id, subject=user_id, scopes=("api.read",),
                                             format="jwt", lifetime_seconds=600, grant_id=first.grant_id,
                                             refresh_token_lifetime=3600,
                                             authenticated_at_ms=first.created_at_ms))
    assert (await issuer.introspect(tokens.access_token)).active
    assert await revocation_of(pool, first.grant_id) is None

    [again] = await repo.consume_authorization_codes([CodeToConsume(sha(code), web.client_id)])
    assert again == CodeReused(grant_id=first.grant_id)
    row = await revocation_of(pool, first.grant_id)
    assert row is not None and row["client_id"] == web.client_id and "reused" in row["revoked_by"]
    assert row["expires_at"].timestamp() >= time.time() + GRANT_REVOCATION_LIFETIME - 60
    await eventually(lambda: issuer.introspect(tokens.access_token), until=lambda info: not info.active,
                     message="the first use's access token is inactive")
    assert not (await issuer.introspect(tokens.refresh_token)).active


@pytest.mark.parametrize("revoke", ["second use", "consent withdrawn"])
async def test_a_refresh_token_stored_after_its_grant_was_revoked_stays_revoked_once_the_revocation_goes(
        stack, repo, pool, registry, issuer, web, revoke):
    """The first use's tokens are stored while a second use (or the user withdrawing the
    consent) revokes the grant: the revocation marks no refresh token yet. Its row refuses the
    straggler while it lives; when the purge removes the row, the straggler must stay revoked
    (a refresh family outlives any revocation row by weeks)."""
    user_id = await new_user(registry)
    code, record = code_for(web, user_id)
    await repo.create_authorization_code(record, 60)
    [first] = await repo.consume_authorization_codes([CodeToConsume(sha(code), web.client_id)])
    assert isinstance(first, AuthorizationCodeRecord)
    if revoke == "second use":
        assert await repo.consume_authorization_codes([CodeToConsume(sha(code), web.client_id)]) == [
            CodeReused(grant_id=first.grant_id)]
    else:
        await repo.grant_consent(user_id, web.client_id, ["api.read"])
        assert await repo.withdraw_consent(user_id, web.client_id, "user") == (True, 1)
    tokens = await issuer.issue(IssueRequest(client_id=web.client_id, subject=user_id, scopes=("api.read",),
                                             format="jwt", lifetime_seconds=600, grant_id=first.grant_id,
                                             refresh_token_lifetime=30 * 86400,
                                             authenticated_at_ms=first.created_at_ms))
    owner = await asyncpg.connect(stack.database_url)
    try:  # the revocation's lifetime and the day it is kept past it are over
        await owner.execute("UPDATE revocations SET expires_at = now() - interval '2 days'"
                            " WHERE kind = 'grant' AND value = $1", first.grant_id)
    finally:
        await owner.close()
    await revocation_rows.purge_expired(pool)
    assert await revocation_of(pool, first.grant_id) is None
    successor = "ibr_" + secrets.token_urlsafe(32)
    [outcome] = await RefreshTokenRepository(pool, None).rotate_refresh_tokens([Rotation(
        token_hash=sha(tokens.refresh_token), client_id=web.client_id, new_token_hash=sha(successor),
        new_jti=str(uuid.uuid4()), grace_seconds=5)])
    assert isinstance(outcome, Refused) and outcome.reason == REFUSED_REVOKED, outcome


@pytest.mark.parametrize("revoke", ["second use", "consent withdrawn"])
async def test_a_grant_revoked_by_a_second_use_or_a_withdrawn_consent_is_published_at_once(
        stack, repo, registry, web, revoke):
    """Every token_issuer replica drops the grant's tokens on the token.revoked event, not at
    its next resync of the revocation table (seconds later): the event itself is checked."""
    nc = await nats_connect(stack, "token_issuer")
    seen: list[events_pb2.Event] = []

    async def collect(msg) -> None:
        event = events_pb2.Event()
        event.ParseFromString(msg.data)
        seen.append(event)

    await nc.subscribe(stack.installation.subject(TOKEN_REVOKED), cb=collect)
    await nc.flush()
    try:
        user_id = await new_user(registry)
        code, record = code_for(web, user_id)
        await repo.create_authorization_code(record, 60)
        if revoke == "second use":
            await repo.consume_authorization_codes([CodeToConsume(sha(code), web.client_id)] * 2)
        else:
            await repo.grant_consent(user_id, web.client_id, ["api.read"])
            await repo.withdraw_consent(user_id, web.client_id, "user")
        [event] = await eventually(lambda: [e for e in seen if e.token_revoked.grant_id == record.grant_id],
                                   message="the grant's token.revoked event")
    finally:
        await nc.close()
    assert event.token_revoked.client_id == web.client_id


async def test_another_clients_code_is_not_found_and_stays_consumable(repo, registry, web, other, pool):
    user_id = await new_user(registry)
    code, record = code_for(web, user_id)
    await repo.create_authorization_code(record, 60)
    [stolen] = await repo.consume_authorization_codes([CodeToConsume(sha(code), other.client_id)])
    assert isinstance(stolen, CodeNotFound)
    assert await pool.fetchval("SELECT consumed_at FROM authorization_codes WHERE code_hash = $1", sha(code)) is None
    [mine] = await repo.consume_authorization_codes([CodeToConsume(sha(code), web.client_id)])
    assert isinstance(mine, AuthorizationCodeRecord)
    [stolen_again] = await repo.consume_authorization_codes([CodeToConsume(sha(code), other.client_id)])
    assert isinstance(stolen_again, CodeNotFound)  # another client cannot end the user's grant
    assert await revocation_of(pool, record.grant_id) is None


async def test_an_expired_or_unknown_code_is_not_found_and_untouched(pool, bus, registry, web):
    clock = [time.time()]
    repo = AuthorizationRepository(pool, bus, clock=lambda: clock[0])
    user_id = await new_user(registry)
    code, record = code_for(web, user_id)
    await repo.create_authorization_code(record, 60)
    clock[0] += 61
    [expired] = await repo.consume_authorization_codes([CodeToConsume(sha(code), web.client_id)])
    assert isinstance(expired, CodeNotFound)
    assert await pool.fetchval("SELECT consumed_at FROM authorization_codes WHERE code_hash = $1", sha(code)) is None
    unknown, malformed = await repo.consume_authorization_codes([
        CodeToConsume(sha("never issued"), web.client_id), CodeToConsume(b"short", web.client_id)])
    assert isinstance(unknown, CodeNotFound) and isinstance(malformed, ItemError)


async def test_codes_are_checked_before_they_are_stored(repo, registry, web):
    user_id = await new_user(registry)
    for bad, why in ((dict(code_challenge_method="plain"), "S256"), (dict(redirect_uri=""), "redirect URI"),
                     (dict(grant_id=""), "grant id"), (dict(code_hash=b"short"), "SHA-256"),
                     (dict(nonce="x" * 513), "nonce")):
        _, record = code_for(web, user_id)
        with pytest.raises(InvalidArgument, match=why):
            await repo.create_authorization_code(AuthorizationCodeRecord(**{**record.__dict__, **bad}), 60)
    _, record = code_for(web, user_id)
    with pytest.raises(InvalidArgument, match="1 to 600"):
        await repo.create_authorization_code(record, 601)


# --- the gRPC service, as the authorization_code service ---------------------------------------------

async def test_one_round_trip_through_the_registrys_service(stack, registry, web):
    channel = stack.channel("client_registry", caller=identity.service("authorization_code"))
    try:
        store = RegistryClient(channel).authorizations
        user_id = await new_user(registry)
        cookie, session = session_of(user_id)
        created = await store.create_session(session, SESSION_LIFETIME, now_ms())
        assert await store.get_session(sha(cookie)) == created
        code, record = code_for(web, user_id)
        await store.create_authorization_code(record, 60)
        first, second = await asyncio.gather(*(store.consume_authorization_codes(
            [CodeToConsume(sha(code), web.client_id)]) for _ in range(2)))
        assert sorted(type(o).__name__ for o in first + second) == ["AuthorizationCodeRecord", "CodeReused"]
        assert [o for o in first + second if isinstance(o, CodeReused)] == [CodeReused(grant_id=record.grant_id)]
        await store.grant_consent(user_id, web.client_id, ["openid"])
        assert (await store.withdraw_consent(user_id, web.client_id, "user")) == (True, 1)
        with pytest.raises(InvalidArgument):
            await store.create_session(session_of(user_id)[1], SESSION_LIFETIME, 0)
        assert await store.end_session(id_hash=sha(cookie)) is True
    finally:
        await channel.close()


# --- the purge ------------------------------------------------------------------------------------

async def test_the_purge_keeps_what_can_still_matter_and_drops_the_rest(stack, repo, pool, registry, web):
    """Rows are made old in the database (as the schema owner) rather than the clock moved on: the
    purge runs on the session's shared system, where a moved clock would purge other tests' rows."""
    user_id = await new_user(registry)
    cookie, session = session_of(user_id)
    await repo.create_session(session, 60, now_ms())
    request_id = secrets.token_urlsafe(32)
    await repo.create_authorization_request(PendingAuthorization(sha(request_id), web.client_id, "{}"), 60)
    used, used_record = code_for(web, user_id)
    await repo.create_authorization_code(used_record, 60)
    await repo.consume_authorization_codes([CodeToConsume(sha(used), web.client_id)])
    unused, unused_record = code_for(web, user_id)
    await repo.create_authorization_code(unused_record, 60)

    async def present(table: str, column: str, value) -> bool:
        return await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", value) == 1

    owner = await asyncpg.connect(stack.database_url)
    try:
        # Two hours on: the session, the request and the unused code are past; the used code is kept.
        await owner.execute("UPDATE browser_sessions SET expires_at = now() - interval '1 hour' WHERE id_hash = $1",
                            sha(cookie))
        await owner.execute("UPDATE authorization_requests SET expires_at = now() - interval '1 hour'"
                            " WHERE id_hash = $1", sha(request_id))
        await owner.execute("UPDATE authorization_codes SET expires_at = now() - interval '2 hours',"
                            " created_at_ms = created_at_ms - 7200000 WHERE code_hash = ANY($1::bytea[])",
                            [sha(used), sha(unused)])
        await owner.execute("UPDATE user_grants SET created_at = now() - interval '2 hours' WHERE grant_id = $1",
                            used_record.grant_id)
        await repo.purge_expired()
        assert not await present("browser_sessions", "id_hash", sha(cookie))
        assert not await present("authorization_requests", "id_hash", sha(request_id))
        assert not await present("authorization_codes", "code_hash", sha(unused))
        assert await present("authorization_codes", "code_hash", sha(used))  # a late second use still revokes
        assert await present("user_grants", "grant_id", used_record.grant_id)
        [late] = await repo.consume_authorization_codes([CodeToConsume(sha(used), web.client_id)])
        assert isinstance(late, CodeReused)

        # Past GRANT_REVOCATION_LIFETIME (and the code lifetime): the used code and its grant record go.
        await owner.execute("UPDATE authorization_codes SET created_at_ms = created_at_ms - $2::bigint"
                            " WHERE code_hash = $1", sha(used), GRANT_REVOCATION_LIFETIME * 1000)
        await owner.execute("UPDATE user_grants SET created_at = created_at - make_interval(secs => $2)"
                            " WHERE grant_id = $1", used_record.grant_id, float(GRANT_REVOCATION_LIFETIME + 600))
        await repo.purge_expired()
        assert not await present("authorization_codes", "code_hash", sha(used))
        assert not await present("user_grants", "grant_id", used_record.grant_id)
    finally:
        await owner.close()


class CountingPool:
    """The pool, with how many rows each DELETE statement removed."""

    def __init__(self, pool):
        self.pool = pool
        self.deleted: list[int] = []

    async def execute(self, sql: str, *args):
        status = await self.pool.execute(sql, *args)
        if sql.startswith("DELETE"):
            self.deleted.append(int(status.split()[-1]))
        return status


async def test_the_purge_deletes_in_bounded_batches_until_nothing_is_left(stack, repo, pool, bus, registry, web):
    """Pending requests are made by anyone who opens an authorization URL: a backlog of them is
    deleted a bounded batch per statement, and wholly."""
    counting = CountingPool(pool)
    user_id = await new_user(registry)
    cookies = []
    for _ in range(5):
        cookie, session = session_of(user_id)
        await repo.create_session(session, 60, now_ms())
        await repo.end_session(id_hash=sha(cookie))
        cookies.append(sha(cookie))
    await AuthorizationRepository(counting, bus, purge_batch=2).purge_expired()
    assert await pool.fetchval("SELECT count(*) FROM browser_sessions WHERE id_hash = ANY($1::bytea[])",
                               cookies) == 0
    assert counting.deleted and max(counting.deleted) <= 2, counting.deleted


async def test_the_purge_keeps_a_grant_record_while_its_refresh_family_lives(stack, repo, pool, registry, issuer,
                                                                            web):
    """A user grant is forgotten only once no token of it can live: a refresh token of the grant
    (unexpired, not revoked) keeps it, so withdrawing the consent later still ends the family."""
    user_id = await new_user(registry)
    _, record = code_for(web, user_id)
    await repo.create_authorization_code(record, 60)
    tokens = await issuer.issue(IssueRequest(client_id=web.client_id, subject=user_id, scopes=("api.read",),
                                             format="jwt", lifetime_seconds=600, grant_id=record.grant_id,
                                             refresh_token_lifetime=30 * 86400))
    owner = await asyncpg.connect(stack.database_url)
    try:
        # Old enough to go but for its family: created, and the refresh token issued, long ago.
        await owner.execute("UPDATE user_grants SET created_at = now() - make_interval(secs => $2)"
                            " WHERE grant_id = $1", record.grant_id, float(GRANT_REVOCATION_LIFETIME + 3600))
        await owner.execute("UPDATE opaque_tokens SET issued_at = now() - make_interval(secs => $2)"
                            " WHERE grant_id = $1", record.grant_id, float(GRANT_REVOCATION_LIFETIME + 3600))
    finally:
        await owner.close()
    await repo.purge_expired()
    assert await pool.fetchval("SELECT count(*) FROM user_grants WHERE grant_id = $1", record.grant_id) == 1
    await repo.grant_consent(user_id, web.client_id, ["api.read"])
    assert await repo.withdraw_consent(user_id, web.client_id, "user") == (True, 1)
    assert not (await issuer.introspect(tokens.refresh_token)).active

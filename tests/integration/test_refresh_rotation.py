"""Refresh-token rotation in the registry (RFC 6749 §6, RFC 9700 §4.14.2), against the
running stack's Postgres and NATS: services/client_registry/refresh_tokens.py.

The first token of each family is issued by token_issuer (Issue with a refresh
lifetime), as the grants do. Rotations go straight to the registry's repository over
the registry's own database role and NATS identity (the RefreshTokens RPCs admit only
the refresh_token grant service); token_issuer then judges the results on its own
(introspection, its revocation set fed over NATS).
"""
from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid

import asyncpg
import pytest

from inboundlib import identity
from inboundlib.events import EventBus
from inboundlib.grants.api import TokenRequest
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, ClientCredentials
from inboundlib.oauth.errors import TemporarilyUnavailable
from services.client_registry.api import (
    GRANT_REVOCATION_LIFETIME,
    MAX_ACCESS_TOKEN_LIFETIME,
    REFUSED_CLIENT_INACTIVE,
    REFUSED_EXPIRED,
    REFUSED_OTHER_CLIENT,
    REFUSED_REUSED,
    REFUSED_REVOKED,
    REFUSED_UNKNOWN,
    REFUSED_USER_INACTIVE,
    ClientUpdate,
    ItemError,
    OpaqueTokenRecord,
    Refused,
    Replay,
    Rotated,
    Rotation,
    UserSpec,
    subject_cut_off,
)
from services.client_registry.client import RegistryClient
from services.client_registry.refresh_tokens import RefreshTokenRepository
from services.client_registry.revocations import RevocationRepository
from services.client_registry.tokens import TokenRepository
from services.refresh_token.grant import RefreshTokenGrant
from services.token_issuer import client as issuer_client
from services.token_issuer.api import IssueRequest
from tests.support import ISSUER_SERVICE, eventually

LIFETIME = 3600


@pytest.fixture(scope="module")
async def pool(stack):
    """The registry's own database role: its grants (assembly.RUNTIME_PRIVILEGES) are tested too."""
    pool = await asyncpg.create_pool(stack.db_roles.runtime_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def bus(stack):
    """Publishing as client_registry does (its NATS permissions)."""
    bus = EventBus(stack.nats_settings("client_registry"), "test-refresh-rotation")
    await bus.start()
    yield bus
    await bus.close()


@pytest.fixture(scope="module")
def repo(pool, bus):
    return RefreshTokenRepository(pool, bus)


@pytest.fixture(scope="module")
async def stored_tokens(stack):
    """The registry's token reads, as token_issuer makes them."""
    channel = stack.channel("client_registry", caller=ISSUER_SERVICE)
    yield RegistryClient(channel).tokens
    await channel.close()


def sha(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def rotation(token: str, client_id: str, grace: int = 5) -> tuple[Rotation, str]:
    successor = "ibr_" + secrets.token_urlsafe(32)
    return Rotation(token_hash=sha(token), client_id=client_id, new_token_hash=sha(successor),
                    new_jti=str(uuid.uuid4()), grace_seconds=grace), successor


async def first_token(issuer, client, *, subject: str = "", username: str = "", absolute: int = 0,
                      lifetime: int = LIFETIME, scopes=("api.read",)):
    """A family's first refresh token, issued by token_issuer as a grant would."""
    return await issuer.issue(IssueRequest(
        client_id=client.client_id, subject=subject or client.client_id, username=username, scopes=tuple(scopes),
        format="jwt", lifetime_seconds=600, refresh_token_lifetime=lifetime,
        refresh_token_absolute_lifetime=absolute))


async def rotate(repo, token: str, client_id: str, grace: int = 5):
    r, successor = rotation(token, client_id, grace)
    [outcome] = await repo.rotate_refresh_tokens([r])
    return outcome, successor


async def new_user(stack, *, active: bool = True) -> str:
    user_id = str(uuid.uuid4())
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute("INSERT INTO users (id, username, username_key, username_digest, active)"
                           " VALUES ($1, $2, $2, md5($2), $3)",
                           user_id, "u-" + user_id[:8], active)
    finally:
        await conn.close()
    return user_id


async def sql(stack, statement: str, *args):
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


# --- rotation ---------------------------------------------------------------------------------------

async def test_a_rotation_consumes_the_token_and_stores_its_successor(stack, repo, issuer, make_client,
                                                                     stored_tokens):
    client, _ = await make_client(refresh_token_lifetime=7200)
    issued = await first_token(issuer, client, scopes=("api.read", "api.write"))
    assert (await issuer.introspect(issued.refresh_token)).active
    before = int(time.time())

    outcome, successor = await rotate(repo, issued.refresh_token, client.client_id)

    assert isinstance(outcome, Rotated)
    s = outcome.successor
    assert (s.client_id, s.subject, s.grant_id, s.kind) == (client.client_id, client.client_id, issued.grant_id,
                                                            "refresh")
    assert set(s.scopes) == {"api.read", "api.write"}  # the family's scope, RFC 6749 §6
    assert before + 7200 <= s.expires_at <= int(time.time()) + 7200  # the client's sliding lifetime
    [old, new] = await stored_tokens.get_opaque_tokens([sha(issued.refresh_token), sha(successor)])
    assert old.consumed and not old.revoked
    assert new is not None and not new.consumed and new.grant_id == issued.grant_id
    # token_issuer reads refresh tokens fresh: the consumed one is inactive at once (a cached
    # record would still say active), the successor active.
    assert not (await issuer.introspect(issued.refresh_token)).active
    assert (await issuer.introspect(successor)).active


async def test_concurrent_rotations_of_one_token_rotate_it_once(repo, issuer, make_client):
    """Clients retry (mobile apps on flaky networks): of several rotations of one token at
    once, exactly one rotates; the others, inside the grace window, are replays."""
    client, _ = await make_client()
    for _ in range(4):
        issued = await first_token(issuer, client)
        rotations = [rotation(issued.refresh_token, client.client_id)[0] for _ in range(6)]
        outcomes = await asyncio.gather(*(repo.rotate_refresh_tokens([r]) for r in rotations))
        kinds = sorted(type(o[0]).__name__ for o in outcomes)
        assert kinds == ["Replay"] * 5 + ["Rotated"]


async def test_a_retry_inside_the_grace_window_gets_the_stored_response(stack, pool, bus, issuer, make_client):
    now = [time.time()]
    repo = RefreshTokenRepository(pool, bus, clock=lambda: now[0])
    client, _ = await make_client()
    issued = await first_token(issuer, client)
    first, _ = await rotate(repo, issued.refresh_token, client.client_id, grace=5)
    assert isinstance(first, Rotated)

    retry, _ = await rotate(repo, issued.refresh_token, client.client_id, grace=5)
    # Not stored yet: nothing to replay; and when the window ends (a grant waiting for the
    # answer asks again only before then).
    assert retry == Replay(encrypted_response=b"", consumed=first.consumed,
                           replay_until_ms=int(now[0] * 1000) + 5000)
    assert await repo.store_rotation_responses([(sha(issued.refresh_token), b"sealed-response")]) == [None]
    retry, _ = await rotate(repo, issued.refresh_token, client.client_id, grace=5)
    assert isinstance(retry, Replay) and retry.encrypted_response == b"sealed-response"
    # Only the first rotation's answer is kept.
    [refused] = await repo.store_rotation_responses([(sha(issued.refresh_token), b"another")])
    assert isinstance(refused, ItemError)

    # Past the window the sweeper clears it: it holds live tokens, and nothing may read it any more.
    now[0] += 6
    assert await repo.clear_rotation_responses() >= 1
    [row] = await sql(stack, "SELECT rotation_response FROM opaque_tokens WHERE token_hash = $1",
                      sha(issued.refresh_token))
    assert row["rotation_response"] is None
    [late] = await repo.store_rotation_responses([(sha(issued.refresh_token), b"sealed-response")])
    assert isinstance(late, ItemError)


async def test_reuse_after_the_grace_window_revokes_the_whole_family(stack, repo, issuer, make_client,
                                                                     stored_tokens):
    client, _ = await make_client()
    issued = await first_token(issuer, client)
    first, successor = await rotate(repo, issued.refresh_token, client.client_id, grace=0)
    assert isinstance(first, Rotated)
    # An access token the grant issued from the family (as the refresh_token grant does).
    access = await issuer.issue(IssueRequest(client_id=client.client_id, subject=client.client_id,
                                             scopes=("api.read",), format="jwt", lifetime_seconds=600,
                                             grant_id=issued.grant_id))
    assert (await issuer.introspect(access.access_token)).active

    reuse_at = time.time()
    reused, _ = await rotate(repo, issued.refresh_token, client.client_id, grace=0)

    assert isinstance(reused, Refused) and reused.reason == REFUSED_REUSED
    assert reused.grant_id == issued.grant_id
    assert reused.revocation is not None and reused.revocation.value == issued.grant_id
    # It outlives the family's access tokens, those issued for a rotation answered just before
    # the reuse too: token_issuer stamps them after it, up to an Issue call's timeout later.
    assert reused.revocation.expires_at >= reuse_at + issuer_client.HOT_TIMEOUT + MAX_ACCESS_TOKEN_LIFETIME
    # Every refresh token of the family is refused, the successor the legitimate holder has too.
    again, _ = await rotate(repo, successor, client.client_id)
    assert again == Refused(REFUSED_REVOKED, grant_id=issued.grant_id)
    [s] = await stored_tokens.get_opaque_tokens([sha(successor)])
    assert s.revoked
    assert not (await issuer.introspect(successor)).active
    # The access tokens of the grant die on token_issuer, told over NATS.
    await eventually(lambda: issuer.introspect(access.access_token), until=lambda info: not info.active,
                     message="the family's access token is revoked at token_issuer")
    # The registry published both the revocation (what every replica applies at once; the
    # resync would only catch up within seconds) and the reuse: both are in the audit trail.
    for kind in ("token_revoked", "refresh_token_reused"):
        await eventually(lambda kind=kind: sql(stack, "SELECT 1 FROM audit_log WHERE type = $1"
                                                      " AND detail->>'grant_id' = $2", kind, issued.grant_id),
                         message=f"{kind} is published and audited")


async def test_another_clients_token_is_refused_without_harming_the_family(repo, issuer, make_client):
    owner, _ = await make_client()
    thief, _ = await make_client()
    issued = await first_token(issuer, owner)
    refused, _ = await rotate(repo, issued.refresh_token, thief.client_id)
    assert refused == Refused(REFUSED_OTHER_CLIENT)
    # Consumed and presented by another client: still no reuse, no revocation.
    assert isinstance((await rotate(repo, issued.refresh_token, owner.client_id, grace=0))[0], Rotated)
    refused, _ = await rotate(repo, issued.refresh_token, thief.client_id, grace=0)
    assert refused == Refused(REFUSED_OTHER_CLIENT)
    reused, _ = await rotate(repo, issued.refresh_token, owner.client_id, grace=0)
    assert reused.reason == REFUSED_REUSED  # the family was still alive for its owner to break


async def test_unknown_tokens_and_access_tokens_are_unknown(repo, issuer, make_client):
    client, _ = await make_client(token_format="opaque")
    refused, _ = await rotate(repo, "ibr_" + secrets.token_urlsafe(32), client.client_id)
    assert refused == Refused(REFUSED_UNKNOWN)
    access = await issuer.issue(IssueRequest(client_id=client.client_id, subject=client.client_id,
                                             scopes=("api.read",), format="opaque", lifetime_seconds=600))
    refused, _ = await rotate(repo, access.access_token, client.client_id)
    assert refused == Refused(REFUSED_UNKNOWN)


async def test_malformed_rotations_are_item_errors_beside_good_ones(repo, issuer, make_client):
    client, _ = await make_client()
    issued = await first_token(issuer, client)
    good, _ = rotation(issued.refresh_token, client.client_id)
    bad = Rotation(token_hash=b"short", client_id=client.client_id, new_token_hash=sha("x"), new_jti="j",
                   grace_seconds=5)
    greedy, _ = rotation(issued.refresh_token, client.client_id, grace=100_000)
    outcomes = await repo.rotate_refresh_tokens([bad, good, greedy])
    assert isinstance(outcomes[0], ItemError) and isinstance(outcomes[2], ItemError)
    assert isinstance(outcomes[1], Rotated)


# --- expiry -----------------------------------------------------------------------------------------

async def test_an_expired_token_is_refused(stack, pool, repo, make_client):
    client, _ = await make_client()
    now = int(time.time())
    token = "ibr_" + secrets.token_urlsafe(32)
    [error] = await TokenRepository(pool).store_opaque_tokens([OpaqueTokenRecord(
        token_hash=sha(token), jti=str(uuid.uuid4()), client_id=client.client_id, subject=client.client_id,
        username="", scopes=("api.read",), audience=("x",), issued_at=now - 100, expires_at=now - 1,
        kind="refresh", grant_id=secrets.token_urlsafe(16))])
    assert error is None
    refused, _ = await rotate(repo, token, client.client_id)
    assert refused.reason == REFUSED_EXPIRED


async def test_the_family_end_bounds_every_token(pool, repo, issuer, make_client, stored_tokens):
    client, _ = await make_client(refresh_token_lifetime=7200)
    issued = await first_token(issuer, client, absolute=100)
    [first] = await stored_tokens.get_opaque_tokens([sha(issued.refresh_token)])
    assert first.family_expires_at == first.issued_at + 100  # token_issuer records the family's end
    assert first.expires_at == first.family_expires_at  # ... and no token outlives it
    rotated, _ = await rotate(repo, issued.refresh_token, client.client_id)
    assert rotated.successor.family_expires_at == first.family_expires_at
    assert rotated.successor.expires_at == first.family_expires_at  # not now + 7200

    # A token whose own expiry is far but whose family has ended is expired.
    now = int(time.time())
    token = "ibr_" + secrets.token_urlsafe(32)
    await TokenRepository(pool).store_opaque_tokens([OpaqueTokenRecord(
        token_hash=sha(token), jti=str(uuid.uuid4()), client_id=client.client_id, subject=client.client_id,
        username="", scopes=("api.read",), audience=("x",), issued_at=now - 100, expires_at=now + 3600,
        kind="refresh", grant_id=secrets.token_urlsafe(16), family_expires_at=now - 1)])
    refused, _ = await rotate(repo, token, client.client_id)
    assert refused.reason == REFUSED_EXPIRED
    assert not (await issuer.introspect(token)).active


# --- the client, the user, revocations -------------------------------------------------------------

async def test_a_disabled_client_cannot_refresh(stack, repo, registry, issuer, make_client):
    client, _ = await make_client()
    issued = await first_token(issuer, client)
    await registry.update_client(client.client_id, ClientUpdate(active=False))
    refused, _ = await rotate(repo, issued.refresh_token, client.client_id)
    # Disabling records a client cut-off (revoked) in the same transaction.
    assert refused.reason in (REFUSED_REVOKED, REFUSED_CLIENT_INACTIVE)

    # The client's own state decides even without a cut-off.
    other, _ = await make_client()
    issued = await first_token(issuer, other)
    await sql(stack, "UPDATE clients SET active = false WHERE client_id = $1", other.client_id)
    refused, _ = await rotate(repo, issued.refresh_token, other.client_id)
    assert refused.reason == REFUSED_CLIENT_INACTIVE


async def test_a_disabled_or_deleted_user_cannot_refresh(stack, repo, issuer, make_client):
    client, _ = await make_client()
    alice, bob = await new_user(stack), await new_user(stack)
    for_alice = await first_token(issuer, client, subject=alice, username="alice")
    for_bob = await first_token(issuer, client, subject=bob, username="bob")
    assert isinstance((await rotate(repo, for_alice.refresh_token, client.client_id))[0], Rotated)

    second = await first_token(issuer, client, subject=alice, username="alice")
    await sql(stack, "UPDATE users SET active = false WHERE id = $1", alice)
    refused, _ = await rotate(repo, second.refresh_token, client.client_id)
    assert refused.reason == REFUSED_USER_INACTIVE

    await sql(stack, "DELETE FROM users WHERE id = $1", bob)
    refused, _ = await rotate(repo, for_bob.refresh_token, client.client_id)
    assert refused.reason == REFUSED_USER_INACTIVE

    # A user-less subject that is not the client itself needs a user too.
    nobody = await first_token(issuer, client, subject="someone-" + uuid.uuid4().hex[:6])
    refused, _ = await rotate(repo, nobody.refresh_token, client.client_id)
    assert refused.reason == REFUSED_USER_INACTIVE


async def test_a_subject_cut_off_revokes_the_users_refresh_tokens(stack, pool, repo, issuer, make_client):
    client, _ = await make_client()
    user = await new_user(stack)
    before = await first_token(issuer, client, subject=user, username="carol")
    [stored] = await RevocationRepository(pool).add_revocations(
        [subject_cut_off(user, int(time.time() * 1000), "operator:test")])
    assert not isinstance(stored, ItemError)
    after = await first_token(issuer, client, subject=user, username="carol")
    refused, _ = await rotate(repo, before.refresh_token, client.client_id)
    assert refused.reason == REFUSED_REVOKED
    assert isinstance((await rotate(repo, after.refresh_token, client.client_id))[0], Rotated)


async def test_a_client_cut_off_revokes_its_refresh_tokens(repo, issuer, make_client):
    client, _ = await make_client()
    issued = await first_token(issuer, client)
    await issuer.revoke_client_tokens(client.client_id)
    refused, _ = await rotate(repo, issued.refresh_token, client.client_id)
    assert refused.reason == REFUSED_REVOKED


async def test_revoking_a_refresh_token_ends_its_grant_for_good(stack, repo, issuer, make_client, stored_tokens):
    """RFC 7009 through token_issuer: the family's rows are marked revoked in the same
    statement as the grant revocation, so even once that revocation is purged, no refresh
    token of the family comes back."""
    client, secret = await make_client()
    issued = await first_token(issuer, client)
    rotated, successor = await rotate(repo, issued.refresh_token, client.client_id)
    assert isinstance(rotated, Rotated)
    access = await issuer.issue(IssueRequest(client_id=client.client_id, subject=client.client_id,
                                             scopes=("api.read",), format="jwt", lifetime_seconds=600,
                                             grant_id=issued.grant_id))

    revoked_at = time.time()
    await issuer.revoke(successor, ClientCredentials(CLIENT_SECRET_BASIC, client.client_id, secret))

    tokens = await stored_tokens.get_opaque_tokens([sha(issued.refresh_token), sha(successor)])
    assert all(t.revoked for t in tokens)
    # The grant revocation outlives the family's access tokens (one issued for a rotation in
    # flight too), and no more: every token_issuer replica holds it in memory, and the
    # refresh token's own lifetime (months, by default) is carried by the rows' mark.
    [row] = await sql(stack, "SELECT extract(epoch FROM expires_at) AS e FROM revocations"
                             " WHERE kind = 'grant' AND value = $1", issued.grant_id)
    assert (revoked_at + MAX_ACCESS_TOKEN_LIFETIME + issuer_client.HOT_TIMEOUT
            <= row["e"] <= time.time() + GRANT_REVOCATION_LIFETIME)
    assert not (await issuer.introspect(successor)).active
    assert not (await issuer.introspect(access.access_token)).active
    await sql(stack, "DELETE FROM revocations WHERE kind = 'grant' AND value = $1", issued.grant_id)
    refused, _ = await rotate(repo, successor, client.client_id)
    assert refused == Refused(REFUSED_REVOKED, grant_id=issued.grant_id)


async def test_a_grant_or_jti_revocation_alone_refuses_the_token(stack, pool, repo, issuer, make_client):
    """Revocations written by anything (not only through the statement that marks the
    family) are honoured: the registry checks the revocations table too."""
    client, _ = await make_client()
    by_grant, by_jti = await first_token(issuer, client), await first_token(issuer, client)
    [row] = await sql(stack, "SELECT jti FROM opaque_tokens WHERE token_hash = $1", sha(by_jti.refresh_token))
    expires = int(time.time()) + 600
    await sql(stack, "INSERT INTO revocations (kind, value, client_id, expires_at)"
                     " VALUES ('grant', $1, $2, to_timestamp($4)), ('jti', $3, $2, to_timestamp($4))",
              by_grant.grant_id, client.client_id, row["jti"], expires)
    for issued in (by_grant, by_jti):
        refused, _ = await rotate(repo, issued.refresh_token, client.client_id)
        assert refused.reason == REFUSED_REVOKED


async def test_rotation_over_grpc_as_the_refresh_token_grant_calls_it(stack, issuer, make_client):
    """The servicer and RegistryClient (coalesced batches): outcomes and item errors come back
    as the repository answered them."""
    client, _ = await make_client()
    issued = await first_token(issuer, client)
    channel = stack.channel("client_registry", caller=identity.service("refresh_token"))
    try:
        registry = RegistryClient(channel)
        good, _ = rotation(issued.refresh_token, client.client_id)
        malformed = Rotation(token_hash=b"short", client_id=client.client_id, new_token_hash=sha("n"), new_jti="j",
                             grace_seconds=5)
        rotated, error = await registry.rotate_refresh_tokens([good, malformed])
        assert isinstance(rotated, Rotated) and rotated.successor.grant_id == issued.grant_id
        assert isinstance(error, ItemError) and error.code == "invalid_argument"
        assert await registry.store_rotation_responses([(sha(issued.refresh_token), b"sealed")]) == [None]
        again, _ = rotation(issued.refresh_token, client.client_id)
        [replay] = await registry.rotate_refresh_tokens([again])
        assert isinstance(replay, Replay) and replay.encrypted_response == b"sealed" and replay.consumed.consumed
        [refused] = await registry.rotate_refresh_tokens([rotation("ibr_unknown", client.client_id)[0]])
        assert refused == Refused(REFUSED_UNKNOWN)
    finally:
        await channel.close()


async def test_a_successor_stored_while_its_family_is_revoked_is_revoked_too(stack, pool, bus, issuer, make_client,
                                                                           stored_tokens):
    """A reuse (or an RFC 7009 revocation) of a family while another rotation of it is
    in flight: the revocation's UPDATE waits for that rotation's lock on its token, and
    the successor it then commits was not in the UPDATE's snapshot. It must be marked
    revoked all the same: the grant revocation row that also refuses it expires (a day
    after the family's access tokens), and the successor would then refresh again."""
    now = [time.time()]
    repo = RefreshTokenRepository(pool, bus, clock=lambda: now[0])
    client, _ = await make_client()
    issued = await first_token(issuer, client)
    first, middle = await rotate(repo, issued.refresh_token, client.client_id, grace=0)
    assert isinstance(first, Rotated)
    now[0] += 1  # the first token's grace window is over: presenting it again is a reuse

    in_flight, last = rotation(middle, client.client_id, grace=0)
    async with pool.acquire() as holder:
        transaction = holder.transaction()
        await transaction.start()
        try:
            assert isinstance(await repo._rotate_in(holder, in_flight), Rotated)  # not committed yet
            reuse = asyncio.ensure_future(rotate(repo, issued.refresh_token, client.client_id, grace=0))
            await eventually(lambda: sql(stack, "SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                                         holder.get_server_pid()),
                             message="the reuse waits for the rotation in flight")
        finally:
            await transaction.commit()
    reused, _ = await reuse
    assert isinstance(reused, Refused) and reused.reason == REFUSED_REUSED

    tokens = await stored_tokens.get_opaque_tokens([sha(issued.refresh_token), sha(middle), sha(last)])
    assert [t.revoked for t in tokens] == [True, True, True]
    # Even once the grant revocation is gone, the successor stays refused.
    await sql(stack, "DELETE FROM revocations WHERE kind = 'grant' AND value = $1", issued.grant_id)
    refused, _ = await rotate(repo, last, client.client_id)
    assert refused == Refused(REFUSED_REVOKED, grant_id=issued.grant_id)


async def test_a_password_change_racing_a_refresh_covers_its_access_token_too(stack, registry, issuer, make_client):
    """The refresh_token grant against the real registry and token_issuer. The password
    change waits for the rotation's lock on the user's row and records its cut-off after
    it, so the successor is covered; the access token is issued a little later, after that
    cut-off: it must be stamped as of the rotation, or the change would leave it alive."""
    client, secret = await make_client(grant_types=["client_credentials", "refresh_token"])
    user = await registry.create_user(UserSpec(username="racer-" + uuid.uuid4().hex[:8],
                                               password="first-password-" + secrets.token_hex(4)))
    issued = await first_token(issuer, client, subject=user.id, username=user.username)

    class PasswordChangedMeanwhile:
        """token_issuer, reached once the user's password has changed."""

        async def issue(self, request):
            await registry.set_user_password(user.id, "second-password-" + secrets.token_hex(4))
            return await issuer.issue(request)

    channel = stack.channel("client_registry", caller=identity.service("refresh_token"))
    try:
        grant = RefreshTokenGrant(RegistryClient(channel), PasswordChangedMeanwhile())
        answer = await grant.handle(TokenRequest(
            grant_type="refresh_token", client=ClientCredentials(CLIENT_SECRET_BASIC, client.client_id, secret),
            params={"refresh_token": (issued.refresh_token,)}), client)
    finally:
        await channel.close()

    assert not (await issuer.introspect(answer.refresh_token)).active
    await eventually(lambda: issuer.introspect(answer.access_token), until=lambda info: not info.active,
                     timeout=10, message="the password change revokes the access token of the refresh racing it")


async def test_a_failed_issue_after_the_rotation_leaves_the_successor_for_the_retry(stack, issuer, make_client):
    """The path the unit tests play with fakes, against the real registry: token_issuer fails
    once the token is consumed; the successor is stored sealed on its own, and the client's
    retry within the grace window gets it with an access token of its own. The family lives."""
    client, secret = await make_client(grant_types=["client_credentials", "refresh_token"])
    issued = await first_token(issuer, client)

    class FailingOnce:
        def __init__(self):
            self.calls = 0

        async def issue(self, request):
            self.calls += 1
            if self.calls == 1:
                raise TemporarilyUnavailable(detail="token_issuer away")
            return await issuer.issue(request)

    def refresh(token: str) -> TokenRequest:
        return TokenRequest(grant_type="refresh_token",
                            client=ClientCredentials(CLIENT_SECRET_BASIC, client.client_id, secret),
                            params={"refresh_token": (token,)})

    channel = stack.channel("client_registry", caller=identity.service("refresh_token"))
    try:
        grant = RefreshTokenGrant(RegistryClient(channel), FailingOnce())
        with pytest.raises(TemporarilyUnavailable):
            await grant.handle(refresh(issued.refresh_token), client)
        retry = await grant.handle(refresh(issued.refresh_token), client)
        assert (await issuer.introspect(retry.access_token)).active
        assert (await issuer.introspect(retry.refresh_token)).active
        assert not (await issuer.introspect(issued.refresh_token)).active  # consumed by the first request
        following = await grant.handle(refresh(retry.refresh_token), client)
        assert (await issuer.introspect(following.access_token)).active
    finally:
        await channel.close()

"""The refresh token grant's rules (RFC 6749 §6, RFC 9700 §4.14.2) with in-memory fakes,
through the grant runner as in production (client authentication and the grant-type
check are the runner's). The registry's side (atomic rotation, reuse revoking the
family) is played by tests/fakes.FakeRefreshTokens; the same paths run against the
real stack in tests/integration/test_refresh_token.py."""
from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest

from inboundlib import budget
from inboundlib.batching import Expired
from inboundlib.config import Env
from inboundlib.events import TOKEN_DENIED
from inboundlib.grants.api import TokenRequest, TokenResponse
from inboundlib.grants.runner import GrantRunner
from inboundlib.oauth import rotation_response
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, NONE, ClientCredentials, hash_client_secret
from inboundlib.oauth.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    TemporarilyUnavailable,
    UnauthorizedClient,
)
from services.client_registry.api import ClientRecord, OpaqueTokenRecord
from services.grant_process import GrantDeps
from services.refresh_token import grant as refresh_grant
from services.refresh_token.grant import REFUSED, RefreshTokenGrant
from services.token_issuer.reference_tokens import new_refresh_token, token_hash
from tests.fakes import FakeBus, FakeClients, FakeIssuer, FakeRefreshTokens, client_record
from tests.support import eventually

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-s3cret-s3"
GRACE = 5


def record(**overrides) -> ClientRecord:
    return client_record(**{"secret_hash": hash_client_secret(SECRET), "scopes": ("read", "write", "admin"),
                            "grant_types": ("password", "refresh_token"), "token_format": "opaque", **overrides})


def public_record(**overrides) -> ClientRecord:
    return record(**{"public": True, "secret_hash": "", **overrides})


def family(store: FakeRefreshTokens, *, client_id="app", scopes=("read", "write"), subject="user-1",
           grant_id="grant-1", expires_in=3600) -> str:
    """A refresh token as token_issuer's Issue stores it; returns the token."""
    token = new_refresh_token()
    store.add(OpaqueTokenRecord(token_hash=token_hash(token), jti="rt-" + grant_id, client_id=client_id,
                                subject=subject, username="alice", scopes=tuple(scopes), audience=("https://rs",),
                                issued_at=int(store.now), expires_at=int(store.now) + expires_in, kind="refresh",
                                grant_id=grant_id))
    return token


def request(token: str | None, method=CLIENT_SECRET_BASIC, client_id="app", secret=SECRET, **params) -> TokenRequest:
    if token is not None:
        params["refresh_token"] = token
    return TokenRequest(grant_type="refresh_token",
                        client=ClientCredentials(method, client_id, secret if method != NONE else "")
                        if method else None,
                        params={name: (value,) for name, value in params.items()})


def grant(store, issuer, pauses=(0, 0, 0), **kw) -> RefreshTokenGrant:
    return RefreshTokenGrant(store, issuer, grace_seconds=GRACE, replay_poll_pauses=pauses, **kw)


def runner(client: ClientRecord, store: FakeRefreshTokens, issuer: FakeIssuer, bus=None, **kw) -> GrantRunner:
    return GrantRunner(grant(store, issuer, **kw), FakeClients(client), bus)


# --- rotation ----------------------------------------------------------------------------------------

async def test_a_refresh_rotates_the_token_and_issues_for_the_family():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    response = await runner(record(), store, issuer).handle(request(token))

    assert response.refresh_token.startswith("ibr_") and response.refresh_token != token
    assert len(response.refresh_token) == len(token)  # 256 bits, as token_issuer makes them
    assert response.access_token == "token-jti-1"
    assert response.scope == "read write"  # the family's scope
    (issued,) = issuer.requests
    assert (issued.client_id, issued.subject, issued.username, issued.grant_id) == ("app", "user-1", "alice", "grant-1")
    assert issued.scopes == ("read", "write")
    assert issued.refresh_token_lifetime == 0  # the successor is the registry's, not a new family
    assert issued.grant_type == "refresh_token"
    assert (issued.format, issued.lifetime_seconds) == ("opaque", 900)
    assert issued.audience == ("https://rs",)
    # The registry was asked to consume the presented token and store the answered successor.
    (rotation,) = store.rotations
    assert rotation.token_hash == hashlib.sha256(token.encode()).digest()
    assert rotation.new_token_hash == hashlib.sha256(response.refresh_token.encode()).digest()
    assert rotation.grace_seconds == GRACE


async def test_the_successor_refreshes_in_turn_and_the_consumed_token_no_longer_does():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    first = await runner(record(), store, issuer).handle(request(token))
    second = await runner(record(), store, issuer).handle(request(first.refresh_token))
    assert second.refresh_token not in (token, first.refresh_token)
    store.now += GRACE + 1
    with pytest.raises(InvalidGrant):
        await runner(record(), store, issuer).handle(request(token))


async def test_the_answer_is_stored_sealed_for_the_presented_tokens_holder_only():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    response = await runner(record(), store, issuer).handle(request(token))
    blob = store.responses[token_hash(token)]
    assert response.refresh_token.encode() not in blob and response.access_token.encode() not in blob
    assert rotation_response.open_sealed(token, token_hash(token), blob) == response
    with pytest.raises(rotation_response.UnreadableResponse):
        rotation_response.open_sealed(response.refresh_token, token_hash(token), blob)


async def test_an_unstored_answer_still_answers_the_client():
    """The rotation is done: failing now would strand the family (the successor would never be delivered)."""
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)

    async def unreachable(responses):
        raise ConnectionError("registry away")

    store.store_rotation_responses = unreachable
    response = await runner(record(), store, issuer).handle(request(token))
    assert response.refresh_token.startswith("ibr_")


# --- refusals ----------------------------------------------------------------------------------------

async def test_a_missing_refresh_token_is_invalid_request_and_rotates_nothing():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    family(store)
    for req in (request(None), request("")):
        with pytest.raises(InvalidRequest):
            await runner(record(), store, issuer).handle(req)
    assert store.rotations == [] and issuer.requests == []


@pytest.mark.parametrize("case", ["unknown", "not_ours", "other_client", "expired", "revoked", "user_inactive"])
async def test_every_refusal_is_the_same_invalid_grant_and_issues_nothing(case):
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store, client_id="other" if case == "other_client" else "app",
                   expires_in=-1 if case == "expired" else 3600)
    if case == "unknown":
        token = new_refresh_token()
    elif case == "not_ours":
        token = "xyz_" + token[4:]
    elif case == "revoked":
        store.revoked_grants.add("grant-1")
    elif case == "user_inactive":
        store.inactive_subjects.add("user-1")
    with pytest.raises(InvalidGrant) as refused:
        await runner(record(), store, issuer).handle(request(token))
    assert refused.value.description == REFUSED
    assert issuer.requests == []
    if case != "not_ours":
        assert case.split("_")[0] in refused.value.detail  # the reason, for the log and the audit trail
    # Nothing consumed: another client's token still works for its own client.
    assert store.consumed_at == {}


async def test_reuse_after_the_grace_window_is_refused_and_revokes_the_family():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    first = await runner(record(), store, issuer).handle(request(token))
    store.now += GRACE + 1
    with pytest.raises(InvalidGrant) as refused:
        await runner(record(), store, issuer).handle(request(token))
    assert "reused" in refused.value.detail and "grant-1" in refused.value.detail
    assert "grant-1" in store.revoked_grants
    with pytest.raises(InvalidGrant):  # the successor belongs to the revoked family
        await runner(record(), store, issuer).handle(request(first.refresh_token))
    assert len(issuer.requests) == 1


# --- retries within the grace window -----------------------------------------------------------------

async def test_a_retry_within_the_grace_window_gets_the_very_same_tokens():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    first = await runner(record(), store, issuer).handle(request(token))
    store.now += GRACE - 1
    again = await runner(record(), store, issuer).handle(request(token))
    assert again == first
    assert len(issuer.requests) == 1  # no second access token
    assert store.revoked_grants == set()


async def test_a_retry_while_the_first_answer_is_in_flight_waits_for_it():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    hash_ = token_hash(token)
    first = TokenResponse(access_token="at-first", token_type="Bearer", expires_in=900, scope="read write",
                          refresh_token=new_refresh_token())
    store.consumed_at[hash_] = store.now  # the first request rotated, and has not stored its answer yet
    polls = 0

    async def first_request_finishes():
        nonlocal polls
        polls += 1
        if polls == 2:
            store.responses[hash_] = rotation_response.seal(token, hash_, first)

    store.on_rotate = first_request_finishes
    assert await runner(record(), store, issuer).handle(request(token)) == first
    assert issuer.requests == []


async def test_a_retry_whose_first_answer_never_comes_is_temporarily_unavailable_after_a_bounded_wait():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    store.consumed_at[token_hash(token)] = store.now
    with pytest.raises(TemporarilyUnavailable):
        await runner(record(), store, issuer, pauses=(0, 0, 0)).handle(request(token))
    assert len(store.rotations) == 4  # the first ask and one per pause, no more
    assert issuer.requests == [] and store.revoked_grants == set()


async def test_a_retry_never_asks_again_past_the_grace_window():
    """The first request is slower than the window: asking once more would be presenting the
    consumed token after it, a reuse, and the registry would revoke the family of a client
    that only retried within the window."""
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    store.consumed_at[token_hash(token)] = store.now - (GRACE - 1)  # the window has a second left
    pauses = (0.4, 0.4, 0.4, 0.4)

    async def time_passes():  # each ask comes one pause after the previous one
        store.now += pauses[0]

    store.on_rotate = time_passes
    with pytest.raises(TemporarilyUnavailable):
        await grant(store, issuer, pauses=pauses, clock=lambda: store.now).handle(request(token), record())
    assert store.revoked_grants == set()
    assert len(store.rotations) < 1 + len(pauses)  # it stopped asking before the window's end


class IssuerSlowerThanTheRequest(FakeIssuer):
    """token_issuer answering only once `release` is set; it gives up with the caller's
    budget, as the real client does (inboundlib.batching)."""

    def __init__(self):
        super().__init__()
        self.release = asyncio.Event()

    async def issue(self, request):
        await asyncio.wait_for(self.release.wait(), timeout=budget.remaining(5.0))
        return await super().issue(request)


class RefreshTokensWithinBudget(FakeRefreshTokens):
    """Refuses a store once the caller's budget has passed, as the real client does."""

    async def store_rotation_responses(self, responses):
        if budget.passed():
            raise Expired("registry.StoreRotationResponses")
        return await super().store_rotation_responses(responses)


async def test_a_request_out_of_time_after_its_rotation_still_leaves_its_answer_for_the_retry():
    """The client's first request runs out of time once the token is consumed (token_issuer
    slow): exactly what it retries within the grace window. The answer is finished and
    stored all the same, so the retry gets the successor instead of nothing (and, asking
    again after the window, a reuse revoking the family)."""
    store, issuer = RefreshTokensWithinBudget(), IssuerSlowerThanTheRequest()
    token = family(store)
    with budget.within(0.05), pytest.raises(TemporarilyUnavailable):
        await runner(record(), store, issuer).handle(request(token))
    assert token_hash(token) in store.consumed_at  # rotated: the successor exists only in that request
    issuer.release.set()
    await eventually(lambda: token_hash(token) in store.responses, message="the answer is stored")

    retry = await runner(record(), store, issuer).handle(request(token))
    assert retry.access_token and retry.refresh_token.startswith("ibr_")
    assert len(issuer.requests) == 1 and store.revoked_grants == set()
    assert (await runner(record(), store, issuer).handle(request(retry.refresh_token))).access_token


async def test_the_production_poll_is_bounded_to_about_a_second_and_a_half():
    assert 1.0 <= sum(refresh_grant.REPLAY_POLL_PAUSES) <= 2.0
    assert list(refresh_grant.REPLAY_POLL_PAUSES) == sorted(refresh_grant.REPLAY_POLL_PAUSES)  # backs off


async def test_a_retry_may_not_ask_beyond_the_first_answers_scope():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    first = await runner(record(), store, issuer).handle(request(token, scope="read"))
    with pytest.raises(InvalidScope):
        await runner(record(), store, issuer).handle(request(token, scope="read write"))
    assert await runner(record(), store, issuer).handle(request(token, scope="read")) == first
    assert len(issuer.requests) == 1


async def test_a_stored_answer_that_does_not_open_is_not_answered():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    await runner(record(), store, issuer).handle(request(token))
    blob = bytearray(store.responses[token_hash(token)])
    blob[-1] ^= 1
    store.responses[token_hash(token)] = bytes(blob)
    with pytest.raises(Exception) as failed:
        await runner(record(), store, issuer).handle(request(token))
    assert failed.value.code == "server_error"


# --- scope ---------------------------------------------------------------------------------------------

async def test_scope_may_narrow_and_the_family_keeps_its_scope():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store, scopes=("read", "write"))
    narrowed = await runner(record(), store, issuer).handle(request(token, scope="read"))
    assert narrowed.scope == "read" and issuer.requests[-1].scopes == ("read",)
    full = await runner(record(), store, issuer).handle(request(narrowed.refresh_token))
    assert full.scope == "read write"  # §6: the successor carries the original grant's scope


@pytest.mark.parametrize("scope", ["read admin", "read other", 're"ad'])
async def test_a_scope_beyond_the_tokens_is_invalid_scope_and_leaves_the_token_unconsumed(scope):
    """`admin` the client may have but the token was never granted; `other` neither."""
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store, scopes=("read", "write"))
    with pytest.raises(InvalidScope):
        await runner(record(), store, issuer).handle(request(token, scope=scope))
    assert store.rotations == [] and issuer.requests == []
    # Bad input changed nothing: the token still refreshes, with no grace-window surprise.
    assert (await runner(record(), store, issuer).handle(request(token))).scope == "read write"


async def test_a_scope_the_client_no_longer_has_is_left_out():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store, scopes=("read", "write"))
    with pytest.raises(InvalidScope):
        await runner(record(scopes=("read",)), store, issuer).handle(request(token, scope="write"))
    response = await runner(record(scopes=("read",)), store, issuer).handle(request(token))
    assert response.scope == "read" and issuer.requests[-1].scopes == ("read",)


# --- the runner's part: client authentication and the grant type ---------------------------------------

async def test_a_public_client_names_itself_with_client_id_alone():
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    response = await runner(public_record(), store, issuer).handle(request(token, method=NONE))
    assert response.refresh_token


@pytest.mark.parametrize("client,req_kwargs,error", [
    (record(), {"method": NONE}, InvalidClient),            # confidential: must authenticate
    (record(), {"secret": "wrong"}, InvalidClient),
    (record(active=False), {}, InvalidClient),               # a disabled client cannot refresh
    (record(grant_types=("password",)), {}, UnauthorizedClient),
    (public_record(grant_types=("password",)), {"method": NONE}, UnauthorizedClient),
])
async def test_the_runner_refuses_before_the_token_is_touched(client, req_kwargs, error):
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    with pytest.raises(error):
        await runner(client, store, issuer).handle(request(token, **req_kwargs))
    assert store.rotations == [] and issuer.requests == []


async def test_the_refresh_token_is_in_no_log_line_error_or_audit_event(caplog):
    store, issuer, bus = FakeRefreshTokens(), FakeIssuer(), FakeBus()
    caplog.set_level(logging.DEBUG)
    token = family(store)
    first = await runner(record(), store, issuer, bus).handle(request(token))
    await runner(record(), store, issuer, bus).handle(request(token))  # a replay
    store.now += GRACE + 1
    errors = []
    for presented in (token, first.refresh_token, new_refresh_token()):  # reuse, revoked family, unknown
        with pytest.raises(InvalidGrant) as refused:
            await runner(record(), store, issuer, bus).handle(request(presented))
        errors.append(refused.value)
    assert len(bus.events(TOKEN_DENIED)) == 3
    secrets_ = [token[4:], first.refresh_token[4:], first.access_token]
    texts = [repr(bus.published), *(str(e) for e in errors), *(repr(vars(r)) + r.getMessage() for r in caplog.records)]
    assert caplog.records
    for text in texts:
        for secret in secrets_:
            assert secret not in text


# --- settings --------------------------------------------------------------------------------------------

def test_build_reads_the_grace_window():
    def built(environ):
        return refresh_grant.build(GrantDeps(clients=None, registry=FakeRefreshTokens(), issuer=FakeIssuer(),
                                             events=FakeBus(), env=Env(environ)))
    assert built({}).grace_seconds == 5
    assert built({"INBOUND_REFRESH_GRACE_SECONDS": "2"}).grace_seconds == 2
    with pytest.raises(Exception):
        built({"INBOUND_REFRESH_GRACE_SECONDS": "3600"})


# --- the sealed answer ------------------------------------------------------------------------------------

RESPONSE = TokenResponse(access_token="at-1", token_type="Bearer", expires_in=900, scope="read",
                         refresh_token="ibr_successor")


def test_a_sealed_answer_opens_with_its_token_only():
    token = new_refresh_token()
    blob = rotation_response.seal(token, token_hash(token), RESPONSE)
    assert rotation_response.open_sealed(token, token_hash(token), blob) == RESPONSE
    other = new_refresh_token()
    with pytest.raises(rotation_response.UnreadableResponse):
        rotation_response.open_sealed(other, token_hash(token), blob)


def test_a_sealed_answer_moved_to_another_row_does_not_open():
    token = new_refresh_token()
    blob = rotation_response.seal(token, token_hash(token), RESPONSE)
    with pytest.raises(rotation_response.UnreadableResponse):
        rotation_response.open_sealed(token, token_hash(new_refresh_token()), blob)


@pytest.mark.parametrize("position", [0, 5, 20, -1])
def test_a_tampered_sealed_answer_is_refused(position):
    token = new_refresh_token()
    blob = bytearray(rotation_response.seal(token, token_hash(token), RESPONSE))
    blob[position] ^= 0x01
    with pytest.raises(rotation_response.UnreadableResponse):
        rotation_response.open_sealed(token, token_hash(token), bytes(blob))
    with pytest.raises(rotation_response.UnreadableResponse):
        rotation_response.open_sealed(token, token_hash(token), b"")


def test_two_seals_of_one_answer_differ():
    """A fresh nonce each time (GCM must never reuse one under a key)."""
    token = new_refresh_token()
    assert rotation_response.seal(token, token_hash(token), RESPONSE) != \
        rotation_response.seal(token, token_hash(token), RESPONSE)



async def test_a_failed_issue_after_the_rotation_leaves_the_successor_for_a_retry():
    """token_issuer fails after the token was consumed: the retry within the window gets the
    stored successor and an access token of its own, and the family lives on (no false reuse)."""
    store, issuer = FakeRefreshTokens(), FakeIssuer()
    token = family(store)
    issuer.down = ConnectionError("token_issuer away")
    with pytest.raises(TemporarilyUnavailable):
        await runner(record(), store, issuer).handle(request(token, scope="read"))
    issuer.down = None
    store.now += 1
    retry = await runner(record(), store, issuer).handle(request(token))
    again = await runner(record(), store, issuer).handle(request(token))
    assert retry.refresh_token == again.refresh_token  # the one successor the registry stored
    assert retry.access_token and retry.scope == "read"
    assert [r.grant_id for r in issuer.requests] == ["grant-1", "grant-1"]
    assert store.revoked_grants == set()
    assert (await runner(record(), store, issuer).handle(request(retry.refresh_token))).refresh_token

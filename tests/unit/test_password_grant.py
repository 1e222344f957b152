"""The password grant's rules (RFC 6749 §4.3) with in-memory fakes (no gRPC, no DB),
through the grant runner as in production (client authentication and the
grant-type check are the runner's). The same paths run end to end over HTTP in
tests/integration/test_password_grant_http.py."""
from __future__ import annotations

import dataclasses
import logging

import grpc
import pytest

from inboundlib.events import TOKEN_DENIED
from inboundlib.grants.api import RequestContext, TokenRequest
from inboundlib.grants.runner import GrantRunner
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, NONE, ClientCredentials, hash_client_secret
from inboundlib.oauth.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    UnauthorizedClient,
)
from services.client_registry.api import (
    ITEM_INTERNAL,
    ITEM_UNAVAILABLE,
    PURPOSE_PASSWORD_GRANT,
    ClientRecord,
    Invalid,
    ItemError,
    Locked,
    SignIn,
    SignInOutcome,
    UserRecord,
)
from services.password.grant import PasswordGrant
from services.token_issuer.api import IssuedToken, IssueRequest
from tests.fakes import FakeBus, FakeClients, FakeIssuer, client_record

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-s3cret-s3"
PASSWORD = "correct horse battery staple"
ALICE = UserRecord(id="0b7e1d5c-6a3e-4c55-9d0f-6f7e0e2c1a11", username="alice", email="", display_name="Alice",
                   active=True, roles=())


class FakeUsers:
    """The registry's UserAuthenticator port: answers `outcome` for every sign-in
    (or, by default, alice for her password and Invalid otherwise); records each."""

    def __init__(self, outcome: SignInOutcome | None = None):
        self.outcome = outcome
        self.sign_ins: list[SignIn] = []
        self.down: BaseException | None = None

    async def authenticate_users(self, sign_ins: list[SignIn]) -> list[SignInOutcome]:
        if self.down is not None:
            raise self.down
        self.sign_ins.extend(sign_ins)
        if self.outcome is not None:
            return [self.outcome for _ in sign_ins]
        return [ALICE if (s.username, s.password) == ("alice", PASSWORD) else Invalid() for s in sign_ins]


class RefreshingIssuer(FakeIssuer):
    """The issuer port, answering a refresh token when one is asked for (as token_issuer does)."""

    async def issue(self, request: IssueRequest) -> IssuedToken:
        token = await super().issue(request)
        if request.refresh_token_lifetime > 0:
            token = dataclasses.replace(token, refresh_token=f"refresh-{token.jti}")
        return token


class Unavailable(grpc.aio.AioRpcError):
    def __init__(self):
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "registry down")


def record(**overrides) -> ClientRecord:
    return client_record(**{"secret_hash": hash_client_secret(SECRET), "scopes": ("read", "write"),
                            "grant_types": ("password",), "token_format": "opaque",
                            "refresh_token_lifetime": 7200, **overrides})


def public_record(**overrides) -> ClientRecord:
    return record(**{"public": True, "secret_hash": "", **overrides})


def request(method=CLIENT_SECRET_BASIC, secret=SECRET, **params) -> TokenRequest:
    params = {"username": "alice", "password": PASSWORD, **params}
    return TokenRequest(grant_type="password",
                        client=ClientCredentials(method, "app", secret) if method else None,
                        params={name: (value,) for name, value in params.items() if value is not None},
                        request_id="req-1", context=RequestContext(client_address="198.51.100.7"))


def public_request(**params) -> TokenRequest:
    return request(method=NONE, secret="", **params)


def runner(client: ClientRecord, users: FakeUsers, issuer: FakeIssuer, bus: FakeBus | None = None) -> GrantRunner:
    return GrantRunner(PasswordGrant(users, issuer), FakeClients(client), bus)


async def test_issues_a_token_for_the_user_with_the_clients_settings():
    users, issuer = FakeUsers(), RefreshingIssuer()
    response = await runner(record(), users, issuer).handle(request(scope="read"))
    assert response.to_json() == {"access_token": "token-jti-1", "token_type": "Bearer", "expires_in": 900,
                                  "scope": "read"}
    [issued] = issuer.requests
    assert (issued.subject, issued.username, issued.client_id) == (ALICE.id, "alice", "app")
    assert (issued.format, issued.lifetime_seconds, issued.grant_type) == ("opaque", 900, "password")
    assert issued.scopes == ("read",)
    assert issued.refresh_token_lifetime == 0, "no refresh token for a client without the refresh_token grant"
    # The registry got the sign-in with where it came from, for its per-address counters.
    [sign_in] = users.sign_ins
    assert (sign_in.username, sign_in.password, sign_in.client_address, sign_in.purpose, sign_in.request_id) == (
        "alice", PASSWORD, "198.51.100.7", PURPOSE_PASSWORD_GRANT, "req-1")


async def test_the_tokens_are_stamped_as_of_the_registrys_password_check():
    """A password change racing the sign-in records its cut-off after the check: tokens
    stamped with the check's time (not the issue's) are covered by it."""
    issuer = RefreshingIssuer()
    checked = dataclasses.replace(ALICE, verified_at_ms=1_765_000_000_123)
    await runner(record(), FakeUsers(checked), issuer).handle(request())
    assert issuer.requests[0].authenticated_at_ms == 1_765_000_000_123


async def test_a_refresh_token_only_for_a_client_allowed_the_refresh_token_grant():
    """§4.3.3: the refresh token is optional; here it follows the client's grants."""
    issuer = RefreshingIssuer()
    client = record(grant_types=("password", "refresh_token"), refresh_token_absolute_lifetime=30 * 86400)
    response = await runner(client, FakeUsers(), issuer).handle(request())
    assert response.refresh_token == "refresh-jti-1"
    assert response.to_json()["refresh_token"] == "refresh-jti-1"
    [issued] = issuer.requests
    assert (issued.refresh_token_lifetime, issued.refresh_token_absolute_lifetime) == (7200, 30 * 86400)

    issuer = RefreshingIssuer()
    response = await runner(record(refresh_token_absolute_lifetime=30 * 86400), FakeUsers(), issuer).handle(request())
    assert "refresh_token" not in response.to_json()
    assert (issuer.requests[0].refresh_token_lifetime, issuer.requests[0].refresh_token_absolute_lifetime) == (0, 0)


async def test_no_scope_requested_grants_the_clients_scopes():
    issuer = FakeIssuer()
    response = await runner(record(), FakeUsers(), issuer).handle(request())
    assert response.scope == "read write"
    assert issuer.requests[0].scopes == ("read", "write")


@pytest.mark.parametrize("req,error", [
    (request(username=None), InvalidRequest),
    (request(password=None), InvalidRequest),
    (request(username=None, password=None), InvalidRequest),
    (request(username=""), InvalidRequest),
    (request(password=""), InvalidRequest),
    (request(scope="read admin"), InvalidScope),
    (request(scope='re"ad'), InvalidScope),
    (request(secret="wrong"), InvalidClient),
    (request(method=None), InvalidClient),
])
async def test_each_request_rule_refuses_before_any_password_check(req, error):
    """Nothing is verified (no hash work, no failure counted) and nothing issued."""
    users, issuer = FakeUsers(), FakeIssuer()
    with pytest.raises(error):
        await runner(record(), users, issuer).handle(req)
    assert users.sign_ins == []
    assert issuer.requests == []


async def test_a_client_without_the_grant_is_unauthorized():
    users, issuer = FakeUsers(), FakeIssuer()
    with pytest.raises(UnauthorizedClient):
        await runner(record(grant_types=("client_credentials",)), users, issuer).handle(request())
    assert users.sign_ins == [] and issuer.requests == []


async def test_a_public_client_only_when_the_operator_allowed_it():
    """§4.3.2: a public client cannot authenticate; only an explicit per-client allowance lets it in."""
    users, issuer = FakeUsers(), FakeIssuer()
    with pytest.raises(UnauthorizedClient):
        await runner(public_record(), users, issuer).handle(public_request())
    assert users.sign_ins == [] and issuer.requests == []
    # The grant's own rule, checked without the runner.
    with pytest.raises(UnauthorizedClient):
        await PasswordGrant(users, issuer).handle(public_request(), public_record())
    assert users.sign_ins == [] and issuer.requests == []

    response = await runner(public_record(allow_public_password_grant=True), users, issuer).handle(public_request())
    assert response.access_token == "token-jti-1"
    assert issuer.requests[0].subject == ALICE.id


async def test_the_allowance_does_not_spare_a_confidential_client_its_secret():
    with pytest.raises(InvalidClient):
        await runner(record(allow_public_password_grant=True), FakeUsers(), FakeIssuer()).handle(public_request())


@pytest.mark.parametrize("outcome", [Invalid(), Locked(locked_until=2_000_000_000)], ids=["invalid", "locked"])
async def test_wrong_credentials_and_a_lock_are_invalid_grant(outcome):
    issuer = FakeIssuer()
    with pytest.raises(InvalidGrant):
        await runner(record(), FakeUsers(outcome), issuer).handle(request())
    assert issuer.requests == []


async def test_invalid_and_locked_answer_the_same_public_error():
    """§5.2 invalid_grant for both, with the same text: the answer does not tell a
    guesser that the account exists and is locked. Only the private detail differs."""
    answers = []
    for outcome in (Invalid(), Locked(locked_until=2_000_000_000)):
        with pytest.raises(InvalidGrant) as raised:
            await runner(record(), FakeUsers(outcome), FakeIssuer()).handle(request())
        answers.append(raised.value)
    assert answers[0].to_json() == answers[1].to_json()
    assert answers[0].to_json()["error"] == "invalid_grant"
    assert "lock" not in answers[0].description.lower()
    assert answers[0].detail != answers[1].detail
    assert "locked" in answers[1].detail


async def test_a_registry_item_error_is_server_error():
    with pytest.raises(ServerError):
        await runner(record(), FakeUsers(ItemError(ITEM_INTERNAL, "boom")), FakeIssuer()).handle(request())


async def test_a_sign_in_past_the_registrys_queue_is_temporarily_unavailable():
    issuer = FakeIssuer()
    with pytest.raises(TemporarilyUnavailable):
        await runner(record(), FakeUsers(ItemError(ITEM_UNAVAILABLE, "full")), issuer).handle(request())
    assert issuer.requests == []


async def test_an_unreachable_registry_is_temporarily_unavailable():
    users, issuer = FakeUsers(), FakeIssuer()
    users.down = Unavailable()
    with pytest.raises(TemporarilyUnavailable):
        await runner(record(), users, issuer).handle(request())
    assert issuer.requests == []


@pytest.mark.parametrize("outcome", [None, Invalid(), Locked(locked_until=2_000_000_000),
                                     ItemError(ITEM_INTERNAL, "boom")], ids=["ok", "invalid", "locked", "item"])
async def test_the_password_is_in_no_log_error_event_or_repr(caplog, outcome):
    """The password travels to the registry and nowhere else (a username, the caller's
    word, may itself be a misplaced password: only its fingerprint is written)."""
    caplog.set_level(logging.DEBUG)
    bus, users = FakeBus(), FakeUsers(outcome)
    username = "alice-typed-her-password-here"
    req = request(username=username if outcome is not None else "alice")
    raised: OAuthError | None = None
    try:
        await runner(record(), users, FakeIssuer(), bus).handle(req)
    except OAuthError as exc:
        raised = exc
    assert users.sign_ins and users.sign_ins[0].password == PASSWORD, "the password did reach the registry"
    assert PASSWORD not in repr(users.sign_ins)
    written = [repr(req), repr(bus.published)]
    written += [entry.getMessage() + repr(vars(entry)) for entry in caplog.records]
    if raised is not None:
        written += [str(raised), repr(raised), raised.detail, repr(raised.to_json())]
        assert bus.events(TOKEN_DENIED), "the refusal is audited"
    for text in written:
        assert PASSWORD not in text
        assert username not in text

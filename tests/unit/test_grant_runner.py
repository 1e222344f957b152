"""The grant runner: client authentication, the allowed-grant check and the parameter
allow-list run once, for every grant, before its handler; refusals are logged and
audited with caller-supplied identifiers fingerprinted."""
from __future__ import annotations

import pytest

from inboundlib import redact
from inboundlib.events import TOKEN_DENIED
from inboundlib.grants.api import GrantParameters, RequestContext, TokenRequest, TokenResponse
from inboundlib.grants.runner import GrantRunner
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, NONE, ClientCredentials, hash_client_secret
from inboundlib.oauth.errors import InvalidClient, InvalidRequest, UnauthorizedClient, UnsupportedGrantType
from tests.fakes import FakeBus, FakeClients, client_record

SECRET = "the-secret-of-app-0123456789"


class ForgetfulGrant:
    """A new grant that checks nothing about the client itself."""
    grant_type = "urn:example:new-grant"
    parameters = GrantParameters(single=frozenset({"scope", "subject_token"}),
                                 repeatable=frozenset({"resource", "audience"}))
    authenticates_client = False

    def __init__(self):
        self.calls: list[tuple[TokenRequest, object]] = []

    async def handle(self, request, client):
        self.calls.append((request, client))
        return TokenResponse(access_token="t", token_type="Bearer", expires_in=60)


class SelfAuthenticatingGrant(ForgetfulGrant):
    """Its client proves itself with an assertion parameter (RFC 7521 §4.2); this
    one accepts "proof-of-<client id>" for any client its source knows, active or not."""
    grant_type = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    parameters = GrantParameters(single=frozenset({"assertion", "scope"}))
    authenticates_client = True

    def __init__(self, source: FakeClients):
        super().__init__()
        self.source = source

    async def authenticate(self, request):
        proof = request.param("assertion") or ""
        client = await self.source.get_client(proof.removeprefix("proof-of-"))
        if not proof.startswith("proof-of-") or client is None:
            raise InvalidClient(detail="assertion not valid")
        return client


def clients(**overrides) -> FakeClients:
    return FakeClients(client_record(**{"secret_hash": hash_client_secret(SECRET),
                                        "grant_types": (ForgetfulGrant.grant_type,), **overrides}))


def request(client_id="app", secret=SECRET, grant_type=ForgetfulGrant.grant_type, **params) -> TokenRequest:
    return TokenRequest(grant_type=grant_type, client=ClientCredentials(CLIENT_SECRET_BASIC, client_id, secret),
                        params=params, context=RequestContext(client_address="192.0.2.7"))


async def test_a_grant_gets_the_authenticated_client_record():
    grant = ForgetfulGrant()
    await GrantRunner(grant, clients()).handle(request())
    assert grant.calls[0][1].client_id == "app"


@pytest.mark.parametrize("req,source", [
    (request(secret="wrong"), clients()),
    (request(client_id="nobody"), clients()),
    (request(), clients(active=False)),
    (request(client_id="app\x00"), clients()),
])
async def test_a_grant_that_checks_nothing_still_gets_only_authenticated_clients(req, source):
    grant = ForgetfulGrant()
    with pytest.raises(InvalidClient):
        await GrantRunner(grant, source).handle(req)
    assert grant.calls == []


async def test_a_client_not_registered_for_the_grant_is_unauthorized_client():
    grant = ForgetfulGrant()
    with pytest.raises(UnauthorizedClient):
        await GrantRunner(grant, clients(grant_types=("client_credentials",))).handle(request())
    assert grant.calls == []


async def test_a_malformed_client_id_is_never_looked_up():
    source = clients()
    with pytest.raises(InvalidClient):
        await GrantRunner(ForgetfulGrant(), source).handle(request(client_id="abc\x00"))
    assert source.lookups == []


def self_authenticating_clients(**overrides) -> FakeClients:
    return FakeClients(client_record(**{"secret_hash": hash_client_secret(SECRET),
                                        "grant_types": (SelfAuthenticatingGrant.grant_type,), **overrides}),
                       client_record(client_id="other", secret_hash=hash_client_secret("other-secret"),
                                     grant_types=(SelfAuthenticatingGrant.grant_type,)))


def asserted(proof="proof-of-app", creds: ClientCredentials | None = None) -> TokenRequest:
    return TokenRequest(grant_type=SelfAuthenticatingGrant.grant_type, client=creds,
                        params={"assertion": (proof,)}, context=RequestContext(client_address="192.0.2.7"))


async def test_a_self_authenticating_grant_without_an_async_authenticate_is_refused_when_the_runner_is_built():
    class Forgetful(ForgetfulGrant):
        authenticates_client = True

    class Blocking(ForgetfulGrant):
        authenticates_client = True

        def authenticate(self, request):
            return None

    for grant in (Forgetful(), Blocking()):
        with pytest.raises(TypeError, match="authenticate"):
            GrantRunner(grant, clients())


async def test_a_self_authenticating_grant_gets_the_client_it_proved():
    source = self_authenticating_clients()
    grant = SelfAuthenticatingGrant(source)
    await GrantRunner(grant, source).handle(asserted())
    assert grant.calls[0][1].client_id == "app"
    assert grant.calls[0][0].param("assertion") == "proof-of-app"


async def test_a_failed_proof_is_invalid_client():
    source = self_authenticating_clients()
    grant = SelfAuthenticatingGrant(source)
    with pytest.raises(InvalidClient):
        await GrantRunner(grant, source).handle(asserted("forged"))
    assert grant.calls == []


async def test_a_self_authenticated_but_disabled_client_is_invalid_client():
    source = self_authenticating_clients(active=False)
    grant = SelfAuthenticatingGrant(source)
    with pytest.raises(InvalidClient):
        await GrantRunner(grant, source).handle(asserted())
    assert grant.calls == []


async def test_a_self_authenticated_client_not_registered_for_the_grant_is_unauthorized_client():
    source = self_authenticating_clients(grant_types=("client_credentials",))
    grant = SelfAuthenticatingGrant(source)
    with pytest.raises(UnauthorizedClient):
        await GrantRunner(grant, source).handle(asserted())
    assert grant.calls == []


@pytest.mark.parametrize("creds", [
    ClientCredentials(CLIENT_SECRET_BASIC, "app", "whatever"),        # a wrong secret is not ignored
    ClientCredentials(CLIENT_SECRET_BASIC, "other", "other-secret"),  # right secret, another client
    ClientCredentials(NONE, "other"),                                 # names another client
])
async def test_credentials_sent_with_a_self_authenticating_grant_are_verified_against_the_same_client(creds):
    source = self_authenticating_clients()
    grant = SelfAuthenticatingGrant(source)
    with pytest.raises(InvalidClient):
        await GrantRunner(grant, source).handle(asserted(creds=creds))
    assert grant.calls == []


@pytest.mark.parametrize("creds", [
    ClientCredentials(CLIENT_SECRET_BASIC, "app", SECRET),
    ClientCredentials(NONE, "app"),  # RFC 7521 §4.2: client_id may accompany the assertion
])
async def test_matching_credentials_sent_with_a_self_authenticating_grant_are_accepted(creds):
    source = self_authenticating_clients()
    grant = SelfAuthenticatingGrant(source)
    await GrantRunner(grant, source).handle(asserted(creds=creds))
    assert grant.calls[0][1].client_id == "app"


async def test_only_declared_parameters_reach_the_grant_and_only_repeatables_repeat():
    grant = ForgetfulGrant()
    await GrantRunner(grant, clients()).handle(request(
        scope=("a b",), resource=("https://r1", "https://r2"), audience=("x", "y"), password=("hunter2",)))
    seen = grant.calls[0][0]
    assert seen.values("resource") == ("https://r1", "https://r2")
    assert seen.values("audience") == ("x", "y")
    assert seen.param("scope") == "a b"
    assert "password" not in seen.params  # RFC 6749 §3.1: ignored
    assert seen.context.client_address == "192.0.2.7"


async def test_a_repeated_single_valued_parameter_is_invalid_request():
    grant = ForgetfulGrant()
    with pytest.raises(InvalidRequest):
        await GrantRunner(grant, clients()).handle(request(scope=("a", "b")))
    assert grant.calls == []


async def test_a_grant_type_the_service_does_not_serve_is_refused_before_any_lookup():
    source = clients()
    with pytest.raises(UnsupportedGrantType):
        await GrantRunner(ForgetfulGrant(), source).handle(request(grant_type="password"))
    assert source.lookups == []


async def test_unknown_client_ids_and_grant_types_are_audited_only_as_fingerprints():
    misplaced_secret = "Zq8w-very-secret-value-pasted-in-the-wrong-field"
    bus = FakeBus()
    runner = GrantRunner(ForgetfulGrant(), clients(), bus)
    with pytest.raises(InvalidClient):
        await runner.handle(request(client_id=misplaced_secret))
    with pytest.raises(UnsupportedGrantType):
        await runner.handle(request(grant_type=misplaced_secret))
    denied = [e.token_denied for e in bus.events(TOKEN_DENIED)]
    assert len(denied) == 2
    assert denied[0].client_id == redact.unverified(misplaced_secret)
    assert denied[1].grant_type == redact.unverified(misplaced_secret)
    assert misplaced_secret not in repr(denied)
    assert misplaced_secret[:8] not in repr(denied)


async def test_a_known_clients_id_is_audited_as_it_is():
    bus = FakeBus()
    with pytest.raises(InvalidClient):
        await GrantRunner(ForgetfulGrant(), clients(), bus).handle(request(secret="wrong"))
    assert bus.events(TOKEN_DENIED)[0].token_denied.client_id == "app"

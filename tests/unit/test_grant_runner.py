"""The grant runner: client authentication, the allowed-grant check and the parameter
allow-list run once, for every grant, before its handler; refusals are logged and
audited with caller-supplied identifiers fingerprinted."""
from __future__ import annotations

import pytest

from inboundlib import redact
from inboundlib.events import TOKEN_DENIED
from inboundlib.grants.api import GrantParameters, RequestContext, TokenRequest, TokenResponse
from inboundlib.grants.runner import GrantRunner
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, ClientCredentials, hash_client_secret
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
    grant_type = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    authenticates_client = True


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


async def test_a_grant_that_authenticates_its_client_itself_gets_no_record_and_no_lookup():
    grant = SelfAuthenticatingGrant()
    source = clients()
    await GrantRunner(grant, source).handle(request(grant_type=grant.grant_type, secret="whatever"))
    assert grant.calls[0][1] is None
    assert source.lookups == []


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

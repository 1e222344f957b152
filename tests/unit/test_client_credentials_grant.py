"""The client credentials grant's rules with in-memory fakes (no gRPC, no DB),
through the grant runner as in production (client authentication and the
grant-type check are the runner's; tests/unit/test_grant_runner.py).
The same paths run end to end in tests/integration/test_client_credentials.py."""
from __future__ import annotations

import logging

import pytest

from inboundlib import redact
from inboundlib.events import TOKEN_DENIED
from inboundlib.grants.api import TokenRequest
from inboundlib.grants.runner import GrantRunner
from inboundlib.oauth.client_auth import (
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_POST,
    NONE,
    ClientCredentials,
    hash_client_secret,
)
from inboundlib.oauth.errors import InvalidClient, InvalidScope, UnauthorizedClient
from services.client_credentials.grant import ClientCredentialsGrant
from services.client_registry.api import ClientRecord
from tests.fakes import FakeBus, FakeClients, FakeIssuer, client_record

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-s3cret-s3"


def record(**overrides) -> ClientRecord:
    return client_record(**{"secret_hash": hash_client_secret(SECRET), "scopes": ("read", "write"),
                            "token_format": "opaque", **overrides})


def request(method=CLIENT_SECRET_BASIC, client_id="app", secret=SECRET, **params) -> TokenRequest:
    return TokenRequest(grant_type="client_credentials",
                        client=ClientCredentials(method, client_id, secret) if method else None,
                        params={name: (value,) for name, value in params.items()})


def runner(client: ClientRecord, issuer: FakeIssuer) -> GrantRunner:
    return GrantRunner(ClientCredentialsGrant(issuer), FakeClients(client))


async def test_issues_with_the_clients_settings():
    issuer = FakeIssuer()
    response = await runner(record(token_endpoint_auth_method=CLIENT_SECRET_POST), issuer).handle(
        request(CLIENT_SECRET_POST, scope="read"))
    assert response.to_json() == {"access_token": "token-jti-1", "token_type": "Bearer", "expires_in": 900,
                                  "scope": "read"}
    assert issuer.requests[0].format == "opaque"
    assert issuer.requests[0].subject == "app"
    assert issuer.requests[0].scopes == ("read",)


async def test_no_scope_requested_grants_the_registered_scopes():
    issuer = FakeIssuer()
    response = await runner(record(), issuer).handle(request())
    assert response.scope == "read write"


@pytest.mark.parametrize("client,req,error", [
    (record(), request(secret="wrong"), InvalidClient),
    (record(), request(method=None), InvalidClient),
    (record(), request(client_id="other"), InvalidClient),
    (record(active=False), request(), InvalidClient),
    (record(), request(method=NONE, secret=""), InvalidClient),
    (record(public=True, secret_hash=""), request(method=NONE, secret=""), UnauthorizedClient),
    (record(grant_types=("password",)), request(), UnauthorizedClient),
    (record(), request(scope="read admin"), InvalidScope),
    (record(), request(scope='re"ad'), InvalidScope),
])
async def test_each_rule_refuses_and_issues_nothing(client, req, error):
    issuer = FakeIssuer()
    with pytest.raises(error):
        await runner(client, issuer).handle(req)
    assert issuer.requests == []


async def test_the_grant_itself_refuses_a_public_client_the_runner_let_through():
    """§4.4: confidential clients only — the grant's own rule, checked without the runner."""
    issuer = FakeIssuer()
    public = record(public=True, secret_hash="", grant_types=("client_credentials",))
    with pytest.raises(UnauthorizedClient):
        await ClientCredentialsGrant(issuer).handle(request(method=NONE, secret=""), public)
    assert issuer.requests == []


async def test_a_scope_the_client_may_not_have_is_neither_logged_nor_audited_verbatim(caplog):
    """A secret sent in `scope=` by a registered client: refused, and kept out of
    the log and the append-only audit table (only a fingerprint goes there)."""
    misplaced_secret = "Zq8w-very-secret-value-pasted-into-scope"
    bus = FakeBus()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InvalidScope):
        await GrantRunner(ClientCredentialsGrant(FakeIssuer()), FakeClients(record()), bus).handle(
            request(scope=f"read {misplaced_secret}"))
    denied = bus.events(TOKEN_DENIED)
    assert len(denied) == 1
    assert denied[0].token_denied.error == "invalid_scope"
    assert redact.unverified(misplaced_secret) in denied[0].token_denied.detail
    assert misplaced_secret[:8] not in repr(denied)
    assert caplog.records, "the refusal is logged"
    for entry in caplog.records:
        assert misplaced_secret[:8] not in entry.getMessage()
        assert misplaced_secret[:8] not in repr(vars(entry))

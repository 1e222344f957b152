"""The client credentials grant's rules with in-memory fakes (no gRPC, no DB).
The same paths run end to end in tests/integration/test_client_credentials.py."""
from __future__ import annotations

import dataclasses

import pytest

from inboundlib.grants.api import TokenRequest
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
from services.token_issuer.api import IssuedToken, IssueRequest

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-s3cret-s3"


def record(**overrides) -> ClientRecord:
    base = ClientRecord(
        client_id="app", name="app", secret_hash=hash_client_secret(SECRET), public=False,
        grant_types=("client_credentials",), scopes=("read", "write"), redirect_uris=(),
        access_token_lifetime=900, refresh_token_lifetime=86400, token_format="opaque", pkce_required=False,
        active=True, logo_url="", comments="", created_at=1, updated_at=1)
    return dataclasses.replace(base, **overrides)


class FakeClients:
    def __init__(self, *clients: ClientRecord):
        self.clients = {c.client_id: c for c in clients}

    async def get_client(self, client_id: str):
        return self.clients.get(client_id)


class FakeIssuer:
    def __init__(self):
        self.requests: list[IssueRequest] = []

    async def issue(self, request: IssueRequest) -> IssuedToken:
        self.requests.append(request)
        return IssuedToken(access_token="tok", expires_in=request.lifetime_seconds, jti="j", issued_at=0)


def request(method=CLIENT_SECRET_BASIC, client_id="app", secret=SECRET, **params) -> TokenRequest:
    return TokenRequest(grant_type="client_credentials",
                        client=ClientCredentials(method, client_id, secret) if method else None, params=params)


async def test_issues_with_the_clients_settings():
    issuer = FakeIssuer()
    grant = ClientCredentialsGrant(FakeClients(record()), issuer)
    response = await grant.handle(request(CLIENT_SECRET_POST, scope="read"))
    assert response.to_json() == {"access_token": "tok", "token_type": "Bearer", "expires_in": 900,
                                  "scope": "read"}
    assert issuer.requests[0].format == "opaque"
    assert issuer.requests[0].subject == "app"
    assert issuer.requests[0].scopes == ("read",)


async def test_no_scope_requested_grants_the_registered_scopes():
    issuer = FakeIssuer()
    response = await ClientCredentialsGrant(FakeClients(record()), issuer).handle(request())
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
        await ClientCredentialsGrant(FakeClients(client), issuer).handle(req)
    assert issuer.requests == []

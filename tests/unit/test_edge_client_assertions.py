"""The edge and client assertions (RFC 7523 §2.2): the forms carry them to the backends,
keys_pending is sent again within the request's budget and then 503, failed assertions
are throttled like failed secrets, and the metadata lists the methods and algorithms."""
from __future__ import annotations

import asyncio
import time
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from inboundlib.grants.api import GrantParameters, TokenResponse
from inboundlib.grants.runner import GrantRunner
from inboundlib.oauth.client_auth import (
    JWT_ASSERTION_TYPE,
    JWT_BEARER_GRANT_TYPE,
    PRIVATE_KEY_JWT,
    ClientAuthenticator,
)
from inboundlib.oauth.errors import InvalidClient
from services.edge.app import EdgeConfig, create_app
from services.edge.routes import oauth
from services.edge.routes.discovery import build_metadata
from services.edge.settings import EdgeSettings
from services.edge.throttle import ThrottleSettings
from tests.fakes import FakeClients, FakeGrant, FakeTokens, client_record

ISSUER = "https://as.example.com"
FORM = {"content-type": "application/x-www-form-urlencoded"}
KEY = ec.generate_private_key(ec.SECP256R1())


def assertion(client_id: str = "app") -> str:
    now = int(time.time())
    return jwt.encode({"iss": client_id, "sub": client_id, "aud": ISSUER + "/oauth/token", "iat": now,
                       "exp": now + 60, "jti": str(time.time_ns())}, KEY, algorithm="ES256")


def body(**params) -> bytes:
    return urlencode({"client_assertion_type": JWT_ASSERTION_TYPE, "client_assertion": assertion(),
                      **params}).encode()


def edge(grant=None, tokens=None, **settings) -> httpx.AsyncClient:
    config = EdgeConfig(issuer=ISSUER, grants={"client_credentials": grant or FakeGrant()},
                        jwks=lambda: asyncio.sleep(0, {"keys": []}), tokens=tokens or FakeTokens(),
                        settings=EdgeSettings(**settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(config), client=("198.51.100.9", 1)),
                             base_url="http://edge.internal")


async def test_the_token_endpoint_passes_the_assertion_on():
    grant = FakeGrant()
    token = assertion()
    async with edge(grant) as http:
        reply = await http.post("/oauth/token", headers=FORM, content=urlencode({
            "grant_type": "client_credentials", "client_assertion_type": JWT_ASSERTION_TYPE,
            "client_assertion": token}).encode())
    assert reply.status_code == 200
    [request] = grant.requests
    assert (request.client.method, request.client.client_id, request.client.client_assertion) == (
        PRIVATE_KEY_JWT, "app", token)
    assert "client_assertion" not in request.params and "client_assertion_type" not in request.params


@pytest.mark.parametrize("path", ["/oauth/introspect", "/oauth/revoke", "/oauth_revoke_token.do"])
async def test_introspection_and_revocation_pass_the_assertion_and_their_url_on(path):
    tokens = FakeTokens()
    async with edge(tokens=tokens) as http:
        reply = await http.post(path, headers=FORM, content=body(token="t"))
    assert reply.status_code == 200
    [(_, caller, *_)] = tokens.introspected or tokens.revoked
    assert caller.method == PRIVATE_KEY_JWT
    assert tokens.endpoint_urls == [ISSUER + path]


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
async def test_keys_pending_is_sent_again_until_answered(path):
    grant, tokens = FakeGrant(pending=2), FakeTokens(pending=2)
    async with edge(grant, tokens) as http:
        reply = await http.post(path, headers=FORM, content=body(grant_type="client_credentials", token="t"))
    assert reply.status_code == 200
    assert len(grant.requests) + len(tokens.endpoint_urls) == 3, "the same request, three times"


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
async def test_keys_pending_until_the_budget_ends_is_503_with_retry_after(path):
    grant, tokens = FakeGrant(pending=10**6), FakeTokens(pending=10**6)
    async with edge(grant, tokens, request_timeout=0.3) as http:
        reply = await http.post(path, headers=FORM, content=body(grant_type="client_credentials", token="t"))
    assert reply.status_code == 503
    assert reply.json()["error"] == "temporarily_unavailable"
    assert reply.headers["retry-after"].isdigit()
    sent = len(grant.requests) + len(tokens.endpoint_urls)
    assert 1 < sent < 20, "sent again with a growing back-off, not in a tight loop"


async def test_keys_pending_waits_double_up_to_the_longest(monkeypatch):
    waits = []
    real_sleep = asyncio.sleep

    async def sleep(seconds, *args):
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(oauth.asyncio, "sleep", sleep)
    async with edge(FakeGrant(pending=8)) as http:
        reply = await http.post("/oauth/token", headers=FORM, content=body(grant_type="client_credentials"))
    assert reply.status_code == 200
    assert waits == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.32, 0.32]


class Grant:
    grant_type = "client_credentials"
    parameters = GrantParameters()
    authenticates_client = False

    async def handle(self, request, client):
        return TokenResponse(access_token="t", token_type="Bearer", expires_in=60)


class Refusing:
    async def verify_client_assertion(self, item):
        raise InvalidClient(detail="bad signature")


async def test_failed_assertions_are_throttled_by_the_client_id_they_name():
    clients = FakeClients(client_record(client_id="app", token_endpoint_auth_method=PRIVATE_KEY_JWT))
    runner = GrantRunner(Grant(), ClientAuthenticator(clients, verifier=Refusing()))
    async with edge(runner, auth_throttle=ThrottleSettings(burst=3)) as http:
        answers = [(await http.post("/oauth/token", headers=FORM, content=body(grant_type="client_credentials")))
                   for _ in range(4)]
    assert [a.status_code for a in answers] == [401, 401, 401, 429]


# --- metadata -------------------------------------------------------------------------------------

def test_metadata_lists_jwt_client_authentication_where_jwt_bearer_is_served():
    metadata = build_metadata(ISSUER, ["client_credentials", JWT_BEARER_GRANT_TYPE,
                                       "urn:ietf:params:oauth:grant-type:token-exchange"])
    assert {JWT_BEARER_GRANT_TYPE, "urn:ietf:params:oauth:grant-type:token-exchange"} <= set(
        metadata["grant_types_supported"])
    for endpoint in ("token", "introspection", "revocation"):
        methods = metadata[f"{endpoint}_endpoint_auth_methods_supported"]
        assert {"private_key_jwt", "client_secret_jwt", "client_secret_basic"} <= set(methods)
        algs = metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
        assert {"RS256", "ES256", "EdDSA", "HS256"} <= set(algs) and "none" not in algs
        assert not {"HS384", "HS512"} & set(algs), "a 256-bit client secret is too short for them"
    assert "none" in metadata["token_endpoint_auth_methods_supported"]
    assert "none" not in metadata["introspection_endpoint_auth_methods_supported"]


def test_metadata_without_jwt_bearer_lists_no_jwt_client_authentication():
    metadata = build_metadata(ISSUER, ["client_credentials"])
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert "private_key_jwt" not in metadata["token_endpoint_auth_methods_supported"]
    assert not [name for name in metadata if name.endswith("_auth_signing_alg_values_supported")]

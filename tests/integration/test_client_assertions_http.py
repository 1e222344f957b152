"""Client authentication by JWT (RFC 7523 §2.2) through the running system, in both modes:
private_key_jwt (the client's inline JWKS) and client_secret_jwt (its sealed secret) at the
token, introspection and revocation endpoints, verified by jwt_bearer; a replayed assertion,
another client's method and a wrong audience refused. Rule-by-rule negatives are unit tests
(tests/unit/test_client_assertions_verify.py)."""
from __future__ import annotations

import json
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from inboundlib.oauth.client_auth import CLIENT_SECRET_JWT, JWT_ASSERTION_TYPE, PRIVATE_KEY_JWT

pytestmark = pytest.mark.both_modes

KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = json.dumps({"keys": [{**json.loads(ECAlgorithm.to_jwk(KEY.public_key())), "kid": "k1", "use": "sig"}]})


def assertion(client_id: str, aud: str, *, key=KEY, alg: str = "ES256", **claims) -> str:
    now = int(time.time())
    return jwt.encode({"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 60,
                       "jti": str(uuid.uuid4()), **claims}, key, algorithm=alg,
                      headers={"kid": "k1"} if alg == "ES256" else None)


def form(signed: str, **params) -> dict:
    return {"client_assertion_type": JWT_ASSERTION_TYPE, "client_assertion": signed, **params}


@pytest.fixture(scope="module")
async def pk_client(registry):
    from services.client_registry.api import ClientSpec
    from tests.support import ensure_scopes

    await ensure_scopes(registry, ["api.read"])
    client, _ = await registry.create_client(ClientSpec(
        name="pk-jwt", grant_types=["client_credentials"], scopes=["api.read"], token_format="opaque",
        token_endpoint_auth_method=PRIVATE_KEY_JWT, jwks=JWKS))
    return client


@pytest.fixture(scope="module")
async def cs_client(registry):
    from services.client_registry.api import ClientSpec
    from tests.support import ensure_scopes

    await ensure_scopes(registry, ["api.read"])
    return await registry.create_client(ClientSpec(
        name="cs-jwt", grant_types=["client_credentials"], scopes=["api.read"],
        token_endpoint_auth_method=CLIENT_SECRET_JWT))


async def post(stack, path: str, data: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        return await http.post(path, data=data)


async def test_private_key_jwt_at_the_token_introspection_and_revocation_endpoints(stack, pk_client):
    cid = pk_client.client_id
    reply = await post(stack, "/oauth/token", form(assertion(cid, stack.edge_url + "/oauth/token"),
                                                   grant_type="client_credentials", scope="api.read"))
    assert reply.status_code == 200, reply.text
    token = reply.json()["access_token"]

    # aud: the introspection endpoint's own URL.
    reply = await post(stack, "/oauth/introspect", form(assertion(cid, stack.edge_url + "/oauth/introspect"),
                                                        token=token))
    assert reply.status_code == 200, reply.text
    assert reply.json()["active"] is True and reply.json()["client_id"] == cid

    # aud: the issuer identifier, accepted everywhere.
    reply = await post(stack, "/oauth/revoke", form(assertion(cid, stack.edge_url), token=token))
    assert reply.status_code == 200, reply.text
    reply = await post(stack, "/oauth/introspect", form(assertion(cid, stack.edge_url), token=token))
    assert reply.json() == {"active": False}


async def test_client_secret_jwt_at_the_token_introspection_and_revocation_endpoints(stack, cs_client):
    client, secret = cs_client
    cid = client.client_id

    def signed(aud):
        return assertion(cid, aud, key=secret.encode(), alg="HS256")

    reply = await post(stack, "/oauth/token", form(signed(stack.edge_url + "/oauth/token"),
                                                   grant_type="client_credentials"))
    assert reply.status_code == 200, reply.text
    token = reply.json()["access_token"]
    reply = await post(stack, "/oauth/introspect", form(signed(stack.edge_url + "/oauth/introspect"), token=token))
    assert reply.status_code == 200 and reply.json()["active"] is True
    reply = await post(stack, "/oauth/revoke", form(signed(stack.edge_url + "/oauth/revoke"), token=token))
    assert reply.status_code == 200, reply.text


async def test_a_replayed_assertion_is_invalid_client(stack, pk_client):
    token = assertion(pk_client.client_id, stack.edge_url + "/oauth/token")
    data = form(token, grant_type="client_credentials")
    assert (await post(stack, "/oauth/token", data)).status_code == 200
    reply = await post(stack, "/oauth/token", data)
    assert reply.status_code == 401 and reply.json()["error"] == "invalid_client"
    assert reply.headers["www-authenticate"].startswith("Basic ")


async def test_an_assertion_for_another_server_is_invalid_client(stack, pk_client):
    reply = await post(stack, "/oauth/token", form(assertion(pk_client.client_id, "https://elsewhere.example/token"),
                                                   grant_type="client_credentials"))
    assert reply.status_code == 401 and reply.json()["error"] == "invalid_client"


async def test_a_private_key_jwt_client_cannot_use_another_method(stack, pk_client, cs_client):
    # Its own id in an HS256 assertion (client_secret_jwt) is refused before any key is looked at.
    reply = await post(stack, "/oauth/token", form(assertion(pk_client.client_id, stack.edge_url + "/oauth/token",
                                                             key=b"x" * 32, alg="HS256"),
                                                   grant_type="client_credentials"))
    assert reply.status_code == 401 and reply.json()["error"] == "invalid_client"
    # The client_secret_jwt client's secret is no Basic secret.
    client, secret = cs_client
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        reply = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                auth=(client.client_id, secret))
    assert reply.status_code == 401 and reply.json()["error"] == "invalid_client"


async def test_metadata_lists_the_jwt_methods(stack):
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
    for endpoint in ("token", "introspection", "revocation"):
        assert {PRIVATE_KEY_JWT, CLIENT_SECRET_JWT} <= set(metadata[f"{endpoint}_endpoint_auth_methods_supported"])
        assert "ES256" in metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
    assert "urn:ietf:params:oauth:grant-type:jwt-bearer" in metadata["grant_types_supported"]

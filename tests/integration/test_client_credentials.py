"""The client credentials grant end to end: HTTP edge -> gRPC grant service ->
token_issuer -> client_registry/Postgres, every part a real process, and the
same through the one-process mode."""
from __future__ import annotations

import asyncio
import base64
import time

import httpx
import jwt
import pytest

from tests.support import eventually

pytestmark = pytest.mark.both_modes

TOKEN = "/oauth/token"


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def _token(stack, data, headers=None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        return await http.post(TOKEN, data=data, headers=headers or {})


async def test_basic_auth_gets_a_jwt_that_verifies_against_the_published_jwks(stack, make_client):
    client, secret = await make_client(scopes=["api.read", "api.write"])
    reply = await _token(stack, {"grant_type": "client_credentials"}, basic(client.client_id, secret))
    assert reply.status_code == 200, reply.text
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["pragma"] == "no-cache"
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1800
    assert body["scope"] == "api.read api.write"
    assert "refresh_token" not in body  # RFC 6749 §4.4.3

    # RFC 9068: verify with the JWKS at the address the metadata names.
    metadata = httpx.get(stack.edge_url + "/.well-known/oauth-authorization-server").json()
    jwks = jwt.PyJWKClient(metadata["jwks_uri"])
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt"
    claims = jwt.decode(body["access_token"], jwks.get_signing_key_from_jwt(body["access_token"]).key,
                        algorithms=["ES256"], audience=stack.edge_url + "/api", issuer=stack.edge_url)
    assert claims["sub"] == client.client_id
    assert claims["client_id"] == client.client_id
    assert claims["scope"] == "api.read api.write"
    assert claims["exp"] - claims["iat"] == 1800
    assert abs(claims["iat"] - time.time()) < 60
    assert len(claims["jti"]) >= 16


async def test_client_secret_post_and_the_servicenow_alias(stack, make_client):
    client, secret = await make_client(auth_method="client_secret_post")
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        reply = await http.post("/oauth_token.do", data={"grant_type": "client_credentials", "scope": "api.read",
                                                         "client_id": client.client_id, "client_secret": secret})
    assert reply.status_code == 200, reply.text
    assert reply.json()["scope"] == "api.read"


async def test_scope_is_narrowed_and_never_widened(stack, make_client):
    client, secret = await make_client(scopes=["api.read"])
    narrowed = await _token(stack, {"grant_type": "client_credentials", "scope": "api.read"},
                            basic(client.client_id, secret))
    assert narrowed.json()["scope"] == "api.read"
    widened = await _token(stack, {"grant_type": "client_credentials", "scope": "api.read admin"},
                           basic(client.client_id, secret))
    assert widened.status_code == 400
    assert widened.json()["error"] == "invalid_scope"


async def test_client_lifespan_and_opaque_format(stack, make_client):
    client, secret = await make_client(token_format="opaque", access_token_lifetime=60)
    reply = await _token(stack, {"grant_type": "client_credentials"}, basic(client.client_id, secret))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["expires_in"] == 60
    assert body["access_token"].count(".") == 0  # not a JWT
    assert len(body["access_token"]) >= 43  # 256 bits


async def test_opaque_tokens_are_stored_hashed(stack, make_client):
    import hashlib

    import asyncpg

    client, secret = await make_client(token_format="opaque")
    token = (await _token(stack, {"grant_type": "client_credentials"},
                          basic(client.client_id, secret))).json()["access_token"]
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("SELECT token_hash, client_id FROM opaque_tokens WHERE client_id = $1",
                                client.client_id)
        dump = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM opaque_tokens t")
    finally:
        await conn.close()
    assert [bytes(r["token_hash"]) for r in rows] == [hashlib.sha256(token.encode()).digest()]
    assert token not in dump


async def test_grant_not_allowed_for_client_is_unauthorized_client(stack, make_client):
    client, secret = await make_client(grant_types=["password"])
    reply = await _token(stack, {"grant_type": "client_credentials"}, basic(client.client_id, secret))
    assert reply.status_code == 400
    assert reply.json()["error"] == "unauthorized_client"


async def test_public_client_cannot_use_client_credentials(stack, make_client):
    client, _ = await make_client(public=True, grant_types=["authorization_code"],
                                  redirect_uris=["https://app.example/cb"])
    reply = await _token(stack, {"grant_type": "client_credentials", "client_id": client.client_id})
    assert reply.status_code == 400
    assert reply.json()["error"] == "unauthorized_client"


async def test_a_disabled_client_is_refused_although_it_was_cached(stack, registry, make_client):
    # (How fast: tests/slo/test_propagation.py.)
    from services.client_registry.api import ClientUpdate

    client, secret = await make_client()
    ok = await _token(stack, {"grant_type": "client_credentials"}, basic(client.client_id, secret))
    assert ok.status_code == 200  # now cached in the grant service
    await registry.update_client(client.client_id, ClientUpdate(active=False))
    reply = await eventually(lambda: _token(stack, {"grant_type": "client_credentials"},
                                            basic(client.client_id, secret)),
                             until=lambda r: r.status_code == 401, message="the disabled client refused")
    assert reply.json()["error"] == "invalid_client"


async def test_rotated_secret_replaces_the_old_one(stack, registry, make_client):
    client, old = await make_client()
    assert (await _token(stack, {"grant_type": "client_credentials"}, basic(client.client_id, old))).status_code == 200
    _, new = await registry.rotate_client_secret(client.client_id)
    await eventually(lambda: _token(stack, {"grant_type": "client_credentials"}, basic(client.client_id, old)),
                     until=lambda r: r.status_code == 401, message="the old secret refused")
    fresh = await _token(stack, {"grant_type": "client_credentials"}, basic(client.client_id, new))
    assert fresh.status_code == 200


async def test_deleted_client_is_refused(stack, registry, make_client):
    client, secret = await make_client()
    assert (await _token(stack, {"grant_type": "client_credentials"},
                         basic(client.client_id, secret))).status_code == 200
    assert await registry.delete_client(client.client_id)
    await eventually(lambda: _token(stack, {"grant_type": "client_credentials"}, basic(client.client_id, secret)),
                     until=lambda r: r.status_code == 401, message="the deleted client refused")


def _batch_metric(stack, suffix: str) -> float:
    text = httpx.get(stack.metrics_url("edge")).text
    prefix = f'inbound_batch_size_{suffix}{{call="grant.Token[client_credentials]"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


@pytest.mark.separate_processes  # batches form on the gRPC hop to the grant service
async def test_concurrent_requests_are_batched_and_all_answered(stack, make_client):
    client, secret = await make_client()
    calls_before, items_before = _batch_metric(stack, "count"), _batch_metric(stack, "sum")
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=20,
                                 limits=httpx.Limits(max_connections=64)) as http:
        replies = await asyncio.gather(*(
            http.post(TOKEN, data={"grant_type": "client_credentials"}, headers=basic(client.client_id, secret))
            for _ in range(200)))
    assert [r.status_code for r in replies] == [200] * 200
    assert len({r.json()["access_token"] for r in replies}) == 200
    calls = _batch_metric(stack, "count") - calls_before
    items = _batch_metric(stack, "sum") - items_before
    assert items == 200  # every request went to the grant service exactly once
    assert calls < items  # and some of them shared a call: batches formed under load

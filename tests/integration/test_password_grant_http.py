"""The password grant (RFC 6749 §4.3) end to end: HTTP POST /oauth/token -> the
edge -> the password service -> client_registry's AuthenticateUsers (argon2id,
Postgres) -> token_issuer, every part a real process, and the same through the
one-process mode. Lockouts, with thresholds of their own, are in
tests/integration/test_password_secrets.py."""
from __future__ import annotations

import secrets

import httpx
import jwt
import pytest

from services.client_registry.api import UserSpec, UserUpdate
from tests.support import eventually

pytestmark = pytest.mark.both_modes

TOKEN = "/oauth/token"
METADATA = "/.well-known/oauth-authorization-server"


@pytest.fixture
async def make_user(registry):
    """Create a user with a password; returns (record, password)."""

    async def make(**kwargs):
        password = kwargs.pop("password", None) or "pw-" + secrets.token_urlsafe(12)
        spec = UserSpec(username=kwargs.pop("username", "user-" + secrets.token_hex(4)), password=password, **kwargs)
        return await registry.create_user(spec), password

    return make


@pytest.fixture
async def password_client(make_client):
    async def make(**kwargs):
        kwargs.setdefault("grant_types", ["password"])
        return await make_client(**kwargs)

    return make


async def _post(stack, data, auth=None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        return await http.post(TOKEN, data=data, auth=auth)


@pytest.fixture
async def introspect(stack, make_client):
    """RFC 7662 through the edge, as a resource server."""
    resource_server, secret = await make_client(scopes=["inbound.introspect"])

    async def call(token: str) -> dict:
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
            reply = await http.post("/oauth/introspect", data={"token": token},
                                    auth=(resource_server.client_id, secret))
        assert reply.status_code == 200, reply.text
        return reply.json()

    return call


def _password(user, password: str, **extra) -> dict:
    return {"grant_type": "password", "username": user.username, "password": password, **extra}


async def test_a_user_gets_a_jwt_for_themself(stack, introspect, password_client, make_user):
    client, secret = await password_client(scopes=["api.read", "api.write"])
    user, password = await make_user()
    reply = await _post(stack, _password(user, password, scope="api.read"), (client.client_id, secret))
    assert reply.status_code == 200, reply.text
    assert reply.headers["cache-control"] == "no-store"
    body = reply.json()
    assert body["scope"] == "api.read"
    assert "refresh_token" not in body, "the client may not use the refresh_token grant"

    metadata = httpx.get(stack.edge_url + METADATA).json()
    key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(body["access_token"]).key
    claims = jwt.decode(body["access_token"], key, algorithms=["ES256"], audience=stack.edge_url + "/api",
                        issuer=stack.edge_url)
    assert claims["sub"] == user.id != user.username
    assert claims["username"] == user.username
    assert claims["client_id"] == client.client_id
    assert claims["scope"] == "api.read"

    info = await introspect(body["access_token"])
    assert info["active"] is True
    assert (info["sub"], info["username"], info["client_id"]) == (user.id, user.username, client.client_id)


async def test_the_username_is_case_insensitive_and_the_token_carries_the_stored_one(stack, password_client,
                                                                                      make_user, introspect):
    client, secret = await password_client(token_format="opaque")
    user, password = await make_user(username="Mixed-" + secrets.token_hex(3))
    reply = await _post(stack, {"grant_type": "password", "username": user.username.upper(), "password": password},
                        (client.client_id, secret))
    assert reply.status_code == 200, reply.text
    info = await introspect(reply.json()["access_token"])
    assert (info["sub"], info["username"]) == (user.id, user.username)


async def test_a_refresh_token_when_the_client_may_refresh(stack, introspect, password_client, make_user):
    client, secret = await password_client(grant_types=["password", "refresh_token"], token_format="opaque")
    user, password = await make_user()
    reply = await _post(stack, _password(user, password), (client.client_id, secret))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["refresh_token"] and body["refresh_token"] != body["access_token"]
    info = await introspect(body["refresh_token"])
    assert info["active"] is True
    assert (info["sub"], info["username"], info["client_id"]) == (user.id, user.username, client.client_id)
    assert info["token_type"] == "refresh_token"


async def test_wrong_password_unknown_user_and_disabled_user_answer_byte_identical_errors(
        stack, registry, password_client, make_user):
    """§5.2 invalid_grant, and not a byte more: the answer does not tell whether the
    username exists, or whether its account is disabled."""
    client, secret = await password_client()
    user, password = await make_user()
    disabled, disabled_password = await make_user()
    await registry.update_user(disabled.id, UserUpdate(active=False))
    auth = (client.client_id, secret)
    replies = [
        await _post(stack, _password(user, password + "x"), auth),
        await _post(stack, {"grant_type": "password", "username": "nobody-" + secrets.token_hex(4),
                            "password": password}, auth),
        await _post(stack, _password(disabled, disabled_password), auth),
    ]
    assert [r.status_code for r in replies] == [400, 400, 400]
    assert replies[0].json()["error"] == "invalid_grant"
    assert replies[0].content == replies[1].content == replies[2].content
    assert {r.headers.get("content-type") for r in replies} == {"application/json"}
    # The right password still works for the enabled user (nothing above locked it).
    assert (await _post(stack, _password(user, password), auth)).status_code == 200


async def test_missing_credentials_are_invalid_request(stack, password_client, make_user):
    client, secret = await password_client()
    user, password = await make_user()
    for data in ({"grant_type": "password", "username": user.username},
                 {"grant_type": "password", "password": password}):
        reply = await _post(stack, data, (client.client_id, secret))
        assert reply.status_code == 400
        assert reply.json()["error"] == "invalid_request"


async def test_a_client_without_the_grant_is_unauthorized(stack, make_client, make_user):
    client, secret = await make_client(grant_types=["client_credentials"])
    user, password = await make_user()
    reply = await _post(stack, _password(user, password), (client.client_id, secret))
    assert reply.status_code == 400
    assert reply.json()["error"] == "unauthorized_client"


async def test_a_public_client_only_when_the_operator_allows_it(stack, password_client, make_user):
    user, password = await make_user()
    refused, _ = await password_client(public=True)
    reply = await _post(stack, _password(user, password, client_id=refused.client_id))
    assert reply.status_code == 400
    assert reply.json()["error"] == "unauthorized_client"

    allowed, _ = await password_client(public=True, allow_public_password_grant=True)
    reply = await _post(stack, _password(user, password, client_id=allowed.client_id))
    assert reply.status_code == 200, reply.text


async def test_a_scope_beyond_the_clients_is_invalid_scope(stack, password_client, make_user):
    client, secret = await password_client(scopes=["api.read"])
    user, password = await make_user()
    reply = await _post(stack, _password(user, password, scope="api.read api.write"), (client.client_id, secret))
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_scope"


async def test_a_password_change_ends_the_tokens_the_old_one_got(stack, registry, introspect, password_client,
                                                                 make_user):
    """Every token the user holds: the access token and the refresh token, which would
    otherwise go on minting access tokens for months after the password changed."""
    client, secret = await password_client(grant_types=["password", "refresh_token"])
    user, password = await make_user()
    auth = (client.client_id, secret)
    granted = (await _post(stack, _password(user, password), auth)).json()
    token, refresh_token = granted["access_token"], granted["refresh_token"]
    assert (await introspect(token))["active"] is True

    new_password = "new-" + secrets.token_urlsafe(12)
    await registry.set_user_password(user.id, new_password)
    await eventually(lambda: introspect(token), until=lambda info: info == {"active": False},
                     message="the token issued before the password change is inactive")
    assert (await introspect(refresh_token)) == {"active": False}
    refreshed = await _post(stack, {"grant_type": "refresh_token", "refresh_token": refresh_token}, auth)
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant", refreshed.text
    assert (await _post(stack, _password(user, password), auth)).json()["error"] == "invalid_grant"
    fresh = await _post(stack, _password(user, new_password), auth)
    assert fresh.status_code == 200, fresh.text
    assert (await introspect(fresh.json()["access_token"]))["active"] is True


def test_the_metadata_lists_the_password_grant(stack):
    metadata = httpx.get(stack.edge_url + METADATA).json()
    assert "password" in metadata["grant_types_supported"]

"""RFC 7662 introspection and RFC 7009 revocation through the edge and over gRPC,
against the separate processes and the one-process mode."""
from __future__ import annotations

import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.client_registry.api import ClientUpdate
from services.token_issuer.api import IssueRequest
from tests.support import eventually

pytestmark = pytest.mark.both_modes

FIELDS = {"active", "scope", "client_id", "sub", "token_type", "exp", "iat", "iss", "aud", "jti"}


@pytest.fixture(scope="module")
async def resource_server(registry):
    from services.client_registry.api import ClientSpec
    from tests.support import ensure_scopes

    await ensure_scopes(registry, ["inbound.introspect"])
    return await registry.create_client(ClientSpec(name="resource-server", grant_types=["client_credentials"],
                                                   scopes=["inbound.introspect"]))


async def get_token(stack, client, secret, **data) -> dict:
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        reply = await http.post("/oauth/token", data={"grant_type": "client_credentials", **data},
                                auth=(client.client_id, secret))
    assert reply.status_code == 200, reply.text
    return reply.json()


async def introspect(stack, caller, token: str, path: str = "/oauth/introspect") -> httpx.Response:
    client, secret = caller
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        return await http.post(path, data={"token": token}, auth=(client.client_id, secret))


async def revoke(stack, caller, token: str, path: str = "/oauth/revoke", **extra) -> httpx.Response:
    client, secret = caller
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        return await http.post(path, data={"token": token, **extra}, auth=(client.client_id, secret))


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
async def test_an_active_token_answers_every_field(stack, make_client, resource_server, token_format):
    client, secret = await make_client(token_format=token_format, scopes=["api.read", "api.write"])
    token = (await get_token(stack, client, secret, scope="api.read"))["access_token"]
    reply = await introspect(stack, resource_server, token)
    assert reply.status_code == 200
    assert reply.headers["cache-control"] == "no-store"
    info = reply.json()
    assert FIELDS <= set(info)
    assert info["active"] is True
    assert info["scope"] == "api.read"
    assert info["client_id"] == client.client_id == info["sub"]
    assert info["token_type"] == "Bearer"
    assert info["iss"] == stack.edge_url
    assert info["aud"] == stack.edge_url + "/api"
    assert info["exp"] - info["iat"] == 1800


async def test_without_the_introspection_scope_a_client_sees_only_its_own_tokens(stack, make_client):
    owner = await make_client()
    other = await make_client()
    token = (await get_token(stack, *owner))["access_token"]
    assert (await introspect(stack, owner, token)).json()["active"] is True
    assert (await introspect(stack, other, token)).json() == {"active": False}


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "ibo_" + "x" * 43, "x" * 9000])
async def test_unknown_tokens_are_inactive_and_say_nothing_else(stack, resource_server, token):
    reply = await introspect(stack, resource_server, token)
    if token == "":
        assert reply.status_code == 400 and reply.json()["error"] == "invalid_request"  # empty = omitted
        return
    assert reply.status_code == 200
    assert reply.json() == {"active": False}


async def test_a_forged_jwt_is_inactive(stack, make_client, resource_server):
    client, secret = await make_client()
    real = (await get_token(stack, client, secret))["access_token"]
    header = jwt.get_unverified_header(real)
    claims = jwt.decode(real, options={"verify_signature": False})
    forged = jwt.encode({**claims, "scope": "admin"}, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                        headers={"kid": header["kid"], "typ": "at+jwt"})
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": header["kid"], "typ": "at+jwt"})
    no_typ = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"kid": header["kid"]})
    for token in (forged, unsigned, no_typ):
        assert (await introspect(stack, resource_server, token)).json() == {"active": False}


async def test_an_expired_token_is_inactive(stack, issuer, make_client, resource_server):
    client, _ = await make_client()
    issued = await issuer.issue(IssueRequest(client_id=client.client_id, subject=client.client_id, scopes=(),
                                             format="jwt", lifetime_seconds=2))
    # Introspected (and so cached as verified) while active, then again once expired.
    exp = jwt.decode(issued.access_token, options={"verify_signature": False})["exp"]
    assert (await introspect(stack, resource_server, issued.access_token)).json()["active"] is True
    await eventually(lambda: _json(introspect(stack, resource_server, issued.access_token)),
                     until=lambda body: body == {"active": False}, message="the token inactive once expired")
    assert time.time() >= exp  # inactive because it expired, not before


async def test_introspection_needs_an_authenticated_confidential_client(stack, make_client, resource_server):
    client, secret = await make_client()
    token = (await get_token(stack, client, secret))["access_token"]
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        anonymous = await http.post("/oauth/introspect", data={"token": token})
        wrong = await http.post("/oauth/introspect", data={"token": token}, auth=(client.client_id, "nope"))
        missing = await http.post("/oauth/introspect", data={}, auth=(client.client_id, secret))
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert wrong.headers["www-authenticate"].startswith("Basic")
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    spa, _ = await make_client(public=True, grant_types=["authorization_code"], redirect_uris=["https://a.example/cb"])
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        public = await http.post("/oauth/introspect", data={"token": token, "client_id": spa.client_id})
    assert public.status_code == 400 and public.json()["error"] == "unauthorized_client"
    assert token not in anonymous.text + wrong.text + public.text


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
@pytest.mark.parametrize("path", ["/oauth/revoke", "/oauth_revoke_token.do"])
async def test_a_revoked_access_token_is_inactive(stack, make_client, resource_server, token_format, path):
    client, secret = await make_client(token_format=token_format)
    token = (await get_token(stack, client, secret))["access_token"]
    other = (await get_token(stack, client, secret))["access_token"]
    reply = await revoke(stack, (client, secret), token, path, token_type_hint="access_token")
    assert reply.status_code == 200
    assert reply.headers["cache-control"] == "no-store"
    assert (await introspect(stack, resource_server, token)).json() == {"active": False}
    assert (await introspect(stack, resource_server, other)).json()["active"] is True  # only that token


async def test_revoking_an_unknown_token_answers_200(stack, make_client):
    caller = await make_client()
    assert (await revoke(stack, caller, "never-issued")).status_code == 200
    assert (await revoke(stack, caller, "never-issued", token_type_hint="refresh_token")).status_code == 200


async def test_revocation_errors(stack, make_client, resource_server):
    client, secret = await make_client()
    token = (await get_token(stack, client, secret))["access_token"]
    other = (await get_token(stack, client, secret))["access_token"]
    odd_hint = await revoke(stack, (client, secret), other, token_type_hint="id_token")
    assert odd_hint.status_code == 200  # RFC 7009 §2.1: an unknown hint is ignored, the search goes on
    assert (await introspect(stack, resource_server, other)).json() == {"active": False}
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        anonymous = await http.post("/oauth/revoke", data={"token": token})
        no_token = await http.post("/oauth/revoke", data={}, auth=(client.client_id, secret))
        get = await http.get("/oauth/revoke")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
    assert no_token.status_code == 400 and no_token.json()["error"] == "invalid_request"
    assert get.status_code == 405
    # RFC 7009 §2.1: only the client the token was issued to may revoke it.
    stranger = await revoke(stack, resource_server, token)
    assert stranger.status_code == 400 and stranger.json()["error"] == "unauthorized_client"
    assert (await introspect(stack, resource_server, token)).json()["active"] is True


async def test_revoking_a_refresh_token_revokes_the_access_tokens_issued_from_it(
        stack, issuer, make_client, resource_server):
    client, secret = await make_client()
    first = await issuer.issue(IssueRequest(client_id=client.client_id, subject="alice", scopes=("api.read",),
                                            format="jwt", lifetime_seconds=600, refresh_token_lifetime=3600,
                                            grant_type="authorization_code"))
    assert first.refresh_token.startswith("ibr_") and first.grant_id
    second = await issuer.issue(IssueRequest(client_id=client.client_id, subject="alice", scopes=("api.read",),
                                             format="opaque", lifetime_seconds=600, grant_id=first.grant_id))
    unrelated = await issuer.issue(IssueRequest(client_id=client.client_id, subject="bob", scopes=(),
                                                format="jwt", lifetime_seconds=600))
    refresh_info = (await introspect(stack, resource_server, first.refresh_token)).json()
    assert refresh_info["active"] is True and refresh_info["token_type"] == "refresh_token"

    assert (await revoke(stack, (client, secret), first.refresh_token,
                         token_type_hint="refresh_token")).status_code == 200
    for token in (first.refresh_token, first.access_token, second.access_token):
        assert (await introspect(stack, resource_server, token)).json() == {"active": False}
    assert (await introspect(stack, resource_server, unrelated.access_token)).json()["active"] is True


async def test_disabling_or_deleting_a_client_makes_its_tokens_inactive(stack, registry, make_client,
                                                                         resource_server):
    client, secret = await make_client()
    token = (await get_token(stack, client, secret))["access_token"]
    await registry.update_client(client.client_id, ClientUpdate(active=False))
    await _eventually(lambda: introspect(stack, resource_server, token), {"active": False})
    # Enabling it again (after a secret rotation, say) does not bring old tokens back.
    await registry.update_client(client.client_id, ClientUpdate(active=True))
    fresh = (await _eventually_token(stack, client, secret))["access_token"]
    await _eventually(lambda: introspect(stack, resource_server, fresh), None)
    assert (await introspect(stack, resource_server, token)).json() == {"active": False}
    await registry.delete_client(client.client_id)
    await _eventually(lambda: introspect(stack, resource_server, fresh), {"active": False})


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
async def test_enabling_a_client_does_not_bring_back_tokens_minted_while_it_was_disabled(
        stack, registry, issuer, make_client, resource_server, token_format):
    client, secret = await make_client(token_format=token_format)
    await registry.update_client(client.client_id, ClientUpdate(active=False))
    # A request authenticated before the disable (or served from a cache not yet told)
    # still reaches the issuer, which does not check the client: stamped after the cut-off.
    late = await issuer.issue(IssueRequest(client_id=client.client_id, subject=client.client_id,
                                           scopes=("api.read",), format=token_format, lifetime_seconds=600))
    await _eventually(lambda: introspect(stack, resource_server, late.access_token), {"active": False})
    await registry.update_client(client.client_id, ClientUpdate(active=True))
    fresh = (await _eventually_token(stack, client, secret))["access_token"]
    await _eventually(lambda: introspect(stack, resource_server, fresh), None)
    assert (await introspect(stack, resource_server, late.access_token)).json() == {"active": False}


async def _eventually_token(stack, client, secret) -> dict:
    async def attempt() -> httpx.Response:
        async with httpx.AsyncClient(base_url=stack.edge_url) as http:
            return await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                   auth=(client.client_id, secret))

    reply = await eventually(attempt, until=lambda r: r.status_code == 200, message="a token for the client")
    return reply.json()


async def test_revoking_everything_of_a_client(stack, issuer, make_client, resource_server):
    client, secret = await make_client(token_format="opaque")
    old = [(await get_token(stack, client, secret))["access_token"] for _ in range(3)]
    await issuer.revoke_client_tokens(client.client_id)
    for token in old:
        assert (await introspect(stack, resource_server, token)).json() == {"active": False}
    fresh = (await get_token(stack, client, secret))["access_token"]
    assert (await introspect(stack, resource_server, fresh)).json()["active"] is True


async def test_internal_services_introspect_over_grpc_without_client_credentials(stack, issuer, make_client):
    client, secret = await make_client()
    token = (await get_token(stack, client, secret))["access_token"]
    info = await issuer.introspect(token)
    assert info.active and info.client_id == client.client_id and info.scope == "api.read api.write"
    assert not (await issuer.introspect("nonsense")).active


async def _json(reply) -> dict:
    return (await reply).json()


async def _eventually(call, expected):
    """Poll until the JSON equals `expected` (or, with None, until it is active)."""
    await eventually(lambda: _json(call()),
                     until=lambda body: body == expected if expected is not None else body.get("active") is True,
                     message=f"introspection answering {expected or 'active'}")

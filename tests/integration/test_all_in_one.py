"""Every service in one process (services/all_in_one), from the same code:
the same HTTP and gRPC behaviour as the separate processes, end to end."""
from __future__ import annotations

import asyncio

import asyncpg
import httpx
import jwt
import pytest

from services.client_registry.api import ClientSpec, ClientUpdate
from services.client_registry.client import RegistryClient
from tests.support import OPERATOR, IssuerAs, ensure_scopes, eventually


@pytest.fixture(scope="module")
def single(single_stack):
    """The session's one-process system (the both-modes tests run on it too)."""
    return single_stack


async def _types(conn, client_id: str) -> set[str]:
    return {r["type"] for r in await conn.fetch("SELECT DISTINCT type FROM audit_log WHERE client_id = $1", client_id)}


async def test_one_process_serves_the_whole_token_lifecycle(single):
    assert list(single.services) == ["all_in_one"]
    channel = single.channel("client_registry", caller=OPERATOR)
    registry = RegistryClient(channel)
    await ensure_scopes(registry, ["api.read", "inbound.introspect"])
    client, secret = await registry.create_client(ClientSpec(name="single", scopes=["api.read"]))
    rs, rs_secret = await registry.create_client(ClientSpec(name="rs", scopes=["inbound.introspect"]))
    async with httpx.AsyncClient(base_url=single.edge_url) as http:
        reply = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                auth=(client.client_id, secret))
        assert reply.status_code == 200, reply.text
        token = reply.json()["access_token"]
        metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
        keys = jwt.PyJWKClient(metadata["jwks_uri"])
        claims = jwt.decode(token, keys.get_signing_key_from_jwt(token).key, algorithms=["ES256"],
                            audience=single.edge_url + "/api", issuer=single.edge_url)
        assert claims["client_id"] == client.client_id
        denied = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                 auth=(client.client_id, "wrong"))
        assert denied.status_code == 401 and denied.json()["error"] == "invalid_client"
        info = await http.post("/oauth/introspect", data={"token": token}, auth=(rs.client_id, rs_secret))
        assert info.json()["active"] is True
        assert (await http.post("/oauth/revoke", data={"token": token},
                                auth=(client.client_id, secret))).status_code == 200
        info = await http.post("/oauth/introspect", data={"token": token}, auth=(rs.client_id, rs_secret))
        assert info.json() == {"active": False}
        # Registry changes reach the in-process caches too.
        await registry.update_client(client.client_id, ClientUpdate(active=False))
        await eventually(lambda: http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                           auth=(client.client_id, secret)),
                         until=lambda reply: reply.status_code == 401, message="the disabled client refused")
    await channel.close()

    # Opaque tokens (stored through the batched in-process registry), issued concurrently.
    channel = single.channel("client_registry", caller=OPERATOR)
    opaque, opaque_secret = await RegistryClient(channel).create_client(ClientSpec(name="single-opaque",
                                                                                  token_format="opaque"))
    await channel.close()
    async with httpx.AsyncClient(base_url=single.edge_url, limits=httpx.Limits(max_connections=32)) as http:
        replies = await asyncio.gather(*(http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                                   auth=(opaque.client_id, opaque_secret)) for _ in range(40)))
        assert [r.status_code for r in replies] == [200] * 40
        opaque_token = replies[0].json()["access_token"]
        info = await http.post("/oauth/introspect", data={"token": opaque_token}, auth=(rs.client_id, rs_secret))
        assert info.json()["active"] is True and info.json()["client_id"] == opaque.client_id

    # gRPC, as the separate services serve it: internal introspection, keys.
    issuer = IssuerAs(single)
    assert not (await issuer.introspect(token)).active
    assert any(k.signing for k in await issuer.list_keys())
    await issuer.close()

    conn = await asyncpg.connect(single.database_url)
    try:
        types = await eventually(lambda: _types(conn, client.client_id),
                                 until=lambda found: {"registry_changed", "token_issued", "token_denied",
                                                      "token_revoked"} <= found,
                                 message="every kind of event audited")
    finally:
        await conn.close()
    assert {"registry_changed", "token_issued", "token_denied", "token_revoked"} <= types

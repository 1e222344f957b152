"""What the audit log holds after a client's whole life: every kind of event,
and never a secret or a whole token (against both modes)."""
from __future__ import annotations

import asyncpg
import httpx
import pytest

from inboundlib import redact
from services.client_registry.api import ClientUpdate
from tests.support import eventually

pytestmark = pytest.mark.both_modes


async def test_a_clients_life_is_audited_without_secrets_or_tokens(stack, registry, make_client, issuer):
    client, secret = await make_client(token_format="opaque")
    resource_server, rs_secret = await make_client(scopes=["inbound.introspect"])
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        tokens = [(await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                   auth=(client.client_id, secret))).json()["access_token"] for _ in range(2)]
        denied = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                 auth=(client.client_id, secret + "x"))
        assert denied.status_code == 401
        bad_scope = await http.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "admin"},
                                    auth=(client.client_id, secret))
        assert bad_scope.status_code == 400
        malformed = await http.post("/oauth/token", content=b"grant_type=client_credentials&grant_type=x",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                                    auth=(client.client_id, secret))
        assert malformed.status_code == 400
        assert (await http.post("/oauth/revoke", data={"token": tokens[0]},
                                auth=(client.client_id, secret))).status_code == 200
        inactive = await http.post("/oauth/introspect", data={"token": tokens[0]},
                                   auth=(resource_server.client_id, rs_secret))
        assert inactive.json() == {"active": False}
    await registry.update_client(client.client_id, ClientUpdate(comments="audited"))
    _, new_secret = await registry.rotate_client_secret(client.client_id)

    expected = {"registry_changed", "token_issued", "token_denied", "token_revoked", "revoked_token_introspected"}
    conn = await asyncpg.connect(stack.database_url)
    try:
        def complete(rows) -> bool:
            types = {r["type"] for r in rows}
            return expected <= types and len([r for r in rows if r["type"] == "registry_changed"]) >= 3

        # A request refused at the edge, before any client record was matched, names
        # its client only by fingerprint (the id was the caller's unverified word).
        ids = [client.client_id, redact.unverified(client.client_id)]
        rows = await eventually(lambda: conn.fetch(
            "SELECT type, detail::text AS detail, source, request_id FROM audit_log"
            " WHERE client_id = ANY($1) OR detail->>'client_id' = ANY($1)", ids),
            until=complete, message="every kind of event of the client's life")
        types = {r["type"] for r in rows}
    finally:
        await conn.close()
    assert expected <= types, types
    denials = sorted(r["detail"] for r in rows if r["type"] == "token_denied")
    assert any('"invalid_client"' in d for d in denials)
    assert any('"invalid_scope"' in d for d in denials)
    assert any('"invalid_request"' in d for d in denials)  # refused at the edge, audited there
    text = "\n".join(f"{r['type']} {r['detail']} {r['source']} {r['request_id']}" for r in rows)
    for private in (secret, secret + "x", new_secret, rs_secret, *tokens):
        assert private not in text

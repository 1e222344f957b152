"""A backend that is down answers 503 temporarily_unavailable at once (never a
hang, never a 500), and the edge finds it again when it is back."""
from __future__ import annotations

import asyncio
import time

import httpx


async def test_grant_service_down_then_back(stack, make_client):
    client, secret = await make_client()
    port = stack.ports["client_credentials"]

    async def token() -> httpx.Response:
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
            return await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                   auth=(client.client_id, secret))

    assert (await token()).status_code == 200
    assert stack.stop_service("client_credentials") == 0  # graceful
    try:
        started = time.monotonic()
        down = await token()
        assert down.status_code == 503
        assert down.json()["error"] == "temporarily_unavailable"
        assert down.headers["cache-control"] == "no-store"
        assert time.monotonic() - started < 3
        async with httpx.AsyncClient(base_url=stack.edge_url) as http:
            assert (await http.get("/readyz")).status_code == 503
    finally:
        stack.start_service("client_credentials", port=port)
    deadline = time.monotonic() + 5
    while (reply := await token()).status_code != 200:
        assert time.monotonic() < deadline, reply.text
        await asyncio.sleep(0.1)


async def test_issuer_down_fails_introspection_and_revocation_with_503(stack, make_client):
    client, secret = await make_client()
    port = stack.ports["token_issuer"]
    assert stack.stop_service("token_issuer") == 0
    try:
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
            for path in ("/oauth/introspect", "/oauth/revoke"):
                reply = await http.post(path, data={"token": "x"}, auth=(client.client_id, secret))
                assert reply.status_code == 503, (path, reply.text)
                assert reply.json()["error"] == "temporarily_unavailable"
            issued = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                     auth=(client.client_id, secret))
            assert issued.status_code == 503  # the grant service answers per item: issuer unavailable
            assert issued.json()["error"] == "temporarily_unavailable"
    finally:
        stack.start_service("token_issuer", port=port)
    deadline = time.monotonic() + 5
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        while (await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                               auth=(client.client_id, secret))).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)

"""A backend that is down answers 503 temporarily_unavailable at once (never a
hang, never a 500), and the edge finds it again when it is back. On a system of
its own: it stops services."""
from __future__ import annotations

import httpx
import pytest

from tests.support import eventually, register_client


@pytest.fixture(scope="module")
def stack(private_stack):
    with private_stack("backend-outage") as s:
        yield s


async def test_grant_service_down_then_back(stack):
    client, secret = await register_client(stack)
    port = stack.ports["client_credentials"]

    async def token() -> httpx.Response:
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
            return await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                   auth=(client.client_id, secret))

    assert (await token()).status_code == 200
    assert stack.stop_service("client_credentials") == 0  # graceful
    try:
        down = await token()  # (that it answers at once: tests/slo/test_propagation.py)
        assert down.status_code == 503
        assert down.json()["error"] == "temporarily_unavailable"
        assert down.headers["cache-control"] == "no-store"
        async with httpx.AsyncClient(base_url=stack.edge_url) as http:
            # One grant down is that grant's 503; the edge stays in rotation (issue 6).
            assert (await http.get("/readyz")).status_code == 200
    finally:
        stack.start_service("client_credentials", port=port)
    await eventually(token, until=lambda reply: reply.status_code == 200, message="tokens once it is back")


async def test_issuer_down_fails_introspection_and_revocation_with_503(stack):
    client, secret = await register_client(stack)
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
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        await eventually(lambda: http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                           auth=(client.client_id, secret)),
                         until=lambda reply: reply.status_code == 200, message="tokens once the issuer is back")
        # The edge's readiness follows the issuer's health watch, which reconnects on its own
        # schedule: the next test starts from a ready edge.
        await eventually(lambda: http.get("/readyz"), until=lambda reply: reply.status_code == 200,
                         message="the edge ready once the issuer is back")


async def test_authorization_service_down_is_a_503_page_never_a_redirect(stack):
    """The browser's pages while authorization_code is away: the edge's own error page,
    503 with Retry-After and the pages' headers, no Location; the rest of the edge serves on."""
    port = stack.ports["authorization_code"]
    params = {"response_type": "code", "client_id": "app", "redirect_uri": "https://app.example/cb"}
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        # Ready before (an earlier test's outage may still be ending), so that ready after means
        # the edge stayed ready through this one.
        await eventually(lambda: http.get("/readyz"), until=lambda reply: reply.status_code == 200,
                         message="the edge ready before authorization_code stops")
    assert stack.stop_service("authorization_code") == 0
    try:
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
            for reply in (await http.get("/oauth/authorize", params=params), await http.get("/account")):
                assert reply.status_code == 503, reply.text
                assert "location" not in reply.headers and reply.headers["retry-after"]
                assert reply.headers["x-frame-options"] == "DENY" and reply.headers["cache-control"] == "no-store"
                assert "temporarily_unavailable" in reply.text
            userinfo = await http.get("/oauth/userinfo", headers={"authorization": "Bearer x"})
            assert userinfo.status_code == 503 and userinfo.json()["error"] == "temporarily_unavailable"
            assert (await http.get("/readyz")).status_code == 200
    finally:
        stack.start_service("authorization_code", port=port)
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        await eventually(lambda: http.get("/oauth/authorize", params=params),
                         until=lambda reply: reply.status_code != 503, message="the pages once it is back")

"""The edge's HTTP app with fakes for its ports (httpx over ASGI, no network, no
services): routing, parsing, the request context, budgets, per-endpoint errors.
The same paths run against the real system in tests/integration."""
from __future__ import annotations

import asyncio
import base64
import ipaddress

import grpc
import httpx
import pytest

from inboundlib import redact
from inboundlib.events import TOKEN_DENIED
from services.edge.app import EdgeConfig, create_app
from services.edge.settings import EdgeSettings
from tests.fakes import FakeBus, FakeGrant, FakeTokens

ISSUER = "https://as.example.com"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def basic(client_id: str, secret: str = "s") -> dict:
    raw = f"{client_id}:{secret}".encode()
    return {"authorization": "Basic " + base64.b64encode(raw).decode(), **FORM}


def client(grant: FakeGrant | None = None, *, tokens: FakeTokens | None = None, bus: FakeBus | None = None,
           peer: str = "198.51.100.9", **settings) -> httpx.AsyncClient:
    config = EdgeConfig(issuer=ISSUER, grants={"client_credentials": grant or FakeGrant()},
                        jwks=lambda: asyncio.sleep(0, {"keys": []}), tokens=tokens or FakeTokens(), events=bus,
                        settings=EdgeSettings(**settings))
    transport = httpx.ASGITransport(app=create_app(config), client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://edge.internal")


async def test_control_a_token_request_reaches_its_grant():
    grant = FakeGrant()
    async with client(grant) as http:
        reply = await http.post("/oauth/token", content=b"grant_type=client_credentials", headers=basic("app"))
    assert reply.status_code == 200 and reply.json()["access_token"] == "fake-token"
    assert grant.requests[0].client.client_id == "app"


@pytest.mark.parametrize("raw_id", ["abc%00", "abc%0A", "%7F", "a%1Bb"])
async def test_a_control_character_in_the_client_id_is_invalid_client_and_reaches_no_grant(raw_id):
    grant = FakeGrant()
    async with client(grant) as http:
        reply = await http.post("/oauth/token", content=b"grant_type=client_credentials", headers=basic(raw_id))
    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"
    assert reply.headers["www-authenticate"].startswith("Basic ")
    assert grant.requests == []


@pytest.mark.parametrize("path", ["/oauth/token/", "/oauth_token.do/", "/oauth/introspect/", "/oauth/revoke/",
                                  "/oauth_revoke_token.do/"])
async def test_a_trailing_slash_is_404_and_never_a_redirect(path):
    grant, tokens = FakeGrant(), FakeTokens()
    async with client(grant, tokens=tokens) as http:
        reply = await http.post(path, content=b"grant_type=client_credentials&token=x", headers={
            **basic("app"), "host": "attacker.example"})
    assert reply.status_code == 404
    assert "location" not in reply.headers
    assert grant.requests == [] and tokens.introspected == [] and tokens.revoked == []


async def test_metrics_are_not_served_on_the_public_app():
    async with client() as http:
        assert (await http.get("/metrics")).status_code == 404


async def test_resource_and_audience_may_repeat_and_reach_the_grant_in_order():
    grant = FakeGrant()
    body = b"grant_type=client_credentials&resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb&audience=x&audience=y"
    async with client(grant) as http:
        reply = await http.post("/oauth/token", content=body, headers=basic("app"))
    assert reply.status_code == 200
    assert grant.requests[0].values("resource") == ("https://a", "https://b")
    assert grant.requests[0].values("audience") == ("x", "y")


@pytest.mark.parametrize("body", [b"grant_type=client_credentials&scope=a&scope=b",
                                  b"grant_type=client_credentials&grant_type=client_credentials",
                                  b"grant_type=client_credentials&client_id=app&client_id=app"])
async def test_any_other_repeat_is_invalid_request(body):
    grant = FakeGrant()
    async with client(grant) as http:
        reply = await http.post("/oauth/token", content=body, headers=FORM)
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_request"
    assert grant.requests == []


async def test_the_request_context_reaches_the_grant():
    grant = FakeGrant()
    async with client(grant) as http:
        await http.post("/oauth_token.do", content=b"grant_type=client_credentials",
                        headers={**basic("app"), "user-agent": "curl/8.0", "x-forwarded-for": "203.0.113.5"})
    context = grant.requests[0].context
    # The peer is no trusted proxy: its X-Forwarded-For is not believed.
    assert context.client_address == "198.51.100.9"
    assert context.user_agent == "curl/8.0"
    # The configured issuer, never the Host header.
    assert context.endpoint_url == ISSUER + "/oauth_token.do"


@pytest.mark.parametrize("forwarded,expected", [
    (["203.0.113.5"], "203.0.113.5"),
    (["203.0.113.5, 10.0.0.2"], "203.0.113.5"),             # a second trusted proxy in the chain
    (["1.2.3.4, 203.0.113.5"], "203.0.113.5"),              # what the client wrote itself is never reached
    (["1.2.3.4", "203.0.113.5"], "203.0.113.5"),            # several headers read as one list
    (["junk, 203.0.113.5"], "203.0.113.5"),
    (["203.0.113.5, junk"], "10.0.0.1"),                    # stops at the proxy that passed junk on
    (["203.0.113.5:4711"], "203.0.113.5"),                  # a proxy that adds the client's port
    (["[2001:db8::5]:4711, 10.0.0.2:80"], "2001:db8::5"),
    ([], "10.0.0.1"),
])
async def test_x_forwarded_for_is_believed_only_from_trusted_proxies(forwarded, expected):
    grant = FakeGrant()
    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    async with client(grant, peer="10.0.0.1", trusted_proxies=proxies) as http:
        headers = [*basic("app").items(), *(("x-forwarded-for", value) for value in forwarded)]
        await http.post("/oauth/token", content=b"grant_type=client_credentials", headers=headers)
    assert grant.requests[0].context.client_address == expected


async def test_the_grant_runs_within_the_requests_budget():
    grant = FakeGrant()
    async with client(grant, request_timeout=0.75) as http:
        await http.post("/oauth/token", content=b"grant_type=client_credentials", headers=basic("app"))
    assert 0 < grant.budgets[0] <= 0.75


@pytest.mark.parametrize("code", [grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE])
async def test_a_peer_going_away_is_503_never_500(code):
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="stopping")
    async with client(FakeGrant(error=error), tokens=FakeTokens(error=error)) as http:
        token = await http.post("/oauth/token", content=b"grant_type=client_credentials", headers=basic("app"))
        introspect = await http.post("/oauth/introspect", content=b"token=x", headers=basic("app"))
    for reply in (token, introspect):
        assert reply.status_code == 503
        assert reply.json()["error"] == "temporarily_unavailable"
        assert reply.headers["retry-after"]


async def test_a_junk_grant_type_and_client_id_are_audited_only_as_fingerprints():
    secret = "kX93-a-real-secret-pasted-into-the-wrong-field"
    bus = FakeBus()
    async with client(bus=bus) as http:
        reply = await http.post("/oauth/token", content=f"grant_type={secret}".encode(), headers=basic(secret))
    assert reply.json()["error"] == "unsupported_grant_type"
    (event,) = [e.token_denied for e in bus.events(TOKEN_DENIED)]
    assert event.grant_type == redact.unverified(secret)
    assert event.client_id == redact.unverified(secret)
    assert secret[:8] not in repr(event)


async def test_a_body_that_never_finishes_is_408_not_a_connection_held_for_ever():
    app = create_app(EdgeConfig(issuer=ISSUER, grants={"client_credentials": FakeGrant()},
                                jwks=lambda: asyncio.sleep(0, {}), settings=EdgeSettings(body_timeout=0.2)))
    sent: list[dict] = []
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"grant_type=cli", "more_body": True}
        await asyncio.sleep(3600)  # the client stops sending

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/oauth/token", "raw_path": b"/oauth/token", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/x-www-form-urlencoded"),
                                          (b"content-length", b"100")],
             "client": ("198.51.100.9", 4000), "server": ("edge", 80)}
    async with asyncio.timeout(5):
        await app(scope, receive, send)
    assert sent[0]["status"] == 408


async def test_get_on_the_token_endpoint_is_405_with_allow():
    async with client() as http:
        reply = await http.get("/oauth/token")
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"
    assert reply.json()["error"] == "invalid_request"

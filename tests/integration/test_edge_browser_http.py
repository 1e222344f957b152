"""The edge's browser routes through the real system (edge -> authorization_code ->
client_registry / token_issuer, Postgres, NATS), driven over HTTP as a browser would
without one: pages, forms with their CSRF token, cookies, redirects, UserInfo and
discovery. Chromium drives the same routes in tests/browser."""
from __future__ import annotations

import base64
import hashlib
import secrets
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from services.client_registry.api import UserSpec

pytestmark = pytest.mark.both_modes

REDIRECT_URI = "https://app.example/cb"


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def all(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    def field(self, name: str) -> str:
        return self.all("input", name=name)[0]["value"]

    def action(self) -> str:
        return self.all("form")[0]["action"]


def set_cookie(reply: httpx.Response, name: str) -> tuple[str, set[str]] | None:
    for header in reply.headers.get_list("set-cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        if name in cookie:
            return cookie[name].value, {p.strip().lower() for p in header.split(";")[1:]}
    return None


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(32)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@pytest.fixture
async def browser_client(make_client, registry):
    """A public client of the code flow with openid and profile, and a user with a password."""
    client, _ = await make_client(public=True, grant_types=["authorization_code"], scopes=["openid", "profile"],
                                  redirect_uris=[REDIRECT_URI], name="Browser <App>")
    password = "pw-" + secrets.token_urlsafe(12)
    user = await registry.create_user(UserSpec(username="user-" + secrets.token_hex(4), password=password))
    return client, user, password


def authorize_params(client, challenge: str, **extra) -> dict:
    return {"response_type": "code", "client_id": client.client_id, "redirect_uri": REDIRECT_URI,
            "scope": "openid profile", "state": "st-1", "code_challenge": challenge,
            "code_challenge_method": "S256", "nonce": "n-1", **extra}


async def test_the_code_flow_through_the_edges_pages(stack, browser_client):
    client, user, password = browser_client
    verifier, challenge = pkce()
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=15) as http:
        reply = await http.get("/oauth/authorize", params=authorize_params(client, challenge))
        assert reply.status_code == 200, reply.text
        assert "Browser &lt;App&gt;" in reply.text and "<App>" not in reply.text
        sign_in = Page(reply.text)
        assert sign_in.all("input", type="password")

        # The form without its CSRF token: 403, and nothing happened (no session).
        refused = await http.post(sign_in.action(), data={"request_id": sign_in.field("request_id"),
                                                          "username": user.username, "password": password})
        assert refused.status_code == 403 and "location" not in refused.headers
        assert set_cookie(refused, "inbound_session") is None

        reply = await http.post(sign_in.action(), data={
            "csrf_token": sign_in.field("csrf_token"), "request_id": sign_in.field("request_id"),
            "username": user.username, "password": password})
        session = set_cookie(reply, "inbound_session")
        assert session is not None, reply.text
        assert {"httponly", "samesite=lax", "path=/"} <= session[1] and "secure" not in session[1]
        # The consent page: the catalog's `profile` needs consent.
        assert reply.status_code == 200, reply.text
        consent = Page(reply.text)
        assert [b["value"] for b in consent.all("button", name="decision")] == ["allow", "deny"]
        reply = await http.post(consent.action(), data={
            "csrf_token": consent.field("csrf_token"), "request_id": consent.field("request_id"),
            "decision": "allow"})
        assert reply.status_code == 303, reply.text
        location = urlsplit(reply.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
        query = parse_qs(location.query)
        assert query["state"] == ["st-1"] and query["iss"] == [stack.edge_url]  # RFC 9207
        code = query["code"][0]

        tokens = await http.post("/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": client.client_id, "code_verifier": verifier})
        assert tokens.status_code == 200, tokens.text
        access_token = tokens.json()["access_token"]

        claims = await http.get("/oauth/userinfo", headers={"authorization": f"Bearer {access_token}"})
        assert claims.status_code == 200, claims.text
        assert claims.json()["sub"] and claims.json()["preferred_username"] == user.username
        posted = await http.post("/oauth/userinfo", data={"access_token": access_token})
        assert posted.status_code == 200 and posted.json() == claims.json()

        # A second authorization: the session and the consent are remembered, straight back with a code.
        _, challenge2 = pkce()
        again = await http.get("/oauth/authorize", params=authorize_params(client, challenge2))
        assert again.status_code == 302 and again.headers["location"].startswith(REDIRECT_URI + "?")

        # The account page lists the consent; signing out clears the session cookie.
        account = await http.get("/account")
        assert account.status_code == 200 and "Browser &lt;App&gt;" in account.text
        page = Page(account.text)
        out = await http.post("/account/sign-out", data={"csrf_token": page.field("csrf_token")})
        assert out.status_code in (200, 303), out.text
        cleared = set_cookie(out, "inbound_session")
        assert cleared is not None and "max-age=0" in cleared[1]
        assert Page((await http.get("/account")).text).all("input", type="password")


async def test_an_unregistered_redirect_uri_is_an_error_page_never_a_redirect(stack, browser_client):
    client, _, _ = browser_client
    _, challenge = pkce()
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=15) as http:
        for redirect_uri in ("https://evil.example/cb", REDIRECT_URI + "/extra", ""):
            reply = await http.get("/oauth/authorize", params=authorize_params(
                client, challenge, redirect_uri=redirect_uri))
            assert reply.status_code >= 400 and "location" not in reply.headers, redirect_uri
            assert reply.headers["content-security-policy"].startswith("default-src 'none'")
            assert reply.headers["x-frame-options"] == "DENY"


async def test_userinfo_refuses_a_bad_token_with_a_bearer_challenge(stack):
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=15) as http:
        bad = await http.get("/oauth/userinfo", headers={"authorization": "Bearer not-a-token"})
        none = await http.get("/oauth/userinfo")
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer ")


async def test_discovery_lists_only_served_endpoints(stack):
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=15) as http:
        document = (await http.get("/.well-known/openid-configuration")).json()
        assert "authorization_code" in document["grant_types_supported"]
        assert document["id_token_signing_alg_values_supported"] == ["RS256"]
        jwks = (await http.get("/oauth/jwks")).json()
        assert "RS256" in {key.get("alg") for key in jwks["keys"]}
        for name in ("authorization_endpoint", "userinfo_endpoint", "end_session_endpoint", "jwks_uri",
                     "token_endpoint"):
            url = urlsplit(document[name])
            assert (await http.get(url.path)).status_code != 404, name

"""The demo client page of `make run` (services/demo_client.py) against a fake Inbound (its
discovery document, JWKS and token endpoint in process): what its callback checks before
and after the code exchange. The real stack: tests/integration/test_demo_walkthrough.py."""
from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from inboundlib.oauth import oidc, pkce
from services import demo_client

ISSUER = "http://inbound.test"
CLIENT_ID = "c_demo_web"
PAGE = "http://127.0.0.1:8090"


class FakeInbound:
    """Discovery, a JWKS of one RS256 key and a token endpoint that records what it was sent and
    answers an ID token with the claims a test sets."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "k1"
        self.exchanges: list[dict] = []
        self.claims: dict = {}
        self.sign_with = self.key
        self.access_token = "ibo_access-token"

        async def configuration(request: Request):
            return JSONResponse({"issuer": ISSUER, "authorization_endpoint": ISSUER + "/oauth/authorize",
                                 "token_endpoint": ISSUER + "/oauth/token", "jwks_uri": ISSUER + "/oauth/jwks",
                                 "end_session_endpoint": ISSUER + "/oauth/end_session",
                                 "id_token_signing_alg_values_supported": ["RS256"],
                                 "authorization_response_iss_parameter_supported": True})

        async def jwks(request: Request):
            public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            return JSONResponse({"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]})

        async def token(request: Request):
            form = dict(parse_qsl((await request.body()).decode()))
            self.exchanges.append(form)
            now = int(time.time())
            claims = {"iss": ISSUER, "sub": "u_1", "aud": [CLIENT_ID], "iat": now, "exp": now + 300,
                      "nonce": self.nonce_of_request, "preferred_username": "demo",
                      "at_hash": oidc.half_hash(self.access_token, "RS256"), **self.claims}
            id_token = jwt.encode({k: v for k, v in claims.items() if v is not None}, self.sign_with,
                                  algorithm="RS256", headers={"kid": self.kid})
            return JSONResponse({"access_token": self.access_token, "token_type": "Bearer", "expires_in": 1800,
                                 "refresh_token": "ibr_refresh-token", "scope": "openid profile email",
                                 "id_token": id_token})

        self.nonce_of_request = ""
        self.app = Starlette(routes=[Route("/.well-known/openid-configuration", configuration),
                                     Route("/oauth/jwks", jwks), Route("/oauth/token", token, methods=["POST"])])


@pytest.fixture
async def fake():
    return FakeInbound()


@pytest.fixture
async def browser(fake):
    """A browser (an httpx client with cookies) on the demo client page, whose calls to Inbound go to `fake`."""
    inbound = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url=ISSUER)
    client = demo_client.DemoClient(ISSUER, CLIENT_ID, PAGE, http=inbound)
    app = demo_client.create_app(client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PAGE) as page:
        yield page
    await inbound.aclose()


async def start(browser, fake) -> dict[str, str]:
    """GET /start: the authorization request's parameters (and the fake learns its nonce)."""
    reply = await browser.get("/start")
    assert reply.status_code == 302
    location = urlsplit(reply.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == ISSUER + "/oauth/authorize"
    params = {k: v[0] for k, v in parse_qs(location.query).items()}
    fake.nonce_of_request = params["nonce"]
    return params


async def test_start_sends_a_pkce_s256_request_with_state_and_nonce(browser, fake):
    params = await start(browser, fake)
    assert params["response_type"] == "code" and params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == PAGE + "/callback" and params["scope"] == "openid profile email"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 43 and len(params["nonce"]) >= 43
    again = await start(browser, fake)
    assert {again["state"], again["nonce"], again["code_challenge"]}.isdisjoint(
        {params["state"], params["nonce"], params["code_challenge"]})


async def test_the_callback_exchanges_with_the_verifier_and_shows_the_tokens_escaped(browser, fake):
    params = await start(browser, fake)
    fake.claims = {"name": "<script>alert(1)</script>"}
    reply = await browser.get("/callback", params={"code": "ibc_code", "state": params["state"], "iss": ISSUER})
    assert reply.status_code == 303 and reply.headers["location"] == "/result"
    (sent,) = fake.exchanges
    assert sent["grant_type"] == "authorization_code" and sent["code"] == "ibc_code"
    assert sent["client_id"] == CLIENT_ID and sent["redirect_uri"] == PAGE + "/callback"
    assert pkce.s256(sent["code_verifier"]) == params["code_challenge"]
    assert "client_secret" not in sent  # a public client
    page = await browser.get("/result")
    assert page.status_code == 200
    assert "ibo_access-token" in page.text and "ibr_refresh-token" in page.text
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert "at_hash" in page.text and '"preferred_username": "demo"' in page.text.replace("&#34;", '"')
    assert page.headers["cache-control"] == "no-store" and "script-src" not in page.headers["content-security-policy"]
    assert 'name="post_logout_redirect_uri" value="http://127.0.0.1:8090/signed-out"' in page.text
    assert (await browser.get("/signed-out")).status_code == 200
    assert (await browser.get("/result")).status_code == 303  # the result is forgotten after sign-out
    # The code is never sent twice: a reload of the callback finds no pending sign-in.
    again = await browser.get("/callback", params={"code": "ibc_code", "state": params["state"], "iss": ISSUER})
    assert again.status_code == 400 and len(fake.exchanges) == 1


async def test_the_callback_refuses_a_wrong_state_and_exchanges_nothing(browser, fake):
    params = await start(browser, fake)
    reply = await browser.get("/callback", params={"code": "ibc_code", "state": params["state"] + "x", "iss": ISSUER})
    assert reply.status_code == 400 and "state does not match" in reply.text
    assert fake.exchanges == []
    # ... and the real answer still completes the sign-in the browser started
    reply = await browser.get("/callback", params={"code": "ibc_code", "state": params["state"], "iss": ISSUER})
    assert reply.status_code == 303 and len(fake.exchanges) == 1


async def test_the_callback_refuses_another_browser_s_state(browser, fake):
    params = await start(browser, fake)
    browser.cookies.clear()  # another browser, which started nothing here, brings this one's state
    reply = await browser.get("/callback", params={"code": "ibc_code", "state": params["state"], "iss": ISSUER})
    assert reply.status_code == 400 and fake.exchanges == []


async def test_the_callback_refuses_another_issuer(browser, fake):
    for iss in ("http://evil.test", None):  # RFC 9207: wrong, or missing where the server sends it
        params = await start(browser, fake)
        query = {"code": "ibc_code", "state": params["state"]}
        if iss:
            query["iss"] = iss
        reply = await browser.get("/callback", params=query)
        assert reply.status_code == 400 and "another issuer" in reply.text
    assert fake.exchanges == []


async def test_an_error_answer_is_shown_escaped(browser, fake):
    params = await start(browser, fake)
    reply = await browser.get("/callback", params={"error": "access_denied", "error_description": "<b>no</b>",
                                                   "state": params["state"], "iss": ISSUER})
    assert reply.status_code == 400 and "access_denied" in reply.text and "&lt;b&gt;no&lt;/b&gt;" in reply.text
    assert fake.exchanges == []


@pytest.mark.parametrize("case", ["nonce", "signature", "audience", "at_hash"])
async def test_an_id_token_that_does_not_validate_is_refused(browser, fake, case):
    params = await start(browser, fake)
    if case == "nonce":
        fake.claims = {"nonce": "another-nonce"}
    elif case == "signature":
        fake.sign_with = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif case == "audience":
        fake.claims = {"aud": ["another-client"]}
    else:
        fake.claims = {"at_hash": oidc.half_hash("another-access-token", "RS256")}
    reply = await browser.get("/callback", params={"code": "ibc_code", "state": params["state"], "iss": ISSUER})
    assert reply.status_code == 400, case
    assert "ibo_access-token" not in reply.text and (await browser.get("/result")).status_code == 303


def test_the_page_listens_on_loopback_only():
    assert demo_client.HOST == "127.0.0.1"
    assert urlsplit(demo_client.redirect_uri(8090)).hostname == "127.0.0.1"

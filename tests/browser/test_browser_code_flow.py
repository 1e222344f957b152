"""The authorization code flow in real Chromium (RFC 6749 §4.1, RFC 7636, RFC 9207):
sign in, consent, land at the client with a code, exchange it with the PKCE verifier;
consent remembered; more scopes ask again; prompt=none without a session; implicit
tokens in the fragment only; an unregistered redirect URI never redirects."""
from __future__ import annotations

from urllib.parse import urlsplit

import jwt
import pytest

from tests.browser.flow import (
    PASSWORD,
    auth_request,
    code_client,
    code_flow,
    consent,
    create_user,
    describe,
    exchange_code,
    is_consent_page,
    is_sign_in_page,
    no_new_requests,
    screenshot,
    sign_in,
    wait_for_client,
)

pytestmark = pytest.mark.slow


async def test_sign_in_consent_code_and_its_exchange_with_the_pkce_verifier(stack, browser_page, client_callback,
                                                                            issuer):
    page = browser_page
    user = await create_user(stack)
    client, secret = await code_client(stack, client_callback)

    request = auth_request(stack.edge_url, client, scope="openid profile")
    await page.goto(request.url)
    assert await is_sign_in_page(page), await describe(page)
    assert client.name in await page.locator("body").inner_text(), "the sign-in page names the client"
    await screenshot(page, "sign-in")
    await sign_in(page, user.username, PASSWORD)
    assert await is_consent_page(page), await describe(page)
    assert client.name in await page.locator("body").inner_text(), "the consent page names the client"
    await screenshot(page, "consent")
    await consent(page)
    landed = await wait_for_client(page, request.redirect_uri)

    # RFC 6749 §4.1.2: code and state in the query; RFC 9207: iss.
    assert landed.query["state"] == request.state
    assert landed.query["iss"] == stack.edge_url
    assert landed.query["code"].startswith("ibc_")
    assert landed.fragment == {}

    reply = exchange_code(stack.edge_url, client, secret, landed.query["code"], request.verifier)
    assert reply.status_code == 200, reply.text
    tokens = reply.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["refresh_token"] and tokens["id_token"]
    assert set(tokens["scope"].split()) == {"openid", "profile"}
    info = await issuer.introspect(tokens["access_token"])
    assert info.active and (info.sub, info.client_id) == (user.id, client.client_id)

    # The code was single use: the same exchange again is refused.
    again = exchange_code(stack.edge_url, client, secret, landed.query["code"], request.verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


async def test_consent_is_remembered_and_more_scopes_ask_again(stack, browser_page, client_callback):
    page = browser_page
    user = await create_user(stack)
    client, secret = await code_client(stack, client_callback)
    await code_flow(page, stack.edge_url, client, user.username, scope="openid profile")

    # The same scopes again: the session and the consent stand, so no page at all.
    request = auth_request(stack.edge_url, client, scope="openid profile")
    await page.goto(request.url)
    assert not await is_sign_in_page(page) and not await is_consent_page(page)
    landed = await wait_for_client(page, request.redirect_uri)
    assert landed.query["state"] == request.state and landed.query["code"]
    # The code is bound to the request's PKCE challenge: another verifier is refused (RFC 7636 §4.6).
    wrong = exchange_code(stack.edge_url, client, secret, landed.query["code"], request.verifier[::-1])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"

    # A scope not consented yet: the consent page again, and the code carries the new scope.
    request = auth_request(stack.edge_url, client, scope="openid profile email")
    await page.goto(request.url)
    assert await is_consent_page(page), "asking for more scopes asks for consent again"
    assert "email" in (await page.locator("body").inner_text()).lower()
    await consent(page)
    landed = await wait_for_client(page, request.redirect_uri)
    reply = exchange_code(stack.edge_url, client, secret, landed.query["code"], request.verifier)
    assert reply.status_code == 200, reply.text
    assert set(reply.json()["scope"].split()) == {"openid", "profile", "email"}


async def test_denying_consent_answers_access_denied(stack, browser_page, client_callback):
    page = browser_page
    user = await create_user(stack)
    client, _ = await code_client(stack, client_callback)
    request = auth_request(stack.edge_url, client)
    await page.goto(request.url)
    await sign_in(page, user.username, PASSWORD)
    await consent(page, approve=False)
    landed = await wait_for_client(page, request.redirect_uri)
    assert landed.query["error"] == "access_denied" and landed.query["state"] == request.state
    assert "code" not in landed.query


async def test_prompt_none_without_a_session_answers_login_required(stack, browser_page, client_callback):
    """OpenID Connect Core §3.1.2.6: no page is shown; the error goes to the redirect URI."""
    page = browser_page
    client, _ = await code_client(stack, client_callback)
    request = auth_request(stack.edge_url, client, prompt="none")
    await page.goto(request.url)
    landed = await wait_for_client(page, request.redirect_uri)
    assert landed.query["error"] == "login_required"
    assert landed.query["state"] == request.state and landed.query["iss"] == stack.edge_url
    assert "code" not in landed.query


async def test_implicit_tokens_arrive_in_the_fragment_only(stack, browser_page, client_callback, issuer):
    """RFC 6749 §4.2.2 and OpenID Connect Core §3.2.2.5 (`id_token token`): the tokens in the
    fragment (never sent to a server), none in the query, no refresh token; the nonce echoed."""
    page = browser_page
    user = await create_user(stack)
    client, _ = await code_client(stack, client_callback, grant_types=["implicit"], scopes=["openid", "profile"])
    request = auth_request(stack.edge_url, client, response_type="id_token token", pkce=False)
    await page.goto(request.url)
    await sign_in(page, user.username, PASSWORD)
    await consent(page)
    landed = await wait_for_client(page, request.redirect_uri)

    assert landed.query == {}, "nothing of the response in the query"
    assert [urlsplit(p).query for p in client_callback.requests_to(request.redirect_uri)] == [""], (
        "the client's server saw no parameters")
    fragment = landed.fragment
    assert fragment["state"] == request.state and fragment["token_type"] == "Bearer"
    assert fragment["access_token"] and int(fragment["expires_in"]) > 0
    assert "refresh_token" not in fragment and "code" not in fragment
    claims = jwt.decode(fragment["id_token"], options={"verify_signature": False})
    assert claims["nonce"] == request.nonce and claims["sub"] == user.id and claims["aud"] in (
        client.client_id, [client.client_id])
    info = await issuer.introspect(fragment["access_token"])
    assert info.active and info.sub == user.id

    # Tokens are never put in the query, even when the client asks for it (Multiple Response
    # Type Encoding Practices §2.1): the request is refused, and in the fragment.
    query_mode = auth_request(stack.edge_url, client, response_type="id_token token", pkce=False,
                              response_mode="query")
    await page.goto(query_mode.url)
    landed = await wait_for_client(page, query_mode.redirect_uri)
    assert landed.fragment["error"] == "invalid_request" and landed.fragment["state"] == query_mode.state
    assert "access_token" not in landed.query and "access_token" not in landed.fragment


async def test_implicit_is_refused_to_a_client_not_allowed_it(stack, browser_page, client_callback):
    page = browser_page
    client, _ = await code_client(stack, client_callback)  # authorization_code only
    request = auth_request(stack.edge_url, client, response_type="token", pkce=False)
    await page.goto(request.url)
    landed = await wait_for_client(page, request.redirect_uri)
    assert "access_token" not in landed.fragment and "access_token" not in landed.query
    error = landed.fragment.get("error") or landed.query.get("error")
    assert error in ("unauthorized_client", "unsupported_response_type")


async def test_an_unregistered_redirect_uri_shows_an_error_page_and_never_redirects(stack, browser_page,
                                                                                   client_callback):
    """RFC 6749 §4.1.2.1: the redirect URI cannot be trusted, so the user sees a page; the
    client's registered URI with an extra path is not it (RFC 9700 §4.1: exact matching)."""
    page = browser_page
    client, _ = await code_client(stack, client_callback)
    registered = client.redirect_uris[0]
    for redirect_uri in (registered + "/extra", client_callback.redirect_uri()):
        request = auth_request(stack.edge_url, client, redirect_uri=redirect_uri)
        with no_new_requests(client_callback, registered), no_new_requests(client_callback, redirect_uri):
            response = await page.goto(request.url)
        assert response.status == 400
        assert page.url.startswith(stack.edge_url + "/")
        assert not await is_sign_in_page(page) and not await is_consent_page(page)
    await screenshot(page, "error")

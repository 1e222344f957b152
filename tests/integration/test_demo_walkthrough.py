"""`make run`'s browser walk-through against the real system, both modes: the demo public
client demo-web is made with the settings the README promises, and the demo client page
(services/demo_client.py, as the dev stack starts it) completes the whole flow: its start
URL, Inbound's sign-in and consent pages (their own forms and CSRF tokens, filled as a
person would), the callback's checks, the code exchange and the ID token's validation
against the real JWKS. (Chromium drives the same pages in tests/browser; the README's
screenshots come from docs/walkthrough.py.)"""
from __future__ import annotations

import html
import re
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bench.codeflow import sign_in_and_consent
from services import demo_client
from services.devstack import (
    DEMO_WEB,
    DEMO_WEB_GRANTS,
    DEMO_WEB_SCOPES,
    free_port,
    seed_demo,
    start_demo_page,
    stop_demo_page,
)

pytestmark = pytest.mark.both_modes


@pytest.fixture(scope="module")
async def demo(stack, registry):
    """seed_demo as make run calls it, and the demo client page it starts (on a free port). What the
    seed made is deleted afterwards: the session's system is left as found (tests/integration/
    test_inboundctl_users.py checks make run's first seed on it)."""
    from services.devstack import DEMO_USERNAME

    clients_before = {c.client_id for c in await registry.list_clients()}
    user_before = await registry.get_user(username=DEMO_USERNAME)
    port = free_port()
    seed = await seed_demo(stack, demo_page_port=port)
    assert seed.web_error == "" and seed.web_client_id, seed.web_error
    page = start_demo_page(stack, seed.web_client_id, port, echo=False)
    try:
        yield seed, port
    finally:
        stop_demo_page(page)
        for client_id in (seed.client_id, seed.app_client_id, seed.web_client_id):
            if client_id not in clients_before:
                await registry.delete_client(client_id)
        if user_before is None and seed.user_id:
            await registry.delete_user(seed.user_id)


async def test_the_demo_public_client_has_the_promised_settings(stack, registry, demo):
    seed, port = demo
    web = await registry.get_client(seed.web_client_id)
    assert web.name == DEMO_WEB and web.public and web.secret_hash == "" and web.pkce_required and web.active
    assert set(web.grant_types) == set(DEMO_WEB_GRANTS) and set(web.scopes) == set(DEMO_WEB_SCOPES)
    assert web.redirect_uris == (f"http://127.0.0.1:{port}/callback",)
    assert web.post_logout_redirect_uris == (f"http://127.0.0.1:{port}/signed-out",)
    catalog = await registry.scopes.get_scopes(DEMO_WEB_SCOPES)
    assert all(catalog), catalog
    assert seed.demo_page_url == f"http://127.0.0.1:{port}/start"
    # make run again on the same database: the same client, nothing new; the page's port moved: followed
    again = await seed_demo(stack, demo_page_port=port + 1)
    assert again.web_client_id == seed.web_client_id and again.web_error == ""
    assert (await registry.get_client(seed.web_client_id)).redirect_uris == (f"http://127.0.0.1:{port + 1}/callback",)
    await seed_demo(stack, demo_page_port=port)  # back, for the walk-through
    names = [c.name for c in await registry.list_clients()]
    assert names.count(DEMO_WEB) == 1


async def test_the_walk_through_lands_on_the_demo_page_with_the_tokens(stack, registry, demo):
    from services.client_registry.api import UserSpec

    seed, port = demo
    username, password = f"walker-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    user = await registry.create_user(UserSpec(username=username, password=password, display_name="Walker",
                                               email=f"{username}@example.com"))
    page_url = demo_client.base_url(port)
    with httpx.Client(timeout=30) as browser:
        start = browser.get(seed.demo_page_url)
        assert start.status_code == 302
        authorize = start.headers["location"]
        query = parse_qs(urlsplit(authorize).query)
        assert authorize.startswith(stack.edge_url + "/oauth/authorize?")
        assert query["client_id"] == [seed.web_client_id] and query["code_challenge_method"] == ["S256"]
        callback = sign_in_and_consent(browser, authorize, page_url + "/callback", username, password)
        assert parse_qs(urlsplit(callback).query)["iss"] == [stack.edge_url]
        landed = browser.get(callback)
        assert landed.status_code == 303 and landed.headers["location"] == "/result", landed.text[:500]
        result = browser.get(page_url + "/result")
        assert result.status_code == 200
        assert f"&#34;sub&#34;: &#34;{user.id}&#34;" in result.text or f'"sub": "{user.id}"' in result.text
        assert username in result.text and "ibr_" in result.text and "at_hash" in result.text
        # Started again: the session is warm and the consent remembered: straight back with a new code.
        again = browser.get(page_url + "/start")
        to_inbound = browser.get(again.headers["location"])
        assert to_inbound.is_redirect and to_inbound.headers["location"].startswith(page_url + "/callback?")
        # A callback whose state is not this browser's is refused, and the code stays unexchanged.
        forged = to_inbound.headers["location"].replace("state=", "state=x")
        assert browser.get(forged).status_code == 400
        assert browser.get(to_inbound.headers["location"]).status_code == 303
        # The demo page's "Sign out of Inbound" (README: RP-initiated logout with the ID token as hint):
        # the form as the page has it, posted as the browser would; Inbound ends the session and sends
        # the browser back to the page's registered post-logout URI, which forgets this browser's tokens.
        page = browser.get(page_url + "/result").text
        form = re.search(r'<form method="post" action="([^"]+)">(.*?)</form>', page, re.S)
        assert form and html.unescape(form.group(1)) == stack.edge_url + "/oauth/end_session", page[-1500:]
        fields = {html.unescape(name): html.unescape(value) for name, value in
                  re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(2))}
        assert set(fields) == {"id_token_hint", "client_id", "post_logout_redirect_uri"}, sorted(fields)
        [session] = [c for c in browser.cookies.jar if c.name == "inbound_session"]
        logout = browser.post(html.unescape(form.group(1)), data=fields)
        assert logout.is_redirect and logout.headers["location"].split("?")[0] == page_url + "/signed-out", (
            logout.status_code, logout.headers.get("location"), logout.text[:300])
        assert browser.get(logout.headers["location"]).status_code == 200
        assert browser.get(page_url + "/result").headers.get("location") == "/", "the page forgot the tokens"
        # The session is over on the server: its old cookie, presented again, signs nobody in, and the
        # next sign-in from the page asks for the password again.
        browser.cookies.jar.set_cookie(session)
        to_inbound = browser.get(browser.get(page_url + "/start").headers["location"])
        assert not (to_inbound.is_redirect and to_inbound.headers["location"].startswith(page_url + "/callback")), \
            "straight back with a code: the session outlived the sign-out"
        assert 'type="password"' in to_inbound.text, to_inbound.text[:500]

"""The account page in real Chromium: withdrawing a consent ends the tokens issued under it
and the next authorization asks again; signing out ends the session on the server (the
old cookie presented again signs nobody in) and the next authorization asks to sign in."""
from __future__ import annotations

import httpx
import pytest

from tests.browser.flow import (
    SIGN_OUT_BUTTON,
    WITHDRAW_BUTTON,
    auth_request,
    code_client,
    code_flow,
    create_user,
    describe,
    exchange_code,
    is_consent_page,
    is_sign_in_page,
    screenshot,
    submit,
)
from tests.support import eventually

pytestmark = pytest.mark.slow


async def test_withdrawing_a_consent_ends_its_tokens_and_the_next_authorization_asks_again(
        stack, browser_page, client_callback, issuer):
    page = browser_page
    user = await create_user(stack)
    client, secret = await code_client(stack, client_callback)
    request, landed = await code_flow(page, stack.edge_url, client, user.username)
    tokens = exchange_code(stack.edge_url, client, secret, landed.query["code"], request.verifier).json()
    assert (await issuer.introspect(tokens["access_token"])).active

    await page.goto(stack.edge_url + "/account")
    text = await page.locator("body").inner_text()
    assert client.name in text, "the account page lists the consent given to the client"
    await screenshot(page, "account")
    withdraw = page.get_by_role("button", name=WITHDRAW_BUTTON)
    assert await withdraw.count() == 1
    response = await submit(page, withdraw)
    assert response.status < 400
    assert client.name not in await page.locator("body").inner_text(), "the consent is gone from the page"

    await eventually(lambda: issuer.introspect(tokens["access_token"]), until=lambda info: not info.active,
                     message="the access token issued under the withdrawn consent is inactive")
    refreshed = httpx.post(stack.edge_url + "/oauth/token", auth=(client.client_id, secret), timeout=30,
                           data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"

    again = auth_request(stack.edge_url, client)
    await page.goto(again.url)
    assert await is_consent_page(page), "with the consent withdrawn, the next authorization asks again"


async def test_signing_out_ends_the_session(stack, browser_page, client_callback):
    page = browser_page
    user = await create_user(stack)
    client, _ = await code_client(stack, client_callback)
    await code_flow(page, stack.edge_url, client, user.username)
    cookies_before = {c["name"]: c for c in await page.context.cookies(stack.edge_url)}
    sessions = [c for name, c in cookies_before.items() if "session" in name]
    assert len(sessions) == 1, f"one session cookie, not {list(cookies_before)}"
    session = sessions[0]
    assert session["httpOnly"] and session["sameSite"] == "Lax"

    await page.goto(stack.edge_url + "/account")
    assert user.username in await page.locator("body").inner_text() or user.display_name in await page.locator(
        "body").inner_text()
    await submit(page, page.get_by_role("button", name=SIGN_OUT_BUTTON))
    await screenshot(page, "signed-out")
    assert session["name"] not in {c["name"] for c in await page.context.cookies(stack.edge_url)}

    await page.goto(auth_request(stack.edge_url, client).url)
    assert await is_sign_in_page(page), "after sign-out the next authorization asks to sign in"

    # The server ended the session: the old cookie, presented again, is no session at all.
    await page.context.add_cookies([session])
    await page.goto(auth_request(stack.edge_url, client).url)
    assert await is_sign_in_page(page), await describe(page)
    assert not await is_consent_page(page), await describe(page)

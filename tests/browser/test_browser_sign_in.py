"""The sign-in and consent forms in real Chromium: a wrong password (one generic message,
the same for an unknown username; no redirect), the directory's lockout, a keyboard-only
sign-in, and forms posted without their CSRF token (403, and nothing changes)."""
from __future__ import annotations

import re
import time

import pytest

from services.authorization_code.authorize import SIGN_IN_UNAVAILABLE
from tests.browser.flow import (
    ALLOW_BUTTON,
    CSRF_INPUT,
    PASSWORD,
    SIGN_IN_BUTTON,
    auth_request,
    code_client,
    consent,
    create_user,
    describe,
    get_user,
    is_consent_page,
    is_sign_in_page,
    no_new_requests,
    password_field,
    screenshot,
    sign_in,
    submit,
    username_field,
    wait_for_client,
)
from tests.support import eventually

pytestmark = pytest.mark.slow


async def _page_text(page) -> str:
    return " ".join((await page.locator("body").inner_text()).split())


async def test_a_wrong_password_shows_one_generic_message_and_never_redirects(stack, browser_page, client_callback):
    page = browser_page
    user = await create_user(stack)
    client, _ = await code_client(stack, client_callback)
    request = auth_request(stack.edge_url, client)
    await page.goto(request.url)
    first_showing = await _page_text(page)

    with no_new_requests(client_callback, request.redirect_uri):
        await sign_in(page, user.username, "not " + PASSWORD)
        assert await is_sign_in_page(page), "a wrong password shows the sign-in page again"
        wrong_password = await _page_text(page)
        await screenshot(page, "sign-in-error")
        await sign_in(page, "nobody-" + user.username, PASSWORD)
        unknown_user = await _page_text(page)
    assert wrong_password != first_showing, "the page says the sign-in failed"
    # No user enumeration: an unknown username reads exactly as a wrong password.
    assert unknown_user == wrong_password
    assert PASSWORD not in await page.content() and "not " + PASSWORD not in await page.content()
    # Still the same pending request: the right password goes on to consent.
    await sign_in(page, user.username, PASSWORD)
    assert await is_consent_page(page), await describe(page)


async def test_the_directory_locks_a_username_out_after_the_configured_failures(debug_stack, browser_page,
                                                                                 client_callback):
    """The user directory's lock (INBOUND_LOGIN_LOCK_AFTER, 2 on the debug system: tests.support.DEBUG_ENV)
    applies to the sign-in page: after it, even the right password signs nobody in."""
    from tests.support import DEBUG_ENV

    page = browser_page
    user = await create_user(debug_stack)
    client, _ = await code_client(debug_stack, client_callback)
    request = auth_request(debug_stack.edge_url, client)
    await page.goto(request.url)
    with no_new_requests(client_callback, request.redirect_uri):
        for _ in range(int(DEBUG_ENV["INBOUND_LOGIN_LOCK_AFTER"])):
            await sign_in(page, user.username, "not " + PASSWORD)
        await sign_in(page, user.username, PASSWORD)
        assert await is_sign_in_page(page), "a locked username is not signed in, whatever the password"
        assert not await is_consent_page(page), await describe(page)
    # A lock (INBOUND_LOGIN_LOCK_SECONDS, 900 s), not a back-off of a second or so.
    assert (await get_user(debug_stack, user.id)).locked_until > time.time() + 60, "the directory holds the lock"


async def test_keyboard_alone_signs_in(stack, browser_page, client_callback):
    """Tab reaches the username; from it Tab goes to the password, then to the submit button
    (nothing in between, nothing skipped); typing and Enter sign in. No mouse, no .focus()."""
    page = browser_page
    user = await create_user(stack)
    client, _ = await code_client(stack, client_callback)
    request = auth_request(stack.edge_url, client)
    await page.goto(request.url)
    # Every field has a label a screen reader announces.
    assert await page.get_by_label(re.compile("password", re.I)).count() >= 1

    async def focused_is(locator) -> bool:
        return await locator.evaluate("element => element === document.activeElement")

    username, password = username_field(page), password_field(page)

    async def by_keyboard():
        for _ in range(10):  # the username may have autofocus: look before the first Tab too
            if await focused_is(username):
                break
            await page.keyboard.press("Tab")
        assert await focused_is(username), "Tab never reached the username field"
        await page.keyboard.type(user.username)
        await page.keyboard.press("Tab")
        assert await focused_is(password), "Tab from the username goes to the password"
        await page.keyboard.type(PASSWORD)
        await page.keyboard.press("Tab")
        assert await focused_is(page.get_by_role("button", name=SIGN_IN_BUTTON)), "then to the Sign in button"
        await page.keyboard.press("Shift+Tab")
        assert await focused_is(password)
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        if await page.get_by_text(SIGN_IN_UNAVAILABLE).count():
            # Not checked in time (a loaded machine; see flow.sign_in): a user would try again.
            await page.goto(request.url)
            return False
        return True

    await eventually(by_keyboard, timeout=90, message="a keyboard sign-in the directory could check")
    assert await is_consent_page(page), "Enter in the password field submitted the form"


async def test_forms_without_their_csrf_token_are_refused_and_change_nothing(stack, browser_page, client_callback):
    page = browser_page
    user = await create_user(stack)
    client, _ = await code_client(stack, client_callback)
    request = auth_request(stack.edge_url, client)
    await page.goto(request.url)

    # The sign-in form without its token: 403, and no session.
    assert await page.locator(CSRF_INPUT).count() >= 1, "the sign-in form carries a CSRF token"
    await page.locator(CSRF_INPUT).evaluate_all("inputs => inputs.forEach(input => input.remove())")
    await username_field(page).fill(user.username)
    await password_field(page).fill(PASSWORD)
    with no_new_requests(client_callback, request.redirect_uri):
        response = await submit(page, page.get_by_role("button", name=SIGN_IN_BUTTON))
    assert response.status == 403
    await page.goto(request.url)
    assert await is_sign_in_page(page), "the refused sign-in made no session"

    # Signed in properly, the consent form without its token: 403, and no consent stored.
    await sign_in(page, user.username, PASSWORD)
    assert await page.locator(CSRF_INPUT).count() >= 1, "the consent form carries a CSRF token"
    await page.locator(CSRF_INPUT).evaluate_all("inputs => inputs.forEach(input => input.remove())")
    with no_new_requests(client_callback, request.redirect_uri):
        response = await submit(page, page.get_by_role("button", name=ALLOW_BUTTON))
    assert response.status == 403
    request = auth_request(stack.edge_url, client)
    await page.goto(request.url)
    assert await is_consent_page(page), "the refused consent was not remembered"
    await consent(page)
    assert (await wait_for_client(page, request.redirect_uri)).query["code"]

"""The pages are readable by everyone on a phone and a desktop (issue 9: "accessible
(labels, focus order, contrast, keyboard), and good to look at on a phone and a desktop"),
measured in real Chromium on the pages as rendered: every piece of visible text has the
WCAG 2.x contrast ratio against the background it is drawn on (4.5:1, 3:1 for large text),
and no page is wider than the screen (no sideways scrolling at 390 px). The labels and the
keyboard are tests/browser/test_browser_sign_in.py's."""
from __future__ import annotations

import pytest

from tests.browser.flow import (
    SIZES,
    auth_request,
    code_client,
    consent,
    create_user,
    describe,
    is_consent_page,
    is_sign_in_page,
    password_field,
    sign_in,
    submit,
    username_field,
    wait_for_client,
)

pytestmark = pytest.mark.slow

# WCAG 2.x relative luminance and contrast ratio (G17, G18), computed by the browser on
# each visible text node's computed colour and the first opaque background behind it.
TEXT_CONTRAST = """() => {
  const rgb = (s) => { const m = s.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const luminance = (c) => 0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b);
  const behind = (el) => { for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor); if (c && c.a >= 0.99) return c; }
    return {r: 255, g: 255, b: 255, a: 1}; };
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent.trim();
    const el = walker.currentNode.parentElement;
    if (!text || !el) continue;
    const style = getComputedStyle(el), box = el.getBoundingClientRect();
    if (style.visibility === 'hidden' || style.display === 'none' || box.width <= 1 || box.height <= 1) continue;
    const fg = luminance(rgb(style.color)), bg = luminance(behind(el));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    found.push({text: text.slice(0, 40), ratio: Math.round(ratio * 100) / 100,
                needed: (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5});
  }
  return found;
}"""
WIDTH = "() => [document.documentElement.scrollWidth, window.innerWidth]"


async def check_readable(page, name: str) -> None:
    for size, viewport in SIZES.items():
        await page.set_viewport_size(viewport)
        texts = await page.evaluate(TEXT_CONTRAST)
        assert texts, f"no text measured on the {name} page at {await describe(page)}"
        faint = [t for t in texts if t["ratio"] < t["needed"]]
        assert not faint, f"the {name} page ({size}): text below the WCAG AA contrast: {faint}"
        scroll_width, screen = await page.evaluate(WIDTH)
        assert scroll_width <= screen, f"the {name} page is {scroll_width}px wide on a {screen}px {size} screen"
    await page.set_viewport_size(SIZES["desktop"])


async def test_every_page_is_readable_on_a_phone_and_a_desktop(stack, browser_page, client_callback):
    page = browser_page
    user = await create_user(stack)
    client, _ = await code_client(stack, client_callback, name="A client with a rather long name " + "x" * 40)

    request = auth_request(stack.edge_url, client, scope="openid profile email")
    await page.goto(request.url)
    assert await is_sign_in_page(page), await describe(page)
    await check_readable(page, "sign-in")
    await username_field(page).fill(user.username)
    await password_field(page).fill("not the password")
    await submit(page, page.get_by_role("button", name="Sign in"))
    assert await is_sign_in_page(page), await describe(page)
    await check_readable(page, "sign-in with its error message")

    await sign_in(page, user.username, "correct horse battery staple")
    assert await is_consent_page(page), await describe(page)
    await check_readable(page, "consent")
    await consent(page)
    await wait_for_client(page, request.redirect_uri)

    await page.goto(stack.edge_url + "/account")
    await check_readable(page, "account")

    await page.goto(auth_request(stack.edge_url, client, redirect_uri="https://elsewhere.example/cb").url)
    await check_readable(page, "error")

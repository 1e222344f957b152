"""The browser the suite drives is Debian's Chromium at /usr/bin/chromium (installed by
`make chromium`, part of `make test`), not a browser Playwright downloaded, and it reaches
the system under test."""
from __future__ import annotations

import subprocess

from tests.browser.flow import CHROMIUM


async def test_the_browser_is_debians_chromium_and_reaches_the_edge(chromium, browser_page, stack):
    reported = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert chromium.version.split(".")[0] in reported, (chromium.version, reported)
    response = await browser_page.goto(stack.edge_url + "/.well-known/oauth-authorization-server")
    assert response.status == 200
    assert (await response.json())["issuer"] == stack.edge_url

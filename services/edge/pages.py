"""The browser's HTML: Jinja2 templates (services/edge/templates, autoescaped),
the stylesheet (services/edge/static/inbound.css) and the headers every page
carries.

Content-Security-Policy: no script at all (`default-src 'none'`), styles and
images from here (logos from any https origin), never framed, no <base>.
`form-action` is left out on purpose: it does not fall back to default-src, and
Chromium applies it to the redirects that follow a form submission, so
`form-action 'self'` would block the 303 from the consent or sign-in form to the
client's redirect URI (any registered https or private-use scheme, which the
page cannot know in advance). The pages' forms are ours alone, and no text a
client or user sent is rendered unescaped.
"""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
from starlette.responses import HTMLResponse, Response

HERE = Path(__file__).parent
CSP = "default-src 'none'; style-src 'self'; img-src 'self' https:; frame-ancestors 'none'; base-uri 'none'"
# Every HTML page, and every redirect the browser routes answer.
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
}
STYLESHEET = (HERE / "static" / "inbound.css").read_bytes()
STYLESHEET_PATH = "/static/inbound.css"


def https_only(url: str) -> str:
    """A logo URL as shown: https with a host, or nothing (no http:, data: or javascript: image)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return url if parts.scheme == "https" and parts.hostname else ""


def date(stamp: int) -> str:
    """A record's time (seconds, or milliseconds since the epoch) as a UTC date."""
    seconds = stamp / 1000 if stamp > 10**11 else stamp
    return time.strftime("%d %B %Y", time.gmtime(seconds))


_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["https_only"] = https_only
_ENV.filters["date"] = date


def render(template: str, status: int = 200, headers: dict | None = None, *, prefix: str = "",
           **context) -> HTMLResponse:
    """A page: the template with `context` (every value escaped), and the security headers.
    `prefix` is the issuer URL's path, before every link and form action of the page."""
    body = _ENV.get_template(template).render(stylesheet=STYLESHEET_PATH, prefix=prefix, **context)
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def stylesheet() -> Response:
    return Response(STYLESHEET, media_type="text/css; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

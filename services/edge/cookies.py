"""The browser's cookies: the session cookie the authorization_code service names,
and the edge's own CSRF cookie.

Names: `__Host-inbound_session` and `__Host-inbound_csrf` when the issuer URL is
https (Secure, Path=/, no Domain: RFC 6265bis §4.1.3.2, so neither a sibling
subdomain nor a plain-http answer can set or overwrite them); `inbound_session`
and `inbound_csrf` on plain http (a loopback development server). Both HttpOnly
and SameSite=Lax: sent on top-level navigations from a client (the authorization
request), never on a cross-site POST or subrequest.

CSRF (a double-submit cookie, OWASP): the CSRF cookie holds a random 256-bit
value and every form carries the same value as `csrf_token`. A POST is accepted
only when the cookie is present and the form's token equals it (compared in
constant time), and, when the browser says where the form came from, when that
is this origin: `Sec-Fetch-Site` same-origin (or none: typed by the user),
`Origin` this issuer's origin (or `null`, which browsers send for every POST
from a page under Referrer-Policy: no-referrer, as ours are). Another site can
neither read the cookie nor the page (same-origin policy), nor set the cookie:
over https it is `__Host-` (only this exact origin, over TLS, may set it: the
weakness of plain double-submit, a cookie planted from a sibling subdomain or
over plain http, is closed without a server-side key); on the plain-http
loopback development server a page of another local port is same-site, which
Sec-Fetch-Site refuses. No key: every edge replica accepts every other's forms.
"""
from __future__ import annotations

import hmac
import re
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

CSRF_FIELD = "csrf_token"
# Sec-Fetch-Site values of a request this site's own page made (or the user typed).
_OWN_FETCH_SITES = frozenset({"same-origin", "none"})
_CSRF_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


class BrowserCookies:
    def __init__(self, issuer: str):
        parts = urlsplit(issuer)
        self.secure = parts.scheme == "https"
        prefix = "__Host-" if self.secure else ""
        self.session_name = prefix + "inbound_session"
        self.csrf_name = prefix + "inbound_csrf"
        self.origin = _origin(parts.scheme, parts.hostname or "", parts.port)

    # --- the session cookie (its value is the service's; the edge only carries it) ---

    def session_id(self, request: Request) -> str:
        return request.cookies.get(self.session_name, "")

    def apply_session(self, response: Response, session) -> None:
        """Set or clear the session cookie as the service's outcome says (None: leave it)."""
        if session is None:
            return
        if session.clear or not session.session_id:
            response.delete_cookie(self.session_name, path="/", secure=self.secure, httponly=True, samesite="lax")
            return
        # No lifetime given: a browser-session cookie (Max-Age=0 would delete it at once).
        max_age = int(session.max_age_seconds) if session.max_age_seconds > 0 else None
        response.set_cookie(self.session_name, session.session_id, max_age=max_age, path="/", secure=self.secure,
                            httponly=True, samesite="lax")

    # --- CSRF ---

    def csrf_token(self, request: Request) -> tuple[str, str]:
        """The token for this page's forms, and the new cookie value to set ("" when the
        browser's cookie is kept)."""
        current = request.cookies.get(self.csrf_name, "")
        if _plausible(current):
            return current, ""
        fresh = secrets.token_urlsafe(32)
        return fresh, fresh

    def set_csrf(self, response: Response, value: str) -> None:
        if value:  # a browser-session cookie: no Max-Age
            response.set_cookie(self.csrf_name, value, path="/", secure=self.secure, httponly=True, samesite="lax")

    def same_origin(self, request: Request) -> bool:
        """What the browser says of the form's origin, where it says anything."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in _OWN_FETCH_SITES:
            return False
        origin = request.headers.get("origin")
        return origin is None or origin == "null" or origin.lower() == self.origin

    def valid_token(self, request: Request, token: str) -> bool:
        cookie = request.cookies.get(self.csrf_name, "")
        if not _plausible(cookie) or not token:
            return False
        return hmac.compare_digest(cookie.encode("ascii"), token.encode("utf-8", "replace"))


def _origin(scheme: str, host: str, port: int | None) -> str:
    """An origin as a browser serialises it in `Origin` (RFC 6454 §6.2): the default port left out."""
    host = f"[{host}]" if ":" in host else host
    if port is None or port == {"https": 443, "http": 80}.get(scheme):
        return f"{scheme}://{host}".lower()
    return f"{scheme}://{host}:{port}".lower()


def _plausible(value: str) -> bool:
    """A CSRF cookie value as this edge makes them (43 url-safe characters), not anything a browser sent."""
    return _CSRF_VALUE.fullmatch(value) is not None

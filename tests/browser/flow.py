"""The browser side of the tests of issue 9: Debian's Chromium driven by Playwright,
a client's redirect URI to land on, and the steps of the flow as a user takes them.

Chromium is /usr/bin/chromium (`make chromium`, part of `make test`, installs
Debian's package); Playwright never downloads a browser. A machine without it
fails the browser tests, saying so: they never pass by being skipped.

The pages are found the way a user (or a screen reader) finds them: by their
labels and the accessible names of their buttons, never by CSS classes, so a
page that loses a label fails here as it would fail a user. What the tests rely on:
- the sign-in page: a field labelled "Username" (or "Email"), one labelled
  "Password" (input type=password), a "Sign in" button;
- the consent page: an "Allow" (or Approve/Accept) and a "Deny" (or Cancel) button;
- the account page: a "Withdraw" button per consent, a "Sign out" button;
- every form: a hidden input whose name contains "csrf".

The redirect URI is a loopback address served by `CallbackServer` (a plain
http.server on a port the OS gives it, held for the session): Playwright's
routing does not see the requests a redirect leads to, and a fragment (the
implicit response) never reaches a server, so the test reads the URL the
browser landed on (query and fragment) from the page itself.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import re
import secrets
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

CHROMIUM = Path("/usr/bin/chromium")
# RECIPES.md "A real browser": headless as root, no sandbox, and no background
# networking (this machine's closed network refuses those connections).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"
SIZES = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}
PASSWORD = "correct horse battery staple"

USERNAME_LABEL = re.compile(r"user ?name|e-?mail", re.I)
PASSWORD_LABEL = re.compile(r"password", re.I)
SIGN_IN_BUTTON = re.compile(r"sign in|log in", re.I)
ALLOW_BUTTON = re.compile(r"^\s*(allow|approve|accept|authori[sz]e|yes)", re.I)
DENY_BUTTON = re.compile(r"^\s*(deny|cancel|decline|no\b)", re.I)
WITHDRAW_BUTTON = re.compile(r"withdraw|revoke|remove", re.I)
SIGN_OUT_BUTTON = re.compile(r"sign out|log out", re.I)
CSRF_INPUT = "input[type=hidden][name*=csrf i]"


def missing_chromium_message() -> str:
    return (f"{CHROMIUM} is missing: the browser tests need Debian's chromium (`make chromium` installs it "
            f"as root: apt-get install -y chromium). They fail rather than skip, so a machine without it "
            f"never passes them.")


# --- PKCE (RFC 7636 §4.1, §4.2), computed here independently of libs/inboundlib/oauth/pkce.py -------

def pkce_pair() -> tuple[str, str]:
    """A code verifier (43 unreserved characters) and its S256 challenge."""
    verifier = secrets.token_urlsafe(32)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


# --- the client's redirect URI ----------------------------------------------------------------------

class _Callback(http.server.BaseHTTPRequestHandler):
    """The client's page behind its redirect URI: a plain page (no script), and a
    note of every request's path and query (a fragment never reaches a server)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.seen.append(self.path)  # type: ignore[attr-defined]
        body = b"<!doctype html><title>Client callback</title><p>The client received the response.</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class CallbackServer:
    """http://127.0.0.1:<port>/...: loopback redirect URIs (RFC 8252 §7.3) for the session's clients."""

    def __init__(self):
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Callback)
        self._server.seen = []  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="client-callback", daemon=True)
        self._thread.start()
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"

    def redirect_uri(self) -> str:
        """A redirect URI of its own for one client: requests to it tell whose they are."""
        return f"{self.base}/cb/{secrets.token_hex(6)}"

    def requests_to(self, redirect_uri: str) -> list[str]:
        path = urlsplit(redirect_uri).path
        return [p for p in self._server.seen if urlsplit(p).path == path]  # type: ignore[attr-defined]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- reading where the browser landed ----------------------------------------------------------------

@dataclass(frozen=True)
class Landing:
    """The URL the browser landed on at the client, its query and its fragment as parameters."""
    url: str
    query: dict[str, str]
    fragment: dict[str, str]


def landing(url: str) -> Landing:
    parts = urlsplit(url)

    def params(text: str) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}

    return Landing(url=url, query=params(parts.query), fragment=params(parts.fragment))


def authorize_url(edge_url: str, **params: str) -> str:
    return f"{edge_url}/oauth/authorize?{urlencode({k: v for k, v in params.items() if v is not None})}"


# --- the pages ----------------------------------------------------------------------------------------

def username_field(page):
    return page.get_by_label(USERNAME_LABEL).first


def password_field(page):
    return page.locator("input[type=password]")


async def is_sign_in_page(page) -> bool:
    return await password_field(page).count() > 0


async def is_consent_page(page) -> bool:
    return await page.get_by_role("button", name=ALLOW_BUTTON).count() > 0


async def submit(page, button):
    """Click a form's button; the response of the navigation it causes."""
    async with page.expect_navigation() as navigation:
        await button.click()
    return await navigation.value


async def describe(page) -> str:
    """Where the browser is and what it shows, for an assertion's message."""
    try:
        text = " ".join((await page.locator("body").inner_text(timeout=5_000)).split())
    except Exception as exc:  # the page may be gone or blank; say so rather than hide the first failure
        text = f"<no text: {type(exc).__name__}>"
    return f"{page.url} showing: {text[:600]!r}"


async def sign_in(page, username: str, password: str):
    """Fill in and post the sign-in form; the response to the post (after redirects).

    A sign-in answered "not possible right now" (the directory could not check it in time:
    a machine loaded by other test runs makes an argon2 check outlast the registry client's
    timeout; services/client_registry/users.py) is tried again, as its text asks a user to:
    that answer leaves the attempt unchecked, and any other answer is the test's to judge."""
    from services.authorization_code.authorize import SIGN_IN_UNAVAILABLE
    from tests.support import eventually

    async def attempt():
        assert await is_sign_in_page(page), f"expected the sign-in page at {await describe(page)}"
        await username_field(page).fill(username)
        await password_field(page).fill(password)
        response = await submit(page, page.get_by_role("button", name=SIGN_IN_BUTTON))
        unavailable = await is_sign_in_page(page) and await page.get_by_text(SIGN_IN_UNAVAILABLE).count() > 0
        return None if unavailable else response

    return await eventually(attempt, until=lambda response: response is not None, timeout=90,
                            message="a sign-in the directory could check")


async def consent(page, approve: bool = True):
    assert await is_consent_page(page), f"expected the consent page at {await describe(page)}"
    return await submit(page, page.get_by_role("button", name=ALLOW_BUTTON if approve else DENY_BUTTON))


async def wait_for_client(page, redirect_uri: str) -> Landing:
    def at_client(url: str) -> bool:
        return url == redirect_uri or url.startswith((redirect_uri + "?", redirect_uri + "#"))

    if not at_client(page.url):
        try:
            await page.wait_for_url(at_client, timeout=30_000)
        except Exception:
            raise AssertionError(f"the browser was not sent to {redirect_uri}: it is at {await describe(page)}")
    return landing(page.url)


async def screenshot(page, name: str) -> None:
    """build/screenshots/<name>-phone.png and -desktop.png: the page as it is, at both sizes."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    original = page.viewport_size
    try:
        for size, viewport in SIZES.items():
            await page.set_viewport_size(viewport)
            await page.screenshot(path=str(SCREENSHOTS / f"{name}-{size}.png"), full_page=True)
    finally:
        if original:
            await page.set_viewport_size(original)


@contextmanager
def no_new_requests(callback: CallbackServer, redirect_uri: str):
    """Assert that nothing reached the client's redirect URI inside the block."""
    before = len(callback.requests_to(redirect_uri))
    yield
    assert callback.requests_to(redirect_uri)[before:] == [], "the browser was sent to the client"


# --- users, clients and tokens on a stack (the registry's API, as the operator) ----------------------

async def create_user(stack, *, password: str = PASSWORD, **spec):
    """A user of `stack` (any Stack: the session's or a private one) with `password`; the record."""
    from services.client_registry.api import UserSpec
    from services.client_registry.client import RegistryClient
    from tests.support import OPERATOR

    spec.setdefault("username", "browser-" + secrets.token_hex(5))
    spec.setdefault("display_name", "Ada Browser")
    spec.setdefault("email", spec["username"] + "@example.org")
    channel = stack.channel("client_registry", caller=OPERATOR)
    try:
        return await RegistryClient(channel).create_user(UserSpec(password=password, **spec))
    finally:
        await channel.close()


async def get_user(stack, user_id: str):
    from services.client_registry.client import RegistryClient
    from tests.support import OPERATOR

    channel = stack.channel("client_registry", caller=OPERATOR)
    try:
        return await RegistryClient(channel).get_user(id=user_id)
    finally:
        await channel.close()


async def code_client(stack, callback: CallbackServer, **spec):
    """A confidential client of the code flow with a redirect URI of its own: (record, secret)."""
    from tests.support import register_client

    spec.setdefault("grant_types", ["authorization_code", "refresh_token"])
    spec.setdefault("scopes", ["openid", "profile", "email"])
    spec.setdefault("redirect_uris", [callback.redirect_uri()])
    spec.setdefault("name", "Browser test client " + secrets.token_hex(3))
    return await register_client(stack, **spec)


def exchange_code(edge_url: str, client, secret: str, code: str, verifier: str, redirect_uri: str | None = None):
    """RFC 6749 §4.1.3 with RFC 7636 §4.5, the client authenticating with HTTP Basic; the httpx response."""
    import httpx

    return httpx.post(f"{edge_url}/oauth/token", auth=(client.client_id, secret) if secret else None, data={
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
        "redirect_uri": redirect_uri or client.redirect_uris[0],
        **({} if secret else {"client_id": client.client_id})}, timeout=30)


# --- an authorization request, as a client's page would send the browser ---------------------------

@dataclass(frozen=True)
class AuthRequest:
    url: str
    redirect_uri: str
    state: str
    verifier: str
    nonce: str


def auth_request(edge_url: str, client, *, scope: str = "openid profile", response_type: str = "code",
                 redirect_uri: str | None = None, pkce: bool = True, nonce: str | None = None,
                 **extra: str) -> AuthRequest:
    """RFC 6749 §4.1.1 (or §4.2.1) with a fresh state, an S256 challenge (RFC 7636 §4.3) and a nonce."""
    redirect_uri = redirect_uri or client.redirect_uris[0]
    state, nonce = secrets.token_urlsafe(12), nonce if nonce is not None else secrets.token_urlsafe(12)
    verifier, challenge = pkce_pair() if pkce else ("", "")
    params = {"response_type": response_type, "client_id": client.client_id, "redirect_uri": redirect_uri,
              "scope": scope, "state": state, "nonce": nonce or None}
    if pkce:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    return AuthRequest(url=authorize_url(edge_url, **params, **extra), redirect_uri=redirect_uri, state=state,
                       verifier=verifier, nonce=nonce)


async def code_flow(page, edge_url: str, client, username: str, *, password: str = PASSWORD,
                    scope: str = "openid profile", shoot: bool = False) -> tuple[AuthRequest, Landing]:
    """Authorize, sign in, consent, land at the client: the request and where the browser landed."""
    request = auth_request(edge_url, client, scope=scope)
    await page.goto(request.url)
    if shoot:
        await screenshot(page, "sign-in")
    await sign_in(page, username, password)
    if shoot:
        await screenshot(page, "consent")
    await consent(page)
    return request, await wait_for_client(page, request.redirect_uri)

"""The demo client of `make run`: a tiny web app that signs its user in with Inbound,
as a public client would (OpenID Connect Core §3.1, the authorization code flow,
RFC 7636 PKCE with S256, RFC 9700 §2.1.1).

A DEVELOPMENT TOOL ONLY: it binds to 127.0.0.1 alone (there is no option to change
that), keeps its pending sign-ins and results in memory, and shows the tokens it
receives on a page, which no real client should do. `make run` starts it
(services/devstack.py) and registers its callback as the redirect URI of the demo
public client `demo-web`.

- GET /            the start page (a link to /start, or the last result of this browser)
- GET /start       makes a PKCE verifier (S256), `state` and `nonce`, remembers them for
                   this browser (a random cookie) and redirects to Inbound's /oauth/authorize
- GET /callback    checks `state` against this browser's (RFC 6749 §10.12) and `iss`
                   (RFC 9207), exchanges the code at the token endpoint with the verifier,
                   validates the ID token (signature against the JWKS, iss, aud, exp, nonce,
                   at_hash), then redirects to /result, so a reload never sends the code again
- GET /result      the tokens: access token, refresh token, the ID token's claims (escaped), and a
                   "Sign out of Inbound" button (RP-initiated logout, with the ID token as hint)
- GET /signed-out  where Inbound sends the browser back after that sign-out: this browser's result is
                   forgotten

Nothing here logs a code or a token (uvicorn's access log, which would print the
callback's query, is off). Cookies do not tell ports apart (RFC 6265 §8.5): on
127.0.0.1 the browser also sends Inbound's cookies to this page, which neither
reads nor logs them; a real client lives on a host of its own.

    python -m services.demo_client --issuer http://127.0.0.1:8080 --client-id ID --port 8090
"""
from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
from jinja2 import Environment
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from inboundlib.oauth import oidc, pkce

HOST = "127.0.0.1"  # loopback only: a development tool
DEFAULT_PORT = 8090
SCOPE = "openid profile email"
CALLBACK_PATH = "/callback"
SIGNED_OUT_PATH = "/signed-out"
COOKIE = "demo_client_flow"
PENDING_LIFETIME = 600  # seconds a started sign-in may take (Inbound's pending requests last as long)
MAX_BROWSERS = 1000  # pending sign-ins and results kept; the oldest go first
# Asymmetric JWS algorithms only: never `none`, never an HMAC keyed with something public.
ID_TOKEN_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
PAGE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                "X-Content-Type-Options": "nosniff"}

_env = Environment(autoescape=True)
_PAGE = _env.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · Inbound demo client</title><link rel="stylesheet" href="/demo.css"></head>
<body><main>
<p class="tag">Inbound demo client · a development tool on 127.0.0.1, never for production</p>
<h1>{{ title }}</h1>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
{% if result %}
<p>Signed in with Inbound as <strong>{{ result.claims.get("preferred_username") or result.claims.sub }}</strong>.
The code was exchanged for these tokens (client <code>{{ client_id }}</code>, PKCE S256); the ID token's
signature, issuer, audience, expiry and nonce were checked{% if result.at_hash_checked %}, and its
<code>at_hash</code> matches the access token{% endif %}.</p>
<h2>ID token claims</h2>
<pre id="id-token-claims">{{ result.claims_json }}</pre>
<h2>Access token</h2>
<p>{{ result.token_type }}, expires in {{ result.expires_in }} s, scope <code id="scope">{{ result.scope }}</code></p>
<pre id="access-token">{{ result.access_token }}</pre>
<h2>Refresh token</h2>
<pre id="refresh-token">{{ result.refresh_token or "(none)" }}</pre>
<h2>ID token</h2>
<pre id="id-token">{{ result.id_token }}</pre>
{% endif %}
<p class="actions"><a class="button" href="/start">Sign in with Inbound</a>
{% if account_url %}<a href="{{ account_url }}">Your Inbound account</a>{% endif %}</p>
{% if end_session_url and result %}
<form method="post" action="{{ end_session_url }}">
<input type="hidden" name="id_token_hint" value="{{ result.id_token }}">
<input type="hidden" name="client_id" value="{{ client_id }}">
<input type="hidden" name="post_logout_redirect_uri" value="{{ signed_out_url }}">
<button type="submit">Sign out of Inbound</button></form>
{% endif %}
</main></body></html>
""")
_CSS = """body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1b1f24}
main{max-width:52rem;margin:0 auto;padding:1.5rem}
h1{font-size:1.6rem}h2{font-size:1.1rem;margin-top:1.5rem}
.tag{font-size:.85rem;color:#6a4a00;background:#fff3cd;padding:.25rem .5rem;border-radius:.25rem;display:inline-block}
pre{background:#fff;border:1px solid #d0d4da;padding:.75rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.error{color:#8a1111;background:#fde8e8;padding:.5rem .75rem;border-radius:.25rem}
.actions{display:flex;gap:1rem;align-items:center;flex-wrap:wrap}
.button,button{background:#0b57d0;color:#fff;border:0;padding:.6rem 1rem;border-radius:.3rem;text-decoration:none;
font:inherit;cursor:pointer}
a{color:#0b57d0}
"""


@dataclass
class Pending:
    """A sign-in this browser started: what the callback checks and sends."""
    state: str = field(repr=False)
    verifier: str = field(repr=False)
    nonce: str = field(repr=False)
    created: float


@dataclass
class Result:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    id_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str
    claims: dict
    at_hash_checked: bool

    @property
    def claims_json(self) -> str:
        return json.dumps(self.claims, indent=2, sort_keys=True)


class Refused(Exception):
    """The callback refuses the answer; the message is shown to the user."""


class DemoClient:
    """The demo client's state and its OAuth steps (the routes below are thin)."""

    def __init__(self, issuer: str, client_id: str, base_url: str, *, scope: str = SCOPE,
                 http: httpx.AsyncClient | None = None):
        self.issuer = issuer
        self.client_id = client_id
        self.base_url = base_url.rstrip("/")
        self.redirect_uri = self.base_url + CALLBACK_PATH
        self.scope = scope
        self.http = http or httpx.AsyncClient(timeout=10.0)
        self.pending: dict[str, Pending] = {}
        self.results: dict[str, Result] = {}
        self._metadata: dict | None = None

    async def metadata(self) -> dict:
        """OpenID Connect Discovery 1.0 §4: the issuer's configuration (its issuer must be ours)."""
        if self._metadata is None:
            reply = await self.http.get(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
            reply.raise_for_status()
            document = reply.json()
            if document.get("issuer") != self.issuer:
                raise Refused(f"the discovery document names issuer {document.get('issuer')!r}, not {self.issuer!r}")
            self._metadata = document
        return self._metadata

    def _remember(self, store: dict, key: str, value) -> None:
        store[key] = value
        while len(store) > MAX_BROWSERS:
            store.pop(next(iter(store)))

    async def start(self, browser: str) -> str:
        """A new sign-in for `browser`: its authorization request URL."""
        metadata = await self.metadata()
        pending = Pending(state=secrets.token_urlsafe(32), verifier=secrets.token_urlsafe(48),
                          nonce=secrets.token_urlsafe(32), created=time.monotonic())
        self._remember(self.pending, browser, pending)
        query = urlencode({"response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
                           "scope": self.scope, "state": pending.state, "nonce": pending.nonce,
                           "code_challenge": pkce.s256(pending.verifier), "code_challenge_method": pkce.S256})
        return f"{metadata['authorization_endpoint']}?{query}"

    async def callback(self, browser: str, params) -> Result:
        """The authorization response (RFC 6749 §4.1.2) for `browser`: checked, exchanged, validated."""
        pending = self.pending.pop(browser, None) if browser else None
        state = params.get("state", "")
        # RFC 6749 §10.12: the state must be the one this browser's request carried (login CSRF).
        if pending is None or not hmac.compare_digest(state.encode(), pending.state.encode()):
            if pending is not None:
                self.pending[browser] = pending  # a forged callback does not end the real sign-in
            raise Refused("The state does not match a sign-in this browser started here: nothing was exchanged.")
        if time.monotonic() - pending.created > PENDING_LIFETIME:
            raise Refused("This sign-in was started too long ago; start again.")
        metadata = await self.metadata()
        # RFC 9207 §2.4: the answer must come from the issuer the request went to (mix-up defence).
        iss = params.get("iss")
        if (iss is not None or metadata.get("authorization_response_iss_parameter_supported")) and iss != self.issuer:
            raise Refused("The authorization response names another issuer: nothing was exchanged.")
        if params.get("error"):
            raise Refused(f"Inbound answered {params.get('error')}: {params.get('error_description', '')}")
        code = params.get("code")
        if not code:
            raise Refused("The authorization response has no code.")
        reply = await self.http.post(metadata["token_endpoint"], data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
            "client_id": self.client_id, "code_verifier": pending.verifier})
        try:
            answer = reply.json()
        except ValueError:
            answer = {}
        if reply.status_code != 200:
            raise Refused(f"The token endpoint answered {reply.status_code}: {answer.get('error', '')} "
                          f"{answer.get('error_description', '')}")
        id_token = answer.get("id_token", "")
        if not id_token:
            raise Refused("The token endpoint answered without an ID token (was the openid scope granted?).")
        claims, at_hash_checked = await self.validate_id_token(id_token, pending.nonce, answer.get("access_token", ""))
        result = Result(access_token=answer.get("access_token", ""), refresh_token=answer.get("refresh_token", ""),
                        id_token=id_token, token_type=answer.get("token_type", ""),
                        expires_in=int(answer.get("expires_in", 0)), scope=answer.get("scope", ""), claims=claims,
                        at_hash_checked=at_hash_checked)
        self._remember(self.results, browser, result)
        return result

    async def validate_id_token(self, id_token: str, nonce: str, access_token: str) -> tuple[dict, bool]:
        """OpenID Connect Core §3.1.3.7: signature by a key of the issuer's JWKS, iss, aud (this client),
        exp, iat, nonce (the one this browser's request sent), and at_hash (§3.1.3.8) when present."""
        metadata = await self.metadata()
        algorithms = [a for a in metadata.get("id_token_signing_alg_values_supported", ["RS256"])
                      if a in ID_TOKEN_ALGS]
        try:
            header = jwt.get_unverified_header(id_token)
            reply = await self.http.get(metadata["jwks_uri"])
            reply.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(reply.json())
            key = keys[header.get("kid", "")]
            claims = jwt.decode(id_token, key=key, algorithms=algorithms, audience=self.client_id,
                                issuer=self.issuer, options={"require": ["iss", "sub", "aud", "exp", "iat"]})
        except (jwt.PyJWTError, KeyError, httpx.HTTPError, ValueError) as exc:
            raise Refused(f"The ID token is not valid: {type(exc).__name__}: {exc}") from None
        if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise Refused("The ID token's nonce is not the one this sign-in sent.")
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token:
            if not hmac.compare_digest(at_hash.encode(), oidc.half_hash(access_token, header["alg"]).encode()):
                raise Refused("The ID token's at_hash does not match the access token.")
        return claims, at_hash is not None


def create_app(client: DemoClient) -> Starlette:
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(client.issuer))
    # No script at all; the sign-out form posts to Inbound.
    csp = f"default-src 'none'; style-src 'self'; form-action 'self' {origin}; frame-ancestors 'none'; base-uri 'none'"

    def page(title: str, status: int = 200, *, error: str = "", result: Result | None = None) -> HTMLResponse:
        metadata = client._metadata or {}
        html = _PAGE.render(title=title, error=error, result=result, client_id=client.client_id,
                            signed_out_url=client.base_url + SIGNED_OUT_PATH,
                            account_url=client.issuer.rstrip("/") + "/account",
                            end_session_url=metadata.get("end_session_endpoint", ""))
        return HTMLResponse(html, status, headers={**PAGE_HEADERS, "Content-Security-Policy": csp})

    async def home(request: Request) -> Response:
        result = client.results.get(request.cookies.get(COOKIE, ""))
        return page("Signed in" if result else "Sign in with a browser", result=result)

    async def start(request: Request) -> Response:
        browser = request.cookies.get(COOKIE) or secrets.token_urlsafe(32)
        try:
            location = await client.start(browser)
        except (httpx.HTTPError, Refused, KeyError, ValueError) as exc:
            return page("Inbound is not reachable", 502, error=f"Could not read Inbound's configuration: "
                                                               f"{type(exc).__name__}")
        response = RedirectResponse(location, 302, headers=PAGE_HEADERS)
        response.set_cookie(COOKIE, browser, max_age=PENDING_LIFETIME * 6, httponly=True, samesite="lax",
                            path="/")
        return response

    async def callback(request: Request) -> Response:
        try:
            await client.callback(request.cookies.get(COOKIE, ""), request.query_params)
        except Refused as exc:
            return page("Sign-in refused", 400, error=str(exc))
        except httpx.HTTPError as exc:
            return page("Inbound is not reachable", 502, error=f"The token endpoint could not be reached: "
                                                               f"{type(exc).__name__}")
        return RedirectResponse("/result", 303, headers=PAGE_HEADERS)

    async def result(request: Request) -> Response:
        found = client.results.get(request.cookies.get(COOKIE, ""))
        if found is None:
            return RedirectResponse("/", 303, headers=PAGE_HEADERS)
        return page("Signed in", result=found)

    async def signed_out(request: Request) -> Response:
        client.results.pop(request.cookies.get(COOKIE, ""), None)
        return page("Signed out of Inbound")

    async def css(request: Request) -> Response:
        return Response(_CSS, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await client.http.aclose()

    return Starlette(routes=[Route("/", home), Route("/start", start), Route(CALLBACK_PATH, callback),
                             Route("/result", result), Route(SIGNED_OUT_PATH, signed_out), Route("/demo.css", css)],
                     lifespan=lifespan)


def base_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def redirect_uri(port: int) -> str:
    """The demo client's redirect URI when it listens on `port` (what the registry holds for demo-web)."""
    return base_url(port) + CALLBACK_PATH


def post_logout_redirect_uri(port: int) -> str:
    """Where Inbound sends the browser after the demo page's sign-out (registered for demo-web)."""
    return base_url(port) + SIGNED_OUT_PATH


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m services.demo_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--issuer", required=True, help="Inbound's issuer URL (the edge)")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args()
    app = create_app(DemoClient(args.issuer, args.client_id, base_url(args.port)))
    uvicorn.run(app, host=HOST, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()

"""The edge's browser routes with an in-memory AuthorizationApi (httpx over ASGI, no
network): outcomes rendered as they are (redirects to exactly the service's Location,
error pages that never redirect, the sign-in and consent pages), the session and
CSRF cookies, CSRF refusals that call nothing, the pages' security headers and
markup, UserInfo's RFC 6750 errors, and the discovery documents. The same routes
run against the real authorization_code service in tests/integration and in
Chromium in tests/browser."""
from __future__ import annotations

import asyncio
from html.parser import HTMLParser
from http.cookies import SimpleCookie

import httpx
import pytest

from inboundlib.oauth.errors import InsufficientScope, InvalidToken
from inboundlib.oauth.oidc import SUPPORTED_CLAIMS
from services.authorization_code import api
from services.edge.app import EdgeConfig, create_app
from tests.fakes import FakeGrant, FakeTokens

ISSUER = "https://as.example.com"
FORM = {"content-type": "application/x-www-form-urlencoded"}
CLIENT = api.ClientDisplay(client_id="app", name="Example App", logo_url="https://cdn.example/logo.png")
SIGN_IN = api.SignInPage(request_id="pending-1", client=CLIENT)
CONSENT = api.ConsentPage(request_id="pending-1", client=CLIENT,
                          scopes=(api.ScopeDisplay("profile", "See your name and username"),),
                          also_granted=(api.ScopeDisplay("openid", "Know who you are"),), user_display="Ada")
CODE_REDIRECT = "https://app.example/cb?code=ibc_x&state=s%201&iss=https%3A%2F%2Fas.example.com"
SESSION = api.SessionCookie(session_id="session-value-1", max_age_seconds=28800)


class FakeAuthorization(FakeGrant):
    """The authorization_code service as the edge sees it: its grant (handle) and the
    AuthorizationApi. Answers what the test set; records every call."""

    def __init__(self):
        super().__init__("authorization_code")
        self.calls: list[tuple] = []
        self.authorize_outcome = api.AuthorizeOutcome(SIGN_IN)
        self.sign_in_outcome = api.AuthorizeOutcome(CONSENT, session=SESSION)
        self.consent_outcome = api.AuthorizeOutcome(api.Redirect(CODE_REDIRECT))
        self.account_result = api.Account(signed_in=False)
        self.end_session_outcome = api.EndSessionOutcome(api.ErrorPage("", "", 200),
                                                         session=api.SessionCookie(clear=True))
        self.user_info_result: dict | Exception = {"sub": "u1", "name": "Ada"}

    async def authorize(self, params, session_id, *, context=api.NO_CONTEXT, request_id=""):
        self.calls.append(("authorize", dict(params), session_id, context))
        return self.authorize_outcome

    async def sign_in(self, pending_request_id, username, password, session_id, *, context=api.NO_CONTEXT,
                      request_id=""):
        self.calls.append(("sign_in", pending_request_id, username, password, session_id))
        return self.sign_in_outcome

    async def consent(self, pending_request_id, session_id, approve, *, context=api.NO_CONTEXT, request_id=""):
        self.calls.append(("consent", pending_request_id, session_id, approve))
        return self.consent_outcome

    async def account(self, session_id, *, request_id=""):
        self.calls.append(("account", session_id))
        return self.account_result

    async def withdraw_consent(self, session_id, client_id, *, context=api.NO_CONTEXT, request_id=""):
        self.calls.append(("withdraw_consent", session_id, client_id))
        return self.account_result

    async def end_session(self, session_id, params, *, user_confirmed=False, context=api.NO_CONTEXT,
                          request_id=""):
        self.calls.append(("end_session", session_id, dict(params), user_confirmed))
        return self.end_session_outcome

    async def user_info(self, access_token, *, request_id=""):
        self.calls.append(("user_info", access_token))
        if isinstance(self.user_info_result, Exception):
            raise self.user_info_result
        return self.user_info_result


def browser(service: FakeAuthorization | None = None, *, issuer: str = ISSUER) -> httpx.AsyncClient:
    grants = {"client_credentials": FakeGrant()}
    if service is not None:
        grants["authorization_code"] = service
    config = EdgeConfig(issuer=issuer, grants=grants, jwks=lambda: asyncio.sleep(0, {"keys": []}),
                        tokens=FakeTokens())
    transport = httpx.ASGITransport(app=create_app(config), client=("198.51.100.9", 40000))
    return httpx.AsyncClient(transport=transport, base_url=issuer)


class Page(HTMLParser):
    """What the tests read of a page: its elements with their attributes, and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    def field(self, name: str) -> str:
        return self.all("input", name=name)[0]["value"]


def set_cookies(reply: httpx.Response) -> dict[str, dict]:
    """Each Set-Cookie of the reply by name: its value and attributes (lower-cased names)."""
    result = {}
    for header in reply.headers.get_list("set-cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        for name, morsel in cookie.items():
            flags = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
            result[name] = {"value": morsel.value, "max-age": morsel["max-age"], "path": morsel["path"],
                            "samesite": morsel["samesite"], "secure": "secure" in flags, "httponly": "httponly" in flags}
    return result


async def sign_in_page(http: httpx.AsyncClient) -> Page:
    reply = await http.get("/oauth/authorize", params={"client_id": "app"})
    assert reply.status_code == 200
    return Page(reply.text)


# --- outcomes ---------------------------------------------------------------------------------------


async def test_the_authorization_request_reaches_the_service_as_sent_repeats_included():
    service = FakeAuthorization()
    async with browser(service) as http:
        await http.get("/oauth/authorize?client_id=app&scope=a&scope=b&state=x%20y")
        http.cookies.set("__Host-inbound_session", "s1", domain="as.example.com")
        await http.post("/oauth_auth.do", content=b"client_id=app&response_type=code&response_type=code",
                        headers=FORM)
    (_, get_params, session_id, context), (_, post_params, _, _) = service.calls
    assert get_params == {"client_id": ("app",), "scope": ("a", "b"), "state": ("x y",)}
    assert post_params == {"client_id": ("app",), "response_type": ("code", "code")}
    assert session_id == "" and service.calls[1][2] == "s1"
    assert context.client_address == "198.51.100.9" and context.endpoint_url == ISSUER + "/oauth/authorize"


async def test_a_redirect_after_get_is_302_to_exactly_the_services_location():
    service = FakeAuthorization()
    service.authorize_outcome = api.AuthorizeOutcome(api.Redirect(CODE_REDIRECT))
    async with browser(service) as http:
        reply = await http.get("/oauth/authorize", params={"client_id": "app"})
    assert reply.status_code == 302
    assert reply.headers["location"] == CODE_REDIRECT


async def test_the_location_is_the_services_byte_for_byte():
    service = FakeAuthorization()
    odd = "com.example.app:/cb?code=ibc_x&state=a|b{c}^`&iss=https%3A%2F%2Fas.example.com#x"
    service.authorize_outcome = api.AuthorizeOutcome(api.Redirect(odd))
    async with browser(service) as http:
        reply = await http.get("/oauth/authorize")
    assert reply.status_code == 302 and reply.headers["location"] == odd


@pytest.mark.parametrize("location", ["https://app.example/cb\r\nSet-Cookie: x=1", "https://app.example/c b",
                                      "https://app.example/cb\u00e9", ""])
async def test_a_location_that_is_no_uri_is_a_500_page_and_no_redirect(location):
    service = FakeAuthorization()
    service.authorize_outcome = api.AuthorizeOutcome(api.Redirect(location.encode().decode("unicode_escape")))
    async with browser(service) as http:
        reply = await http.get("/oauth/authorize")
    assert reply.status_code == 500 and "location" not in reply.headers and "x=1" not in reply.headers.get(
        "set-cookie", "")


async def test_a_redirect_after_post_is_303_to_exactly_the_services_location():
    service = FakeAuthorization()
    service.consent_outcome = api.AuthorizeOutcome(api.Redirect(CODE_REDIRECT + "#frag"))
    async with browser(service) as http:
        page = await sign_in_page(http)
        reply = await http.post("/oauth/authorize/consent", data={
            "csrf_token": page.field("csrf_token"), "request_id": "pending-1", "decision": "allow"})
    assert reply.status_code == 303
    assert reply.headers["location"] == CODE_REDIRECT + "#frag"
    assert service.calls[-1] == ("consent", "pending-1", "", True)


async def test_deny_reaches_the_service_as_not_approved():
    service = FakeAuthorization()
    async with browser(service) as http:
        page = await sign_in_page(http)
        await http.post("/oauth/authorize/consent", data={
            "csrf_token": page.field("csrf_token"), "request_id": "pending-1", "decision": "deny"})
    assert service.calls[-1] == ("consent", "pending-1", "", False)


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_an_error_page_has_the_outcomes_status_and_never_redirects(status):
    service = FakeAuthorization()
    service.authorize_outcome = api.AuthorizeOutcome(api.ErrorPage(
        "invalid_request", "The redirect URI https://evil.example/ is not registered.", status))
    async with browser(service) as http:
        reply = await http.get("/oauth/authorize", params={"client_id": "app",
                                                           "redirect_uri": "https://evil.example/"})
    assert reply.status_code == status
    assert "location" not in reply.headers and "refresh" not in reply.headers
    page = Page(reply.text)
    assert page.all("meta", **{"http-equiv": "refresh"}) == [] and page.all("a") == []
    assert "The redirect URI https://evil.example/ is not registered." in reply.text


async def test_an_error_page_with_a_redirect_status_is_still_no_redirect():
    service = FakeAuthorization()
    service.authorize_outcome = api.AuthorizeOutcome(api.ErrorPage("invalid_request", "no", 302))
    async with browser(service) as http:
        reply = await http.get("/oauth/authorize")
    assert reply.status_code == 400 and "location" not in reply.headers


async def test_the_sign_in_page_posts_the_pending_request_and_the_credentials():
    service = FakeAuthorization()
    async with browser(service) as http:
        page = await sign_in_page(http)
        action = page.all("form")[0]["action"]
        reply = await http.post(action, data={"csrf_token": page.field("csrf_token"),
                                              "request_id": page.field("request_id"),
                                              "username": "ada", "password": "pw"})
    assert action == "/oauth/authorize/sign-in"
    assert reply.status_code == 200 and "Allow Example App access?" in reply.text
    assert service.calls[-1] == ("sign_in", "pending-1", "ada", "pw", "")


# --- cookies ------------------------------------------------------------------------------------------


async def test_the_session_cookie_over_https_is_host_prefixed_secure_httponly_lax_with_the_outcomes_max_age():
    service = FakeAuthorization()
    async with browser(service) as http:
        page = await sign_in_page(http)
        reply = await http.post("/oauth/authorize/sign-in", data={
            "csrf_token": page.field("csrf_token"), "request_id": "pending-1", "username": "a", "password": "b"})
        cookie = set_cookies(reply)["__Host-inbound_session"]
        assert cookie == {"value": "session-value-1", "max-age": "28800", "path": "/", "samesite": "lax",
                          "secure": True, "httponly": True}
        # The browser's next request carries it to the service.
        await http.get("/oauth/authorize", params={"client_id": "app"})
    assert service.calls[-1][2] == "session-value-1"


async def test_the_session_cookie_on_plain_http_has_no_prefix_and_no_secure_flag():
    service = FakeAuthorization()
    async with browser(service, issuer="http://127.0.0.1:8080") as http:
        page = await sign_in_page(http)
        reply = await http.post("/oauth/authorize/sign-in", data={
            "csrf_token": page.field("csrf_token"), "request_id": "pending-1", "username": "a", "password": "b"})
    cookies = set_cookies(reply)
    assert "__Host-inbound_session" not in cookies
    assert cookies["inbound_session"]["secure"] is False and cookies["inbound_session"]["httponly"] is True
    assert cookies["inbound_session"]["samesite"] == "lax"


async def test_the_csrf_cookie_is_httponly_lax_and_host_prefixed_over_https():
    async with browser(FakeAuthorization()) as http:
        reply = await http.get("/oauth/authorize", params={"client_id": "app"})
    cookie = set_cookies(reply)["__Host-inbound_csrf"]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "lax" and cookie["path"] == "/"
    # Double-submit: the form carries the cookie's value (services/edge/cookies.py).
    assert Page(reply.text).field("csrf_token") == cookie["value"]


async def test_a_session_cookie_the_outcome_clears_is_cleared():
    service = FakeAuthorization()
    async with browser(service) as http:
        http.cookies.set("__Host-inbound_session", "old", domain="as.example.com")
        page = await sign_in_page(http)
        reply = await http.post("/account/sign-out", data={"csrf_token": page.field("csrf_token")})
    assert reply.status_code == 200 and "You are signed out" in reply.text
    assert set_cookies(reply)["__Host-inbound_session"]["max-age"] == "0"
    # The user asked on our page (its CSRF token checked): the service may end the session outright.
    assert service.calls[-1] == ("end_session", "old", {}, True)


async def test_a_session_without_a_lifetime_is_a_browser_session_cookie_not_a_deleted_one():
    service = FakeAuthorization()
    service.authorize_outcome = api.AuthorizeOutcome(SIGN_IN, session=api.SessionCookie("s2", 0))
    async with browser(service) as http:
        reply = await http.get("/oauth/authorize")
    cookie = set_cookies(reply)["__Host-inbound_session"]
    assert cookie["value"] == "s2" and cookie["max-age"] == "" and "expires" not in reply.headers["set-cookie"]


async def test_an_outcome_without_a_session_leaves_the_cookie_alone():
    async with browser(FakeAuthorization()) as http:
        reply = await http.get("/oauth/authorize", params={"client_id": "app"})
    assert "__Host-inbound_session" not in set_cookies(reply)


# --- CSRF ---------------------------------------------------------------------------------------------

FORMS = [
    ("/oauth/authorize/sign-in", {"request_id": "pending-1", "username": "a", "password": "b"}),
    ("/oauth/authorize/consent", {"request_id": "pending-1", "decision": "allow"}),
    ("/account/sign-in", {"username": "a", "password": "b"}),
    ("/account/consents/withdraw", {"client_id": "app"}),
    ("/account/sign-out", {}),
]


@pytest.mark.parametrize("path,form", FORMS)
async def test_a_form_with_its_csrf_token_is_accepted(path, form):
    service = FakeAuthorization()
    async with browser(service) as http:
        page = await sign_in_page(http)
        reply = await http.post(path, data={**form, "csrf_token": page.field("csrf_token")},
                                headers={"sec-fetch-site": "same-origin", "origin": "null"})
    assert reply.status_code in (200, 303)
    assert len(service.calls) == 2


@pytest.mark.parametrize("path,form", FORMS)
@pytest.mark.parametrize("case", ["missing", "wrong", "another_cookies", "no_cookie", "cross_site", "same_site",
                                  "other_origin"])
async def test_a_form_without_a_matching_csrf_token_is_403_and_calls_nothing(path, form, case):
    service = FakeAuthorization()
    async with browser(service) as http:
        page = await sign_in_page(http)
        token = page.field("csrf_token")
        headers = {}
        if case == "missing":
            token = ""
        elif case == "wrong":
            token = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        elif case == "another_cookies":
            async with browser(service) as other:
                token = (await sign_in_page(other)).field("csrf_token")
        elif case == "no_cookie":
            http.cookies.clear()
        elif case == "cross_site":
            headers["sec-fetch-site"] = "cross-site"
        elif case == "same_site":
            headers["sec-fetch-site"] = "same-site"
        elif case == "other_origin":
            headers["origin"] = "https://evil.example"
        calls_before = len(service.calls)
        reply = await http.post(path, data={**form, "csrf_token": token}, headers=headers)
    assert reply.status_code == 403
    assert "location" not in reply.headers
    assert Page(reply.text).all("p", role="alert")
    assert len(service.calls) == calls_before


@pytest.mark.parametrize("issuer,origin", [("https://as.example.com:443", "https://as.example.com"),
                                           ("https://AS.example.com", "https://as.example.com"),
                                           ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
                                           ("http://[::1]:8080", "http://[::1]:8080")])
async def test_the_issuers_own_origin_is_accepted_as_browsers_write_it(issuer, origin):
    service = FakeAuthorization()
    async with browser(service, issuer=issuer) as http:
        page = await sign_in_page(http)
        reply = await http.post("/account/sign-out", data={"csrf_token": page.field("csrf_token")},
                                headers={"origin": origin})
    assert reply.status_code == 200 and service.calls[-1][0] == "end_session"


async def test_a_cookie_planted_by_another_local_site_is_refused_on_plain_http():
    """Plain http has no __Host- cookies: a page on another port of the same host can set
    `inbound_csrf` and post its value; the browser says same-site, which is refused."""
    service = FakeAuthorization()
    async with browser(service, issuer="http://127.0.0.1:8080") as http:
        planted = "A" * 43
        http.cookies.set("inbound_csrf", planted, domain="127.0.0.1")
        reply = await http.post("/oauth/authorize/consent", headers={"sec-fetch-site": "same-site"}, data={
            "csrf_token": planted, "request_id": "pending-1", "decision": "allow"})
    assert reply.status_code == 403 and service.calls == []


# --- pages: headers, markup, escaping ------------------------------------------------------------------


async def _every_page(service: FakeAuthorization, http: httpx.AsyncClient) -> dict[str, httpx.Response]:
    pages = {"sign_in": await http.get("/oauth/authorize", params={"client_id": "app"})}
    token = Page(pages["sign_in"].text).field("csrf_token")
    service.authorize_outcome = api.AuthorizeOutcome(CONSENT)
    pages["consent"] = await http.get("/oauth/authorize")
    service.authorize_outcome = api.AuthorizeOutcome(api.ErrorPage("invalid_request", "Bad request.", 400))
    pages["error"] = await http.get("/oauth/authorize")
    service.authorize_outcome = api.AuthorizeOutcome(api.Redirect(CODE_REDIRECT))
    pages["redirect"] = await http.get("/oauth/authorize")
    pages["account_sign_in"] = await http.get("/account")
    service.account_result = api.Account(signed_in=True, username="ada", display_name="Ada", consents=(
        api.ConsentView(CLIENT, CONSENT.scopes, 1_700_000_000),))
    pages["account"] = await http.get("/account")
    pages["signed_out"] = await http.post("/account/sign-out", data={"csrf_token": token})
    pages["csrf_refused"] = await http.post("/account/sign-out", data={})
    pages["method_not_allowed"] = await http.delete("/account")
    pages["end_session"] = await http.get("/oauth/end_session")
    pages["bad_form"] = await http.post("/oauth/authorize/sign-in", content=b"a=1&a=2", headers=FORM)
    return pages


async def test_every_page_carries_every_security_header():
    service = FakeAuthorization()
    async with browser(service) as http:
        pages = await _every_page(service, http)
    for name, reply in pages.items():
        headers = reply.headers
        csp = headers.get("content-security-policy", "")
        directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";")}
        assert directives.get("default-src") == "default-src 'none'", name
        assert directives.get("style-src") == "style-src 'self'", name
        assert directives.get("img-src") == "img-src 'self' https:", name
        assert directives.get("frame-ancestors") == "frame-ancestors 'none'", name
        assert directives.get("base-uri") == "base-uri 'none'", name
        assert "script-src" not in directives and "unsafe-inline" not in csp, name
        # form-action would block the 303 to the client's redirect URI after a form (services/edge/pages.py).
        assert "form-action" not in directives, name
        assert headers.get("x-frame-options") == "DENY", name
        assert headers.get("referrer-policy") == "no-referrer", name
        assert headers.get("x-content-type-options") == "nosniff", name
        assert headers.get("cache-control") == "no-store", name


async def test_every_page_has_lang_viewport_one_h1_labelled_inputs_and_no_script():
    service = FakeAuthorization()
    async with browser(service) as http:
        pages = await _every_page(service, http)
    for name, reply in pages.items():
        if reply.status_code in (302, 303):
            continue
        page = Page(reply.text)
        assert reply.headers["content-type"].startswith("text/html"), name
        assert page.all("html")[0].get("lang") == "en", name
        assert page.all("meta", name="viewport"), name
        assert len(page.all("h1")) == 1, name
        assert page.all("script") == [], name
        assert page.all("link", rel="stylesheet", href="/static/inbound.css"), name
        labelled = {label["for"] for label in page.all("label")}
        for field in page.all("input"):
            if field.get("type") != "hidden":
                assert field.get("id") in labelled, (name, field)
        for form in page.all("form"):
            assert form["method"] == "post" and form["action"].startswith("/"), (name, form)


async def test_the_sign_in_form_autocompletes_and_announces_its_message():
    service = FakeAuthorization()
    service.authorize_outcome = api.AuthorizeOutcome(api.SignInPage("pending-1", CLIENT, login_hint="ada",
                                                                    message="Wrong username or password."))
    async with browser(service) as http:
        page = Page((await http.get("/oauth/authorize")).text)
    assert page.all("input", name="username")[0]["autocomplete"] == "username"
    assert page.all("input", name="username")[0]["value"] == "ada"
    assert page.all("input", name="password")[0]["autocomplete"] == "current-password"
    assert page.all("input", name="password")[0]["type"] == "password"
    alert = page.all("p", role="alert")
    assert alert and "Wrong username or password." in page.text


async def test_a_client_name_and_scope_texts_are_escaped():
    service = FakeAuthorization()
    evil = api.ClientDisplay("app", '<script>alert(1)</script>"><img src=x>', "https://cdn.example/l.png?a=\"b")
    service.authorize_outcome = api.AuthorizeOutcome(api.ConsentPage(
        "pending-1", evil, (api.ScopeDisplay("x", "<b>all</b> your data"),), user_display="<i>me</i>"))
    async with browser(service) as http:
        reply = await http.get("/oauth/authorize")
    assert "<script>" not in reply.text and "<b>all" not in reply.text and "<i>me" not in reply.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in reply.text
    page = Page(reply.text)
    assert page.all("script") == [] and page.all("b") == [] and page.all("i") == []
    assert [img["src"] for img in page.all("img")] == ['https://cdn.example/l.png?a="b']


@pytest.mark.parametrize("logo", ["http://cdn.example/logo.png", "javascript:alert(1)",
                                  "data:image/png;base64,AAAA", "//cdn.example/logo.png", "https:///x"])
async def test_only_an_https_logo_is_shown(logo):
    service = FakeAuthorization()
    service.authorize_outcome = api.AuthorizeOutcome(api.SignInPage("p", api.ClientDisplay("app", "App", logo)))
    async with browser(service) as http:
        page = Page((await http.get("/oauth/authorize")).text)
    assert page.all("img") == []


async def test_the_consent_page_shows_the_client_its_logo_and_each_scope_in_words():
    service = FakeAuthorization()
    service.authorize_outcome = api.AuthorizeOutcome(CONSENT)
    async with browser(service) as http:
        page = Page((await http.get("/oauth/authorize")).text)
    text = " ".join(page.text)
    assert "Example App" in text and "See your name and username" in text and "Know who you are" in text
    assert page.all("img", src=CLIENT.logo_url, alt="Example App logo")
    assert [b["value"] for b in page.all("button", name="decision")] == ["allow", "deny"]


async def test_the_account_page_lists_consents_each_with_a_withdraw_form():
    service = FakeAuthorization()
    service.account_result = api.Account(signed_in=True, username="ada", consents=(
        api.ConsentView(CLIENT, CONSENT.scopes, 1_700_000_000),
        api.ConsentView(api.ClientDisplay("other", "Other"), (), 1_700_000_000_000)))
    async with browser(service) as http:
        http.cookies.set("__Host-inbound_session", "s1", domain="as.example.com")
        page = Page((await http.get("/account")).text)
        assert [f["value"] for f in page.all("input", name="client_id")] == ["app", "other"]
        reply = await http.post("/account/consents/withdraw", data={"csrf_token": page.field("csrf_token"),
                                                                    "client_id": "other"})
    assert reply.status_code == 303 and reply.headers["location"] == "/account"
    assert service.calls[-1] == ("withdraw_consent", "s1", "other")


async def test_the_account_page_signed_out_is_a_sign_in_form_for_the_account():
    service = FakeAuthorization()
    service.sign_in_outcome = api.AuthorizeOutcome(api.Redirect("/account"), session=SESSION)
    async with browser(service) as http:
        page = Page((await http.get("/account")).text)
        assert page.all("form")[0]["action"] == "/account/sign-in" and page.all("input", name="request_id") == []
        reply = await http.post("/account/sign-in", data={"csrf_token": page.field("csrf_token"),
                                                          "username": "ada", "password": "pw"})
    assert reply.status_code == 303 and reply.headers["location"] == "/account"
    assert service.calls[-1] == ("sign_in", "", "ada", "pw", "")


async def test_the_stylesheet_is_served():
    async with browser(FakeAuthorization()) as http:
        reply = await http.get("/static/inbound.css")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/css")
    assert ":focus-visible" in reply.text


# --- end_session --------------------------------------------------------------------------------------


async def test_rp_initiated_logout_redirects_to_exactly_the_services_location_and_clears_the_cookie():
    service = FakeAuthorization()
    service.end_session_outcome = api.EndSessionOutcome(api.Redirect("https://app.example/bye?state=1"),
                                                        session=api.SessionCookie(clear=True))
    async with browser(service) as http:
        http.cookies.set("__Host-inbound_session", "s1", domain="as.example.com")
        got = await http.get("/oauth/end_session", params={"client_id": "app", "state": "1"})
        http.cookies.set("__Host-inbound_session", "s1", domain="as.example.com")
        posted = await http.post("/oauth/end_session", data={"client_id": "app"})
    assert got.status_code == 302 and got.headers["location"] == "https://app.example/bye?state=1"
    assert posted.status_code == 303 and posted.headers["location"] == "https://app.example/bye?state=1"
    assert set_cookies(got)["__Host-inbound_session"]["max-age"] == "0"
    # Another site sent the browser: never said to be the user's own request (RP-Initiated Logout §2).
    assert service.calls[0] == ("end_session", "s1", {"client_id": ("app",), "state": ("1",)}, False)


@pytest.mark.parametrize("path", ["/oauth/authorize", "/oauth_auth.do", "/oauth/end_session"])
async def test_a_post_without_the_session_cookie_is_sent_on_as_a_get_which_carries_it(path):
    """SameSite=Lax: a client's cross-site form POST carries no session cookie; the GET it
    becomes (a top-level navigation) does, and only then is the service asked."""
    service = FakeAuthorization()
    service.authorize_outcome = api.AuthorizeOutcome(api.Redirect(CODE_REDIRECT))
    async with browser(service) as http:
        reply = await http.post(path, content=b"client_id=app&scope=openid+profile&state=a%26b", headers=FORM)
        assert reply.status_code == 303 and service.calls == []
        assert reply.headers["location"] == path + "?client_id=app&scope=openid+profile&state=a%26b"
        http.cookies.set("__Host-inbound_session", "s1", domain="as.example.com")
        followed = await http.get(reply.headers["location"])
    assert followed.status_code in (200, 302)
    assert service.calls[0][1:3] in (({"client_id": ("app",), "scope": ("openid profile",), "state": ("a&b",)}, "s1"),
                                     ("s1", {"client_id": ("app",), "scope": ("openid profile",), "state": ("a&b",)}))


async def test_a_refused_logout_is_an_error_page_without_a_redirect():
    service = FakeAuthorization()
    service.end_session_outcome = api.EndSessionOutcome(api.ErrorPage("invalid_request", "Not registered.", 400))
    async with browser(service) as http:
        reply = await http.get("/oauth/end_session", params={"post_logout_redirect_uri": "https://evil.example"})
    assert reply.status_code == 400 and "location" not in reply.headers


# --- userinfo -----------------------------------------------------------------------------------------


async def test_userinfo_answers_the_claims_for_a_bearer_header_or_a_form_token():
    service = FakeAuthorization()
    async with browser(service) as http:
        got = await http.get("/oauth/userinfo", headers={"authorization": "Bearer tok1"})
        posted = await http.post("/oauth/userinfo", data={"access_token": "tok2"})
    assert got.status_code == 200 and got.json() == {"sub": "u1", "name": "Ada"}
    assert got.headers["cache-control"] == "no-store"
    assert posted.status_code == 200
    assert [c[1] for c in service.calls] == ["tok1", "tok2"]


async def test_userinfo_without_a_token_is_401_with_a_bare_bearer_challenge():
    service = FakeAuthorization()
    async with browser(service) as http:
        reply = await http.get("/oauth/userinfo")
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == 'Bearer realm="inbound"'
    assert service.calls == []


async def test_userinfo_with_an_invalid_token_is_401_invalid_token():
    service = FakeAuthorization()
    service.user_info_result = InvalidToken()
    async with browser(service) as http:
        reply = await http.get("/oauth/userinfo", headers={"authorization": "Bearer bad"})
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith('Bearer realm="inbound", error="invalid_token"')
    assert reply.json()["error"] == "invalid_token"


async def test_userinfo_without_the_openid_scope_is_403_insufficient_scope():
    service = FakeAuthorization()
    service.user_info_result = InsufficientScope()
    async with browser(service) as http:
        reply = await http.post("/oauth/userinfo", headers={"authorization": "Bearer t"})
    assert reply.status_code == 403
    assert 'error="insufficient_scope"' in reply.headers["www-authenticate"]


@pytest.mark.parametrize("request_args", [
    {"method": "POST", "headers": {"authorization": "Bearer a", **FORM}, "content": b"access_token=b"},
    {"method": "GET", "url": "/oauth/userinfo?access_token=a"},
    {"method": "GET", "headers": {"authorization": "Bearer "}},
    {"method": "GET", "headers": {"authorization": "Bearer a b"}},
])
async def test_userinfo_with_a_token_sent_twice_in_the_uri_or_malformed_is_400_invalid_request(request_args):
    service = FakeAuthorization()
    request_args = {"url": "/oauth/userinfo", **request_args}
    async with browser(service) as http:
        reply = await http.request(**request_args)
    assert reply.status_code == 400
    assert 'error="invalid_request"' in reply.headers["www-authenticate"]
    assert service.calls == []


async def test_userinfo_may_be_read_by_a_browser_app_of_another_origin():
    service = FakeAuthorization()
    async with browser(service) as http:
        preflight = await http.options("/oauth/userinfo", headers={
            "origin": "https://spa.example", "access-control-request-method": "GET",
            "access-control-request-headers": "authorization"})
        got = await http.get("/oauth/userinfo", headers={"authorization": "Bearer t", "origin": "https://spa.example"})
        refused = await http.get("/oauth/userinfo", headers={"origin": "https://spa.example"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert got.headers["access-control-allow-origin"] == "*"
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"
    assert "www-authenticate" in refused.headers["access-control-expose-headers"].lower()
    # No credentials: cookies are never part of it.
    assert "access-control-allow-credentials" not in got.headers
    assert [c[0] for c in service.calls] == ["user_info"]


# --- discovery and absence ----------------------------------------------------------------------------


async def test_openid_configuration_lists_what_is_served():
    async with browser(FakeAuthorization()) as http:
        replies = [await http.get(path) for path in ("/.well-known/openid-configuration",
                                                     "/.well-known/oauth-authorization-server", "/oauth/jwks")]
    document, metadata = replies[0].json(), replies[1].json()
    assert all(reply.headers["access-control-allow-origin"] == "*" for reply in replies)
    assert document["issuer"] == ISSUER
    assert document["authorization_endpoint"] == ISSUER + "/oauth/authorize"
    assert document["token_endpoint"] == ISSUER + "/oauth/token"
    assert document["userinfo_endpoint"] == ISSUER + "/oauth/userinfo"
    assert document["end_session_endpoint"] == ISSUER + "/oauth/end_session"
    assert document["jwks_uri"] == ISSUER + "/oauth/jwks"
    assert document["response_types_supported"] == ["code", "token", "id_token token"]
    assert document["response_modes_supported"] == ["query", "fragment"]
    assert document["grant_types_supported"] == ["authorization_code", "client_credentials", "implicit"]
    assert document["subject_types_supported"] == ["public"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert {"openid", "profile", "email"} <= set(document["scopes_supported"])
    assert document["claims_supported"] == list(SUPPORTED_CLAIMS)
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["authorization_response_iss_parameter_supported"] is True
    assert document["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post", "none"]
    assert document["request_parameter_supported"] is False and document["request_uri_parameter_supported"] is False
    for name in ("authorization_endpoint", "response_types_supported", "response_modes_supported",
                 "code_challenge_methods_supported", "authorization_response_iss_parameter_supported"):
        assert metadata[name] == document[name]
    # Every endpoint it names is served here.
    async with browser(FakeAuthorization()) as http:
        for name in ("authorization_endpoint", "userinfo_endpoint", "end_session_endpoint", "jwks_uri"):
            assert (await http.get(document[name])).status_code != 404, name


async def test_without_the_authorization_code_service_no_browser_route_and_no_mention():
    async with browser(None) as http:
        for path in ("/oauth/authorize", "/oauth_auth.do", "/account", "/oauth/userinfo", "/oauth/end_session",
                     "/.well-known/openid-configuration", "/static/inbound.css"):
            assert (await http.get(path)).status_code == 404, path
        for path in ("/oauth/authorize/sign-in", "/oauth/authorize/consent", "/account/sign-out"):
            assert (await http.post(path)).status_code == 404, path
        metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
    assert "authorization_endpoint" not in metadata and metadata["response_types_supported"] == []
    assert "implicit" not in metadata["grant_types_supported"]
    assert "code_challenge_methods_supported" not in metadata


async def test_a_wrong_method_is_405_on_a_page_with_allow():
    async with browser(FakeAuthorization()) as http:
        reply = await http.get("/oauth/authorize/consent")
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"
    assert reply.headers["content-security-policy"].startswith("default-src 'none'")


@pytest.mark.parametrize("path", ["/oauth/authorize", "/oauth_auth.do", "/oauth/end_session", "/account"])
async def test_head_changes_nothing(path):
    """A HEAD (a link checker, a prefetch) must not start a request, mint a code or end a session."""
    service = FakeAuthorization()
    async with browser(service) as http:
        reply = await http.head(path, params={"client_id": "app"})
    assert reply.status_code == 405 and service.calls == []


async def test_a_page_that_fails_to_render_is_the_500_page_with_the_pages_headers():
    """Not the framework's bare text: whatever fails on a browser route, the answer is the
    error page, with every security header (and nothing of the failure in it)."""
    service = FakeAuthorization()
    service.authorize_outcome = api.AuthorizeOutcome(api.ConsentPage(request_id="pending-1", client=None,
                                                                     scopes=()))
    async with browser(service) as http:
        reply = await http.get("/oauth/authorize", params={"client_id": "app"})
    assert reply.status_code == 500 and reply.headers["content-type"].startswith("text/html")
    assert reply.headers["x-frame-options"] == "DENY" and reply.headers["content-security-policy"]
    assert "pending-1" not in reply.text and "location" not in reply.headers


async def test_a_service_outage_is_a_503_page_not_a_redirect():
    service = FakeAuthorization()

    async def down(*args, **kwargs):
        import grpc
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())

    service.authorize = down
    async with browser(service) as http:
        reply = await http.get("/oauth/authorize", params={"client_id": "app"})
    assert reply.status_code == 503 and "location" not in reply.headers
    assert reply.headers["x-frame-options"] == "DENY"

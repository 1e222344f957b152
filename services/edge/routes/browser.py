"""The browser's routes: the authorization endpoint (RFC 6749 §3.1; OpenID Connect
Core §3.1.2.1), the sign-in, consent and account pages, sign-out, RP-initiated
logout (OpenID Connect RP-Initiated Logout 1.0) and UserInfo (Core §5.3).

The edge decides nothing here: the authorization_code service (its
AuthorizationApi, services/authorization_code/api.py) answers an outcome for
every request and the edge renders it: a redirect to exactly the service's
Location (302 after GET, 303 after POST: RFC 9110 §15.4.4), an error page with
the outcome's status (never a redirect), the sign-in or consent page. The edge
keeps the session cookie the outcome names and checks CSRF on every form of its
own before calling anything (services/edge/cookies.py).

Paths and form fields (the browser tests and the demo use them):
  GET|POST /oauth/authorize, /oauth_auth.do    query (GET) or form (POST) as sent
  POST /oauth/authorize/sign-in                csrf_token, request_id, username, password
  POST /oauth/authorize/consent                csrf_token, request_id, decision=allow|deny
  GET  /account                                the account page, or its sign-in form
  POST /account/sign-in                        csrf_token, username, password
  POST /account/consents/withdraw              csrf_token, client_id
  POST /account/sign-out                       csrf_token
  GET|POST /oauth/end_session                  id_token_hint, client_id, post_logout_redirect_uri, state, ...
  GET|POST /oauth/userinfo                     Authorization: Bearer, or form access_token (POST)
  GET  /static/inbound.css
"""
from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inboundlib.oauth.errors import InvalidRequest, OAuthError, ServerError
from inboundlib.oauth.params import FORM_CONTENT_TYPE, parse_form, parse_form_multi
from services.authorization_code import api
from services.edge import pages
from services.edge.cookies import CSRF_FIELD, BrowserCookies
from services.edge.errors import (
    NO_STORE,
    BearerErrors,
    CsrfRefused,
    HttpError,
    MethodNotAllowed,
    PageErrors,
    json_response,
)
from services.edge.http import backend, endpoint, read_body, read_form_body, request_context
from services.edge.settings import EdgeSettings

log = logging.getLogger("services.edge")

AUTHORIZE_PATHS = ("/oauth/authorize", "/oauth_auth.do")
SIGN_IN_PATH = "/oauth/authorize/sign-in"
CONSENT_PATH = "/oauth/authorize/consent"
ACCOUNT_PATH = "/account"
ACCOUNT_SIGN_IN_PATH = "/account/sign-in"
WITHDRAW_PATH = "/account/consents/withdraw"
SIGN_OUT_PATH = "/account/sign-out"
END_SESSION_PATH = "/oauth/end_session"
USERINFO_PATH = "/oauth/userinfo"
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
# UserInfo is called by browser apps of other origins (an implicit or code-flow SPA) with
# a bearer token and no cookie: any origin may read its answers (the Fetch standard's CORS).
USERINFO_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "WWW-Authenticate"}
USERINFO_PREFLIGHT = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST",
                      "Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Max-Age": "600"}


_LOCATION = re.compile(r"[!-~]+")


class _EveryName(frozenset):
    """Every parameter may repeat as far as the edge is concerned: the authorization_code
    service sees them as sent and refuses a repeat itself (RFC 6749 §3.1)."""

    def __contains__(self, name: object) -> bool:
        return True


AS_SENT = _EveryName()


@dataclass
class BrowserRoutes:
    issuer: str
    authorization: api.AuthorizationApi
    settings: EdgeSettings
    cookies: BrowserCookies

    def __post_init__(self) -> None:
        self.base = self.issuer.rstrip("/")
        self.prefix = urlsplit(self.issuer).path.rstrip("/")
        self.errors = PageErrors(self.prefix)
        self.bearer = BearerErrors()

    # --- rendering --------------------------------------------------------------------------------

    def _page(self, request: Request, template: str, status: int = 200, **context) -> Response:
        """A page with forms: each carries this browser's CSRF token (its cookie set if new)."""
        token, new_cookie = self.cookies.csrf_token(request)
        response = pages.render(template, status, prefix=self.prefix, csrf_token=token, **context)
        self.cookies.set_csrf(response, new_cookie)
        return response

    def _redirect(self, request: Request, location: str) -> Response:
        """To exactly `location` (starlette's RedirectResponse would re-quote it). RFC 9110
        §15.4.3/§15.4.4: 302 after a GET; 303 makes the browser follow a POST with a GET."""
        if not _LOCATION.fullmatch(location):  # a URI is printable ASCII (RFC 3986 §2); never split a header
            raise ServerError(detail="the authorization service answered a Location that is no URI")
        status = 303 if request.method == "POST" else 302
        return Response(b"", status_code=status, headers={**pages.SECURITY_HEADERS, "Location": location})

    def _error_page(self, page: api.ErrorPage) -> Response:
        status = page.http_status if 400 <= page.http_status <= 599 else 400
        return self.errors.page(page.error, page.description, status)

    def _outcome(self, request: Request, result) -> Response:
        if isinstance(result, api.Redirect):
            return self._redirect(request, result.location)
        if isinstance(result, api.ErrorPage):
            return self._error_page(result)
        if isinstance(result, api.SignInPage):
            return self._page(request, "sign_in.html", action=SIGN_IN_PATH if result.request_id else
                              ACCOUNT_SIGN_IN_PATH, request_id=result.request_id, client=result.client,
                              login_hint=result.login_hint, message=result.message)
        if isinstance(result, api.ConsentPage):
            return self._page(request, "consent.html", action=CONSENT_PATH, account=ACCOUNT_PATH,
                              request_id=result.request_id, client=result.client, scopes=result.scopes,
                              also_granted=result.also_granted, user_display=result.user_display)
        raise TypeError(f"unknown outcome {type(result).__name__}")

    def _authorize_outcome(self, request: Request, outcome: api.AuthorizeOutcome) -> Response:
        response = self._outcome(request, outcome.result)
        self.cookies.apply_session(response, outcome.session)
        return response

    def _end_session_outcome(self, request: Request, outcome: api.EndSessionOutcome) -> Response:
        result = outcome.result
        if isinstance(result, api.ErrorPage) and not result.error:  # "you are signed out"
            response = pages.render("signed_out.html", 200, prefix=self.prefix, account=ACCOUNT_PATH,
                                    description=result.description)
        else:
            response = self._outcome(request, result)
        self.cookies.apply_session(response, outcome.session)
        return response

    # --- reading requests -------------------------------------------------------------------------

    async def _params(self, request: Request) -> dict[str, tuple[str, ...]]:
        """The query (GET) or form (POST) parameters, each with its values as sent. Not HEAD:
        these requests change state (a pending request, a code, a session ended)."""
        if request.method == "GET":
            return parse_form_multi(request.scope.get("query_string", b""), AS_SENT)
        if request.method == "POST":
            return parse_form_multi(await read_form_body(request, self.settings), AS_SENT)
        raise MethodNotAllowed("This endpoint accepts GET and POST only.")

    async def _form(self, request: Request) -> dict[str, str]:
        """One of our forms, POSTed from our page with this browser's CSRF token; else 403
        and nothing is called. The origin is checked before the body is read."""
        if request.method != "POST":
            raise MethodNotAllowed()
        if not self.cookies.same_origin(request):
            raise CsrfRefused()
        form = parse_form(await read_form_body(request, self.settings))
        if not self.cookies.valid_token(request, form.get(CSRF_FIELD, "")):
            raise CsrfRefused()
        return form

    def _context(self, request: Request):
        return request_context(request, self.settings, self.base + request.scope["path"])

    # --- the routes ---------------------------------------------------------------------------------

    def _as_get(self, request: Request, params: dict[str, tuple[str, ...]]) -> Response | None:
        """A POST from a client's page carries no session cookie (SameSite=Lax: not on a
        cross-site POST), so the service would see no session (sign in again; prompt=none
        always login_required; a logout that ends nothing). The same request as a GET, a
        top-level navigation, carries it: 303 to this path with the parameters in the
        query. Only when the cookie is missing; a GET never comes back here."""
        if request.method != "POST" or self.cookies.session_id(request):
            return None
        query = urlencode([(name, value) for name, values in params.items() for value in values])
        return self._redirect(request, f"{self.prefix}{request.scope['path']}?{query}")

    async def authorize(self, request: Request, rid: str) -> Response:
        """RFC 6749 §3.1 (GET, and POST per OpenID Connect Core §3.1.2.1)."""
        params = await self._params(request)
        as_get = self._as_get(request, params)
        if as_get is not None:
            return as_get
        outcome = await backend(self.authorization.authorize(
            params, self.cookies.session_id(request), context=self._context(request), request_id=rid))
        return self._authorize_outcome(request, outcome)

    async def sign_in(self, request: Request, rid: str) -> Response:
        form = await self._form(request)
        request_id = form.get("request_id", "")
        if not request_id:
            raise InvalidRequest("The sign-in form is incomplete.")
        outcome = await backend(self.authorization.sign_in(
            request_id, form.get("username", ""), form.get("password", ""), self.cookies.session_id(request),
            context=self._context(request), request_id=rid))
        return self._authorize_outcome(request, outcome)

    async def consent(self, request: Request, rid: str) -> Response:
        form = await self._form(request)
        request_id, decision = form.get("request_id", ""), form.get("decision", "")
        if not request_id or decision not in ("allow", "deny"):
            raise InvalidRequest("The consent form is incomplete.")
        outcome = await backend(self.authorization.consent(
            request_id, self.cookies.session_id(request), decision == "allow", context=self._context(request),
            request_id=rid))
        return self._authorize_outcome(request, outcome)

    def _account_page(self, request: Request, account: api.Account) -> Response:
        if account.signed_in:
            response = self._page(request, "account.html", username=account.username,
                                  display_name=account.display_name, consents=account.consents,
                                  withdraw=WITHDRAW_PATH, sign_out=SIGN_OUT_PATH)
        else:
            response = self._page(request, "sign_in.html", action=ACCOUNT_SIGN_IN_PATH, request_id="", client=None,
                                  login_hint="", message="")
        self.cookies.apply_session(response, account.session)
        return response

    async def account(self, request: Request, rid: str) -> Response:
        if request.method != "GET":
            raise MethodNotAllowed("This page accepts GET only.")
        account = await backend(self.authorization.account(self.cookies.session_id(request), request_id=rid))
        return self._account_page(request, account)

    async def account_sign_in(self, request: Request, rid: str) -> Response:
        form = await self._form(request)
        outcome = await backend(self.authorization.sign_in(
            "", form.get("username", ""), form.get("password", ""), self.cookies.session_id(request),
            context=self._context(request), request_id=rid))
        # A redirect to the account page, or the account's sign-in form again with the service's message.
        return self._authorize_outcome(request, outcome)

    async def withdraw(self, request: Request, rid: str) -> Response:
        form = await self._form(request)
        client_id = form.get("client_id", "")
        if not client_id:
            raise InvalidRequest("The form is incomplete.")
        account = await backend(self.authorization.withdraw_consent(
            self.cookies.session_id(request), client_id, context=self._context(request), request_id=rid))
        # Post/redirect/get: reloading the account page never posts the withdrawal again.
        response = self._redirect(request, self.prefix + ACCOUNT_PATH)
        self.cookies.apply_session(response, account.session)
        return response

    async def sign_out(self, request: Request, rid: str) -> Response:
        await self._form(request)
        # The user asked, on our page, with our CSRF token: the session ends whatever else.
        outcome = await backend(self.authorization.end_session(
            self.cookies.session_id(request), {}, user_confirmed=True, context=self._context(request),
            request_id=rid))
        return self._end_session_outcome(request, outcome)

    async def end_session(self, request: Request, rid: str) -> Response:
        """RP-initiated logout: the relying party sends the browser here (GET or a form
        POST from its own site), so no CSRF token of ours; the service decides whether
        the request is honoured (id_token_hint, registered post_logout_redirect_uri)."""
        params = await self._params(request)
        as_get = self._as_get(request, params)
        if as_get is not None:
            return as_get
        outcome = await backend(self.authorization.end_session(
            self.cookies.session_id(request), params, context=self._context(request), request_id=rid))
        return self._end_session_outcome(request, outcome)

    async def user_info(self, request: Request, rid: str) -> Response:
        """OpenID Connect Core §5.3: the token as RFC 6750 §2.1 (header) or §2.2 (form body)."""
        if request.method == "OPTIONS":  # a CORS preflight of a browser app's call
            return Response(b"", status_code=204, headers=USERINFO_PREFLIGHT)
        if request.method not in ("GET", "POST"):
            raise MethodNotAllowed("This endpoint accepts GET and POST only.")
        token = await self._bearer_token(request)
        if token is None:
            return self.bearer.missing_token()
        claims = await backend(self.authorization.user_info(token, request_id=rid))
        return json_response(claims, 200, dict(NO_STORE))

    async def _bearer_token(self, request: Request) -> str | None:
        """RFC 6750 §2: one method only (§2: more than one is invalid_request); the URI
        query (§2.3) is not accepted: a token in a URL ends up in logs and histories."""
        if "access_token" in parse_form(request.scope.get("query_string", b"")):
            raise InvalidRequest("The access token must not be sent in the URI.")
        tokens = []
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() == "bearer":
                if not value.strip() or " " in value.strip():
                    raise InvalidRequest("The Authorization header is malformed.")
                tokens.append(value.strip())
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and content_type.partition(";")[0].strip().lower() == FORM_CONTENT_TYPE:
            form = parse_form(await read_body(request, self.settings))
            if "access_token" in form:
                tokens.append(form["access_token"])
        if len(tokens) > 1:
            raise InvalidRequest("The access token must be sent one way only.")
        return tokens[0] if tokens else None

    # --- the table ------------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        def page(path: str, name: str, handle: Callable[[Request, str], Awaitable[Response]],
                 allow: str = "POST") -> Route:
            # Every method reaches the handler: a wrong one is answered 405 with the page's shape.
            return Route(path, endpoint(name, _never_bare(handle), self.errors, self.settings, allow=allow),
                         methods=ANY_METHOD)

        async def stylesheet(request: Request) -> Response:
            return pages.stylesheet()

        return [
            *(page(path, "authorize", self.authorize, "GET, POST") for path in AUTHORIZE_PATHS),
            page(SIGN_IN_PATH, "sign_in", self.sign_in),
            page(CONSENT_PATH, "consent", self.consent),
            page(ACCOUNT_PATH, "account", self.account, "GET"),
            page(ACCOUNT_SIGN_IN_PATH, "account_sign_in", self.account_sign_in),
            page(WITHDRAW_PATH, "withdraw_consent", self.withdraw),
            page(SIGN_OUT_PATH, "sign_out", self.sign_out),
            page(END_SESSION_PATH, "end_session", self.end_session, "GET, POST"),
            Route(USERINFO_PATH, _with_headers(endpoint("userinfo", self.user_info, self.bearer, self.settings,
                                                        allow="GET, POST"), USERINFO_CORS), methods=ANY_METHOD),
            Route(pages.STYLESHEET_PATH, stylesheet, methods=["GET"]),
        ]


def _never_bare(handle: Callable[[Request, str], Awaitable[Response]]):
    """`handle`, a failure of its own (a page that does not render, an outcome it cannot
    show) answered as the 500 error page with the pages' security headers, not the
    framework's bare text without them."""

    async def handle_or_server_error(request: Request, rid: str) -> Response:
        try:
            return await handle(request, rid)
        except (HttpError, OAuthError):
            raise
        except Exception:
            log.exception("browser page failed")
            raise ServerError(detail="the browser page failed") from None

    return handle_or_server_error


def _with_headers(serve: Callable[[Request], Awaitable[Response]], headers: dict[str, str]):
    """`serve`, its every answer (errors included) with `headers` added where not set."""

    async def serve_with_headers(request: Request) -> Response:
        response = await serve(request)
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response

    return serve_with_headers

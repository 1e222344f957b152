"""The authorization endpoint's decisions (RFC 6749 §3.1, §4.1, §4.2; OpenID Connect Core §3):
`Authorization` implements the authorize contract (api.AuthorizationApi) for the edge.

An authorization request goes through named checks, in order, like node
oidc-provider's pipeline. First the two that decide whether the browser may be sent
back to the client at all; their failures are an error page, never a redirect
(RFC 6749 §4.1.2.1, RFC 9700 §4.1.3):
  check_client          client_id names an active client
  check_redirect_uri    exactly one of the client's registered redirect URIs
                        (inboundlib.oauth.redirects: no normalisation, no default)
Then the rest; a failure goes to that redirect URI (§4.1.2.1, §4.2.2.1) with `state`
as received and `iss` (RFC 9207 §2):
  check_repeats         no parameter twice (§3.1)                         invalid_request
  check_request_objects `request` / `request_uri` (Core §6)  request_not_supported / request_uri_not_supported
  check_response_type   code, token or `id_token token`       unsupported_response_type
                        and the client registered for it (implicit: `implicit`
                        in its grant types)                   unauthorized_client
  check_response_mode   query | fragment; never query for tokens (Multiple Response
                        Types §2.1; RFC 9700 §2.1.2)                       invalid_request
  check_scope           well-formed, the client's, in the catalog          invalid_scope
                        (`id_token token` needs openid)                    invalid_request
  check_pkce            S256 only (inboundlib.oauth.pkce); required for public and
                        pkce_required clients (RFC 9700 §2.1.1)            invalid_request
  check_state           required unless a PKCE challenge protects the code (RFC 9700 §4.7.1)
  check_nonce           required for `id_token token` (Core §3.2.2.1)     invalid_request
  check_prompt          none | login | consent; none alone (Core §3.1.2.1) invalid_request
  check_max_age         a non-negative integer                             invalid_request
  check_login_hint      bounded                                            invalid_request
An `id_token_hint` (Core §3.1.2.1) must be an ID token of ours (invalid_request); when it
names another user than the session's, the session does not count (prompt=none:
login_required; else the sign-in page).
Then the session (the cookie's random id, looked up by SHA-256 in the registry):
none, prompt=login, or signed in longer ago than max_age -> the sign-in page (the
request is kept as a pending request, its id random, only its hash stored), or with
prompt=none login_required. Then consent: a catalog scope that needs consent and is not
in the user's consent for this client yet (or prompt=consent) -> the consent page, or
with prompt=none consent_required. Then the answer: response_type=code mints a code
(`ibc_` + 256 random bits, bound to everything the exchange checks) and redirects with
code, state and iss; implicit issues the tokens through token_issuer (no refresh token,
a shorter lifetime, an ID token with at_hash and the claims the scopes release for
`id_token token`, as the code exchange's) into the fragment.

Sign-in (`sign_in`) always starts a NEW session (no session fixation: the id the
browser had is ended, not reused) and answers one generic message for an unknown
user, a wrong password or a disabled user (no user enumeration). A pending request
completes exactly once: a second submit of its form gets an error page.

No session id, pending request id, code, password or token is ever logged, put in an
error, or in an event.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import jwt
from prometheus_client import Counter

from inbound.events.v1 import events_pb2
from inboundlib import actors, redact
from inboundlib.events import (
    CODE_ISSUED,
    CONSENT_GRANTED,
    CONSENT_WITHDRAWN,
    SESSION_ENDED,
    USER_SIGN_IN_FAILED,
    USER_SIGNED_IN,
    EventBus,
)
from inboundlib.grants.api import NO_CONTEXT, RequestContext
from inboundlib.grpcx import infrastructure_error
from inboundlib.oauth import oidc, pkce
from inboundlib.oauth.errors import (
    AccessDenied,
    ConsentRequired,
    InvalidRequest,
    InvalidScope,
    LoginRequired,
    OAuthError,
    RequestNotSupported,
    RequestUriNotSupported,
    UnauthorizedClient,
    UnsupportedResponseType,
)
from inboundlib.oauth.redirects import FRAGMENT, QUERY, RESPONSE_MODES, registered_redirect_uri, response_location
from inboundlib.oauth.scopes import format_scope, parse_scope
from services.authorization_code.api import (
    Account,
    AuthorizeOutcome,
    ClientDisplay,
    ConsentPage,
    ConsentView,
    EndSessionOutcome,
    ErrorPage,
    Redirect,
    ScopeDisplay,
    SessionCookie,
    SignInPage,
)
from services.authorization_code.codes import code_hash, new_code
from services.client_registry.api import (
    GRANT_AUTHORIZATION_CODE,
    GRANT_IMPLICIT,
    PURPOSE_BROWSER_SIGN_IN,
    AuthorizationCodeRecord,
    AuthorizationStore,
    BrowserSession,
    ClientRecord,
    Invalid,
    Locked,
    PendingAuthorization,
    ScopeCatalog,
    ScopeRecord,
    SignIn,
    UserAuthenticator,
    UserRecord,
)
from services.token_issuer.api import IdTokenRequest, IssueRequest

log = logging.getLogger(__name__)

OUTCOMES = Counter("inbound_authorize_outcomes_total",
                   "Answers of the browser's steps (authorize, sign_in, consent) by kind of answer",
                   ["step", "outcome"])

CODE = "code"
TOKEN = "token"
ID_TOKEN_TOKEN = "id_token token"
# response_type values as sets of words (order is not significant, Multiple Response Types §3).
RESPONSE_TYPES = {frozenset({"code"}): CODE, frozenset({"token"}): TOKEN,
                  frozenset({"id_token", "token"}): ID_TOKEN_TOKEN}
PROMPT_NONE, PROMPT_LOGIN, PROMPT_CONSENT = "none", "login", "consent"
PROMPTS = (PROMPT_NONE, PROMPT_LOGIN, PROMPT_CONSENT)
# Bounds on what the browser sends, so a pending request stays small and nothing huge is echoed.
MAX_STATE_LENGTH = 1024
MAX_NONCE_LENGTH = 512
MAX_LOGIN_HINT_LENGTH = 256
MAX_USERNAME_LENGTH = 256
MAX_PASSWORD_LENGTH = 1024
# Longer than any id we make (secrets.token_urlsafe(32): 43 characters): not ours, not looked up.
MAX_SECRET_ID_LENGTH = 128
MAX_AGE_LIMIT = 10 * 365 * 24 * 3600
ACCOUNT_PATH = "/account"

# One message for every failed sign-in that is not a lock: an unknown username, a wrong
# password and a disabled user read the same (no user enumeration).
SIGN_IN_FAILED = "The username or password is incorrect."
SIGN_IN_LOCKED = "Too many failed sign-ins. Try again later."
SIGN_IN_UNAVAILABLE = "Signing in is not possible right now. Try again in a moment."
REQUEST_GONE = "This page has expired or was already used. Go back to the application and start again."
SIGNED_OUT = "You are signed out."


class Unsafe(Exception):
    """The client or its redirect URI cannot be trusted: an error page, never a redirect."""

    def __init__(self, error: OAuthError):
        super().__init__(error.code)
        self.error = error


class AuthorizeStore(ScopeCatalog, AuthorizationStore, UserAuthenticator, Protocol):
    """What the decisions need of the registry (services/client_registry/api.py)."""
    async def get_user(self, *, id: str = "", username: str = "") -> UserRecord | None: ...


class ClientLookup(Protocol):
    async def get_client(self, client_id: str) -> ClientRecord | None: ...


class Issuer(Protocol):
    """token_issuer, as the decisions use it: implicit tokens, and the JWKS for id_token_hint."""
    async def issue(self, request: IssueRequest): ...
    async def jwks(self) -> dict: ...


@dataclass(frozen=True)
class AuthorizeSettings:
    issuer: str
    code_lifetime: int = 60
    request_lifetime: int = 600
    session_lifetime: int = 28800
    implicit_access_token_lifetime: int = 900


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated authorization request: what a pending request keeps (as JSON, the
    registry only stores it) and what the answer is made from."""
    client_id: str
    redirect_uri: str
    response_type: str
    response_mode: str
    scopes: tuple[str, ...]
    state: str = ""
    nonce: str = ""
    code_challenge: str = ""
    code_challenge_method: str = ""
    prompt: tuple[str, ...] = ()
    max_age: int = -1  # -1: none
    login_hint: str = ""
    # The session whose user the consent page was shown to ("" before sign-in).
    sid: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AuthorizationRequest:
        data = json.loads(text)
        return cls(**{**data, "scopes": tuple(data["scopes"]), "prompt": tuple(data["prompt"])})


def secret_hash(value: str) -> bytes:
    """What the registry keys a session or a pending request by: SHA-256 of the random id."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def new_secret_id() -> str:
    return secrets.token_urlsafe(32)


def username_fingerprint(username: str) -> str:
    """An attempted username for the audit trail: a digest alone, never its first
    characters (it may be a password typed into the wrong field)."""
    return "sha256:" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# --- the checks ---------------------------------------------------------------------------------------

@dataclass
class Checking:
    """An authorization request on its way through the checks: the parameters as sent,
    and what each check has established so far."""
    params: Mapping[str, tuple[str, ...]]
    catalog: ScopeCatalog
    client: ClientRecord | None = None
    redirect_uri: str = ""
    response_type: str = ""
    response_mode: str = ""
    scopes: tuple[str, ...] = ()
    state: str = ""
    nonce: str = ""
    code_challenge: str = ""
    code_challenge_method: str = ""
    prompt: tuple[str, ...] = ()
    max_age: int = -1
    login_hint: str = ""
    catalog_records: dict[str, ScopeRecord] = field(default_factory=dict)

    def one(self, name: str) -> str:
        """A parameter's value ("" when absent); check_repeats has refused repeats."""
        values = self.params.get(name) or ("",)
        return values[0]

    @property
    def implicit(self) -> bool:
        return self.response_type in (TOKEN, ID_TOKEN_TOKEN)

    def request(self) -> AuthorizationRequest:
        return AuthorizationRequest(
            client_id=self.client.client_id, redirect_uri=self.redirect_uri, response_type=self.response_type,
            response_mode=self.response_mode, scopes=self.scopes, state=self.state, nonce=self.nonce,
            code_challenge=self.code_challenge, code_challenge_method=self.code_challenge_method,
            prompt=self.prompt, max_age=self.max_age, login_hint=self.login_hint)


async def check_client(c: Checking, clients: ClientLookup) -> None:
    values = c.params.get("client_id", ())
    if len(values) != 1 or not values[0]:
        raise Unsafe(InvalidRequest("The client_id parameter is missing or repeated.", detail="client_id"))
    client = await clients.get_client(values[0]) if len(values[0]) <= 256 else None
    if client is None or not client.active:
        raise Unsafe(InvalidRequest("The client is unknown.",
                                    detail=f"client {redact.unverified(values[0])} unknown or disabled"))
    c.client = client


async def check_redirect_uri(c: Checking, clients: ClientLookup) -> None:
    values = c.params.get("redirect_uri", ())
    if len(values) > 1:
        raise Unsafe(InvalidRequest("The redirect_uri parameter is repeated.", detail="redirect_uri repeated"))
    try:
        c.redirect_uri = registered_redirect_uri(values[0] if values else "", c.client.redirect_uris)
    except InvalidRequest as exc:
        raise Unsafe(exc) from None


UNTRUSTED_CHECKS: tuple[Callable[[Checking, ClientLookup], Awaitable[None]], ...] = (check_client, check_redirect_uri)


def check_repeats(c: Checking) -> None:
    repeated = [name for name, values in c.params.items() if len(values) > 1]
    if repeated:
        raise InvalidRequest("A parameter was repeated.",
                             detail=f"repeated parameters {[redact.unverified(n) for n in repeated]}")


def check_request_objects(c: Checking) -> None:
    if c.one("request"):
        raise RequestNotSupported()
    if c.one("request_uri"):
        raise RequestUriNotSupported()


def check_response_type(c: Checking) -> None:
    value = c.one("response_type")
    if not value:
        raise InvalidRequest("The response_type parameter is missing.")
    response_type = RESPONSE_TYPES.get(frozenset(value.split(" ")))
    if response_type is None:
        raise UnsupportedResponseType(detail=f"response_type {redact.unverified(value)}")
    c.response_type = response_type
    needed = GRANT_IMPLICIT if c.implicit else GRANT_AUTHORIZATION_CODE
    if needed not in c.client.grant_types:
        raise UnauthorizedClient("The client may not use this response type.",
                                 detail=f"client not registered for {needed}")


def check_response_mode(c: Checking) -> None:
    mode = c.one("response_mode") or (FRAGMENT if c.implicit else QUERY)
    if mode not in RESPONSE_MODES:
        raise InvalidRequest("The response_mode is not supported.", detail=f"response_mode {redact.unverified(mode)}")
    if mode == QUERY and c.implicit:
        raise InvalidRequest("Tokens are never sent in the query.", detail="response_mode=query for tokens")
    c.response_mode = mode


async def check_scope(c: Checking) -> None:
    requested = parse_scope(c.one("scope")) or list(c.client.scopes)  # §3.3: the client's scopes by default
    beyond = [s for s in requested if s not in c.client.scopes]
    if beyond:
        raise InvalidScope(detail=f"{len(beyond)} scope(s) not allowed for the client: "
                                  f"{[redact.unverified(s) for s in beyond]}")
    records = await c.catalog.get_scopes(requested)
    missing = [s for s, r in zip(requested, records, strict=True) if r is None]
    if missing:
        raise InvalidScope(detail=f"scope(s) not in the catalog: {missing}")
    if c.response_type == ID_TOKEN_TOKEN and oidc.OPENID not in requested:
        raise InvalidRequest("An ID token needs the openid scope.", detail="id_token without openid")
    c.scopes = tuple(requested)
    c.catalog_records = {r.name: r for r in records}


def check_pkce(c: Checking) -> None:
    if c.implicit:
        return  # no code to bind: the challenge means nothing here
    c.code_challenge, c.code_challenge_method = pkce.check_challenge(c.one("code_challenge") or None,
                                                                     c.one("code_challenge_method") or None)
    if not c.code_challenge and (c.client.public or c.client.pkce_required):
        raise InvalidRequest("A PKCE code_challenge (S256) is required for this client.",
                             detail=f"no code_challenge ({'public' if c.client.public else 'pkce_required'} client)")


def check_state(c: Checking) -> None:
    if len(c.one("state")) > MAX_STATE_LENGTH:
        raise InvalidRequest("The state parameter is too long.")
    c.state = c.one("state")
    if not c.state and not c.code_challenge:
        raise InvalidRequest("The state parameter is required (or a PKCE code_challenge).", detail="no state")


def check_nonce(c: Checking) -> None:
    c.nonce = c.one("nonce")
    if len(c.nonce) > MAX_NONCE_LENGTH:
        raise InvalidRequest("The nonce parameter is too long.")
    if c.response_type == ID_TOKEN_TOKEN and not c.nonce:
        raise InvalidRequest("The nonce parameter is required for an ID token in the fragment.", detail="no nonce")


def check_prompt(c: Checking) -> None:
    words = tuple(dict.fromkeys(w for w in c.one("prompt").split(" ") if w))
    unknown = [w for w in words if w not in PROMPTS]
    if unknown:
        raise InvalidRequest("The prompt value is not supported.",
                             detail=f"prompt {[redact.unverified(w) for w in unknown]}")
    if PROMPT_NONE in words and len(words) > 1:
        raise InvalidRequest("prompt=none cannot be combined with another value.")
    c.prompt = words


def check_max_age(c: Checking) -> None:
    value = c.one("max_age")
    if value:
        if not value.isascii() or not value.isdigit() or int(value) > MAX_AGE_LIMIT:
            raise InvalidRequest("The max_age parameter must be a number of seconds.")
        c.max_age = int(value)


def check_login_hint(c: Checking) -> None:
    c.login_hint = c.one("login_hint")
    if len(c.login_hint) > MAX_LOGIN_HINT_LENGTH:
        raise InvalidRequest("The login_hint parameter is too long.")


CHECKS: tuple[Callable[[Checking], object], ...] = (
    check_repeats, check_request_objects, check_response_type, check_response_mode, check_scope, check_pkce,
    check_state, check_nonce, check_prompt, check_max_age, check_login_hint)


def error_target(c: Checking) -> tuple[str, str]:
    """Where an error goes once the redirect URI is trusted: the state as received (when
    it is fit to send back) and the response mode the request asked for, else the
    default of its response type (§4.1.2.1: query; §4.2.2.1: fragment)."""
    state = c.one("state") if len(c.params.get("state", ())) == 1 else ""
    mode = c.response_mode or c.one("response_mode")
    words = c.one("response_type").split(" ")
    if mode not in RESPONSE_MODES or (mode == QUERY and "token" in words):
        mode = FRAGMENT if "token" in words else QUERY
    return (state if len(state) <= MAX_STATE_LENGTH else ""), mode


# --- the service --------------------------------------------------------------------------------------

class Authorization:
    """api.AuthorizationApi: every method answers an outcome; nothing the browser sends
    makes one raise (a failed dependency is an error page: temporarily_unavailable)."""

    def __init__(self, clients: ClientLookup, store: AuthorizeStore, issuer: Issuer, events: EventBus,
                 settings: AuthorizeSettings, user_info: Callable[..., Awaitable[dict]] | None = None,
                 clock: Callable[[], float] = time.time):
        self.clients = clients
        self.store = store
        self.issuer = issuer
        self.events = events
        self.settings = settings
        self._user_info = user_info
        self.clock = clock

    # --- authorize ---------------------------------------------------------------------------------

    async def authorize(self, params: Mapping[str, tuple[str, ...]], session_id: str, *,
                        context: RequestContext = NO_CONTEXT, request_id: str = "") -> AuthorizeOutcome:
        return counted("authorize", await self._authorize(params, session_id))

    async def _authorize(self, params: Mapping[str, tuple[str, ...]], session_id: str) -> AuthorizeOutcome:
        c = Checking(params=params, catalog=self.store)
        try:
            for check in UNTRUSTED_CHECKS:
                await check(c, self.clients)
        except Unsafe as exc:
            return self._error_page(exc.error, c.client.client_id if c.client else "")
        except Exception as exc:
            return self._failure(exc)
        try:
            for check in CHECKS:
                result = check(c)
                if hasattr(result, "__await__"):
                    await result
        except OAuthError as exc:
            return self._error_redirect(exc, c)
        except Exception as exc:
            return self._failure(exc)
        try:
            hinted_user = None
            if c.one("id_token_hint"):
                hint = await self._id_token_hint(c.one("id_token_hint"))
                if hint is None:
                    return self._error_redirect(InvalidRequest("The id_token_hint is not valid.",
                                                               detail="id_token_hint not an ID token of ours"), c)
                hinted_user = str(hint.get("sub", ""))
            session = await self._session(session_id)
            cookie = SessionCookie(clear=True) if session_id and session is None else None
            if session is not None and hinted_user is not None and session.user_id != hinted_user:
                # Core §3.1.2.1 id_token_hint: the client asks about another user than the one
                # signed in here. prompt=none answers login_required; else that user signs in.
                log.info("id_token_hint names another user than the session's")
                session = None
            return await self._continue(c.request(), c.client, session, cookie, c.catalog_records)
        except Exception as exc:
            return self._failure(exc)

    async def _continue(self, request: AuthorizationRequest, client: ClientRecord, session: BrowserSession | None,
                        cookie: SessionCookie | None, catalog: dict[str, ScopeRecord] | None = None, *,
                        signed_in_now: bool = False) -> AuthorizeOutcome:
        """After the checks (or a sign-in): sign-in needed, consent needed, or the answer."""
        if session is None or (not signed_in_now and self._login_required(request, session)):
            if PROMPT_NONE in request.prompt:
                return self._redirect_error(LoginRequired(), request, cookie)
            pending_id = await self._pend(request)
            return AuthorizeOutcome(SignInPage(request_id=pending_id, client=_display(client),
                                               login_hint=request.login_hint), session=cookie)
        if catalog is None:
            catalog = {r.name: r for r in await self.store.get_scopes(list(request.scopes)) if r is not None}
        consent = await self.store.get_consent(session.user_id, client.client_id)
        consented = set(consent.scopes) if consent is not None else set()
        needing = [s for s in request.scopes if s in catalog and catalog[s].consent_required]
        to_ask = needing if PROMPT_CONSENT in request.prompt else [s for s in needing if s not in consented]
        if to_ask or PROMPT_CONSENT in request.prompt:
            if PROMPT_NONE in request.prompt:
                return self._redirect_error(ConsentRequired(), request, cookie)
            pending_id = await self._pend(replace(request, sid=session.sid))
            also = [s for s in request.scopes if s not in to_ask]
            return AuthorizeOutcome(ConsentPage(
                request_id=pending_id, client=_display(client),
                scopes=tuple(_scope_display(catalog, s) for s in to_ask),
                also_granted=tuple(_scope_display(catalog, s) for s in also),
                user_display=session.username), session=cookie)
        return await self._finish(request, client, session, cookie)

    def _login_required(self, request: AuthorizationRequest, session: BrowserSession) -> bool:
        if PROMPT_LOGIN in request.prompt:
            return True
        if request.max_age >= 0:  # Core §3.1.2.1: re-authenticate if the sign-in is older than max_age
            return self.clock() - session.auth_time_ms / 1000 > request.max_age
        return False

    async def _pend(self, request: AuthorizationRequest) -> str:
        pending_id = new_secret_id()
        await self.store.create_authorization_request(
            PendingAuthorization(id_hash=secret_hash(pending_id), client_id=request.client_id,
                                 request_json=request.to_json()), self.settings.request_lifetime)
        return pending_id

    async def _finish(self, request: AuthorizationRequest, client: ClientRecord, session: BrowserSession,
                      cookie: SessionCookie | None) -> AuthorizeOutcome:
        if request.response_type == CODE:
            return await self._code(request, client, session, cookie)
        return await self._implicit(request, client, session, cookie)

    async def _code(self, request: AuthorizationRequest, client: ClientRecord, session: BrowserSession,
                    cookie: SessionCookie | None) -> AuthorizeOutcome:
        """RFC 6749 §4.1.2: a code bound to everything the exchange checks (grant.py)."""
        code = new_code()
        grant_id = secrets.token_urlsafe(16)
        stored = await self.store.create_authorization_code(AuthorizationCodeRecord(
            code_hash=code_hash(code), client_id=client.client_id, redirect_uri=request.redirect_uri,
            scopes=request.scopes, user_id=session.user_id, username=session.username, sid=session.sid,
            auth_time_ms=session.auth_time_ms, nonce=request.nonce, code_challenge=request.code_challenge,
            code_challenge_method=request.code_challenge_method, grant_id=grant_id), self.settings.code_lifetime)
        # Answered once its audit record is kept (as a token is).
        with acting_user(session.user_id):
            event_id = self.events.publish(CODE_ISSUED, events_pb2.Event(
                authorization_code_issued=events_pb2.AuthorizationCodeIssued(
                    client_id=client.client_id, user_id=session.user_id, scope=format_scope(list(request.scopes)),
                    grant_id=grant_id, redirect_uri=request.redirect_uri, pkce=bool(request.code_challenge),
                    expires_at=stored.expires_at)), awaited=True)
        await self.events.durable(event_id)
        log.info("authorization code issued", extra={"client_id": client.client_id, "user_id": session.user_id})
        return AuthorizeOutcome(Redirect(response_location(
            request.redirect_uri, [("code", code), ("state", request.state), ("iss", self.settings.issuer)],
            request.response_mode)), session=cookie)

    async def _implicit(self, request: AuthorizationRequest, client: ClientRecord, session: BrowserSession,
                        cookie: SessionCookie | None) -> AuthorizeOutcome:
        """RFC 6749 §4.2.2 (and Core §3.2.2.5 for `id_token token`): tokens in the fragment,
        no refresh token (§4.2.2), the grant recorded so a withdrawn consent ends it."""
        id_token = None
        if request.response_type == ID_TOKEN_TOKEN:
            # The claims the granted scopes release, as the code exchange's ID token carries them
            # (grant.py): one rule for every ID token Inbound issues, whatever the flow. Core §5.4
            # lets an OP leave them to UserInfo when an access token is issued; it does not require it.
            user = await self.store.get_user(id=session.user_id)
            if user is None or not user.active:  # the session outlived its user by a moment
                return self._redirect_error(AccessDenied("The user cannot sign in."), request, cookie)
            id_token = IdTokenRequest(nonce=request.nonce, auth_time=session.auth_time_ms // 1000, sid=session.sid,
                                      claims=oidc.claims_for(user, request.scopes), at_hash=True)
        grant_id = secrets.token_urlsafe(16)
        await self.store.record_user_grant(session.user_id, client.client_id, grant_id)
        try:
            issued = await self.issuer.issue(IssueRequest(
                client_id=client.client_id, subject=session.user_id, scopes=request.scopes,
                format=client.token_format, username=session.username, grant_type=GRANT_IMPLICIT, grant_id=grant_id,
                lifetime_seconds=min(client.access_token_lifetime, self.settings.implicit_access_token_lifetime),
                id_token=id_token))
        except OAuthError as exc:
            return self._redirect_error(exc, request, cookie)
        return AuthorizeOutcome(Redirect(response_location(request.redirect_uri, [
            ("access_token", issued.access_token), ("token_type", issued.token_type),
            ("expires_in", str(issued.expires_in)), ("scope", format_scope(list(request.scopes))),
            ("id_token", issued.id_token), ("state", request.state), ("iss", self.settings.issuer)], FRAGMENT)),
            session=cookie)

    # --- sign-in and consent -----------------------------------------------------------------------

    async def sign_in(self, pending_request_id: str, username: str, password: str, session_id: str, *,
                      context: RequestContext = NO_CONTEXT, request_id: str = "") -> AuthorizeOutcome:
        try:
            outcome = await self._sign_in(pending_request_id, username, password, session_id, context, request_id)
        except Exception as exc:
            outcome = self._failure(exc)
        return counted("sign_in", outcome)

    async def _sign_in(self, pending_request_id: str, username: str, password: str, session_id: str,
                       context: RequestContext, request_id: str) -> AuthorizeOutcome:
        request = client = None
        if pending_request_id:
            found = await self._pending(pending_request_id)
            if found is None:
                return self._gone()
            request, client = found

        def again(message: str) -> AuthorizeOutcome:
            return AuthorizeOutcome(SignInPage(request_id=pending_request_id, client=_display(client) if client else None,
                                               login_hint=username[:MAX_LOGIN_HINT_LENGTH], message=message))

        if not username or not password or len(username) > MAX_USERNAME_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
            return again(SIGN_IN_FAILED)
        try:
            [outcome] = await self.store.authenticate_users([SignIn(
                username=username, password=password, client_address=context.client_address,
                purpose=PURPOSE_BROWSER_SIGN_IN, request_id=request_id)])
        except Exception as exc:
            if infrastructure_error(exc).code != "temporarily_unavailable":
                raise
            # The registry is busy (its password-hashing queue full) or away: the page again, saying so.
            log.warning("sign-in not checked: the registry is unavailable", extra={"detail": type(exc).__name__})
            return again(SIGN_IN_UNAVAILABLE)
        if not isinstance(outcome, UserRecord):
            reason = "invalid" if isinstance(outcome, Invalid) else "locked" if isinstance(outcome, Locked) \
                else "unavailable"
            self.events.publish(USER_SIGN_IN_FAILED, events_pb2.Event(user_sign_in_failed=events_pb2.UserSignInFailed(
                username=username_fingerprint(username), client_id=client.client_id if client else "",
                client_address=context.client_address, reason=reason)), low_priority=True)
            log.info("sign-in refused", extra={"reason": reason, "client_address": context.client_address})
            return again({"invalid": SIGN_IN_FAILED, "locked": SIGN_IN_LOCKED}.get(reason, SIGN_IN_UNAVAILABLE))
        if pending_request_id and not await self.store.complete_authorization_request(
                secret_hash(pending_request_id)):
            return self._gone()  # a second submit of the same form
        # No session fixation: whatever id the browser had ends, and the session gets a new one.
        if session_id and len(session_id) <= MAX_SECRET_ID_LENGTH:
            await self.store.end_session(id_hash=secret_hash(session_id))
        new_id = new_secret_id()
        session = await self.store.create_session(BrowserSession(
            id_hash=secret_hash(new_id), sid=secrets.token_urlsafe(16), user_id=outcome.id, username=outcome.username,
            client_address=context.client_address[:256], user_agent=context.user_agent[:512]),
            self.settings.session_lifetime, outcome.verified_at_ms)
        with acting_user(outcome.id):
            self.events.publish(USER_SIGNED_IN, events_pb2.Event(user_signed_in=events_pb2.UserSignedIn(
                user_id=outcome.id, username=outcome.username, client_id=client.client_id if client else "",
                client_address=context.client_address, sid=session.sid)))
        cookie = SessionCookie(session_id=new_id, max_age_seconds=self.settings.session_lifetime)
        if request is None:  # the account page's sign-in
            return AuthorizeOutcome(Redirect(self._account_url()), session=cookie)
        try:
            return await self._continue(request, client, session, cookie, signed_in_now=True)
        except Exception as exc:
            # The sign-in stands (the old session is ended, the new one made): the error page
            # keeps its cookie, so trying again needs no second sign-in and no session is orphaned.
            return replace(self._failure(exc), session=cookie)

    async def consent(self, pending_request_id: str, session_id: str, approve: bool, *,
                      context: RequestContext = NO_CONTEXT, request_id: str = "") -> AuthorizeOutcome:
        return counted("consent", await self._consent(pending_request_id, session_id, approve))

    async def _consent(self, pending_request_id: str, session_id: str, approve: bool) -> AuthorizeOutcome:
        try:
            found = await self._pending(pending_request_id)
            session = await self._session(session_id)
            if found is None:
                return self._gone()
            request, client = found
            if session is None or session.sid != request.sid:
                # The consent page was shown to another session (or this one ended): start again.
                return self._gone(SessionCookie(clear=True) if session_id and session is None else None)
            if not await self.store.complete_authorization_request(secret_hash(pending_request_id)):
                return self._gone()  # a second submit of the same form
            if not approve:
                return self._redirect_error(AccessDenied("The user denied the request."), request, None)
            await self.store.grant_consent(session.user_id, client.client_id, list(request.scopes))
            with acting_user(session.user_id):
                self.events.publish(CONSENT_GRANTED, events_pb2.Event(consent_granted=events_pb2.ConsentGranted(
                    user_id=session.user_id, client_id=client.client_id, scope=format_scope(list(request.scopes)))))
            return await self._finish(request, client, session, None)
        except Exception as exc:
            return self._failure(exc)

    # --- the account page ----------------------------------------------------------------------------

    async def account(self, session_id: str, *, request_id: str = "") -> Account:
        session = await self._session(session_id)
        if session is None:
            return Account(signed_in=False, session=SessionCookie(clear=True) if session_id else None)
        consents = await self.store.list_consents(session.user_id)
        names = list(dict.fromkeys(s for c in consents for s in c.scopes))
        catalog = {r.name: r for r in (await self.store.get_scopes(names) if names else []) if r is not None}
        views = []
        for consent in consents:
            client = await self.clients.get_client(consent.client_id)
            views.append(ConsentView(client=_display(client) if client else ClientDisplay(consent.client_id,
                                                                                          consent.client_id),
                                     scopes=tuple(_scope_display(catalog, s) for s in consent.scopes),
                                     granted_at=consent.granted_at))
        user = await self.store.get_user(id=session.user_id)
        return Account(signed_in=True, username=session.username,
                       display_name=user.display_name if user is not None else "", consents=tuple(views))

    async def withdraw_consent(self, session_id: str, client_id: str, *,
                               context: RequestContext = NO_CONTEXT, request_id: str = "") -> Account:
        session = await self._session(session_id)
        if session is not None and client_id and len(client_id) <= 256:
            withdrawn, revoked = await self.store.withdraw_consent(session.user_id, client_id,
                                                                   str(actors.actor(actors.USER, session.user_id)))
            if withdrawn:
                with acting_user(session.user_id):
                    self.events.publish(CONSENT_WITHDRAWN, events_pb2.Event(
                        consent_withdrawn=events_pb2.ConsentWithdrawn(user_id=session.user_id, client_id=client_id,
                                                                      grants_revoked=revoked)))
        return await self.account(session_id, request_id=request_id)

    # --- sign-out and RP-initiated logout --------------------------------------------------------------

    async def end_session(self, session_id: str, params: Mapping[str, tuple[str, ...]], *,
                          user_confirmed: bool = False, context: RequestContext = NO_CONTEXT,
                          request_id: str = "") -> EndSessionOutcome:
        """Sign-out (`user_confirmed`: the account page's form, CSRF-checked by the edge), and
        OpenID Connect RP-Initiated Logout 1.0 §2-§3. RP-initiated, this browser's live session
        ends only for a verified id_token_hint of it (its sid; its user when the hint has no
        sid): §2, the OP MUST ask the user otherwise, or any site could sign them out with a
        link. Then the browser goes to the account page, whose Sign out button asks, and
        nothing ends. With no session in this browser, a hint's sid ends that session. The
        browser goes to the client's post_logout_redirect_uri only when it is exactly one
        registered for the client that the verified id_token_hint (or client_id) names, with
        `state` echoed; else it sees the signed-out page."""
        signed_out = EndSessionOutcome(ErrorPage(error="", description=SIGNED_OUT, http_status=200),
                                       session=SessionCookie(clear=True))
        try:
            session = await self._session(session_id)
            one = {name: values[0] for name, values in params.items() if len(values) == 1 and values[0]}
            hint = await self._id_token_hint(one.get("id_token_hint", ""))
            client_id = one.get("client_id", "")
            hinted = hint.get("aud") if hint else None
            hinted_clients = [hinted] if isinstance(hinted, str) else list(hinted or [])
            if hinted_clients and client_id and client_id not in hinted_clients:
                client_id = ""  # they disagree: trust neither
            elif hinted_clients and not client_id:
                client_id = hinted_clients[0] if len(hinted_clients) == 1 else ""
            if session is not None and not user_confirmed and not _hint_names(hint, session):
                log.info("logout not tied to this browser's session: the user is asked on the account page",
                         extra={"detail": "id_token_hint of another session" if hint else "no id_token_hint"})
                return EndSessionOutcome(Redirect(self._account_url()))
            ended_sid = ""
            if session is not None:
                await self.store.end_session(id_hash=secret_hash(session_id))
                ended_sid, user_id = session.sid, session.user_id
            elif hint and hint.get("sid"):
                if await self.store.end_session(sid=str(hint["sid"])):
                    ended_sid, user_id = str(hint["sid"]), str(hint.get("sub", ""))
            if ended_sid:
                with acting_user(user_id):
                    self.events.publish(SESSION_ENDED, events_pb2.Event(
                        browser_session_ended=events_pb2.BrowserSessionEnded(
                            user_id=user_id, sid=ended_sid, reason="sign_out" if user_confirmed else "rp_logout",
                            client_id="" if user_confirmed else client_id)))
            target = one.get("post_logout_redirect_uri", "")
            if target and client_id and len(client_id) <= 256:
                client = await self.clients.get_client(client_id)
                if client is not None and client.active and target in client.post_logout_redirect_uris:
                    return EndSessionOutcome(Redirect(response_location(
                        target, [("state", one.get("state", "")[:MAX_STATE_LENGTH])], QUERY)),
                        session=SessionCookie(clear=True))
                log.info("post_logout_redirect_uri refused", extra={"detail": "not registered for the client"})
            return signed_out
        except Exception as exc:
            log.warning("sign-out incomplete", extra={"detail": type(exc).__name__})
            error = infrastructure_error(exc)
            return EndSessionOutcome(ErrorPage(error.code, error.description, 503 if error.code ==
                                               "temporarily_unavailable" else 500), session=SessionCookie(clear=True))

    async def _id_token_hint(self, token: str) -> dict | None:
        """An ID token of ours (signature against token_issuer's JWKS, our issuer); expired
        ones count (RP-Initiated Logout §2: the hint may have expired). None otherwise."""
        if not token or len(token) > 8192:
            return None
        try:
            header = jwt.get_unverified_header(token)
            if str(header.get("typ", "")).lower() in ("at+jwt", "application/at+jwt"):
                # One of our JWT access tokens (RFC 9068 §2.1), signed by the same JWKS: not an ID token.
                raise jwt.InvalidTokenError("an access token, not an ID token")
            keys = jwt.PyJWKSet.from_dict(await self.issuer.jwks())
            key = next(k for k in keys.keys if k.key_id == header.get("kid"))
            return jwt.decode(token, key=key.key, algorithms=[key.algorithm_name], issuer=self.settings.issuer,
                              options={"verify_exp": False, "verify_aud": False, "require": ["iss", "sub", "aud"]})
        except (jwt.PyJWTError, StopIteration, KeyError, ValueError, TypeError) as exc:
            log.info("id_token_hint ignored", extra={"detail": type(exc).__name__})
            return None

    # --- UserInfo ------------------------------------------------------------------------------------

    async def user_info(self, access_token: str, *, request_id: str = "") -> dict:
        """OpenID Connect Core §5.3: services/authorization_code/userinfo.py decides."""
        return await self._user_info(access_token, request_id=request_id)

    # --- helpers -------------------------------------------------------------------------------------

    async def _session(self, session_id: str) -> BrowserSession | None:
        if not session_id or len(session_id) > MAX_SECRET_ID_LENGTH:
            return None
        return await self.store.get_session(secret_hash(session_id))

    async def _pending(self, pending_request_id: str) -> tuple[AuthorizationRequest, ClientRecord] | None:
        """The pending request and its client, None when gone (expired, completed, unknown),
        or its client since disabled, its redirect URI since unregistered, the grant its
        response type needs or a scope it asked for since taken from the client (what a
        request was checked for when it came must still hold when it is answered)."""
        if not pending_request_id or len(pending_request_id) > MAX_SECRET_ID_LENGTH:
            return None
        pending = await self.store.get_authorization_request(secret_hash(pending_request_id))
        if pending is None:
            return None
        request = AuthorizationRequest.from_json(pending.request_json)
        client = await self.clients.get_client(request.client_id)
        if client is None or not client.active or request.redirect_uri not in client.redirect_uris:
            return None
        needed = GRANT_IMPLICIT if request.response_type in (TOKEN, ID_TOKEN_TOKEN) else GRANT_AUTHORIZATION_CODE
        if needed not in client.grant_types or not set(request.scopes) <= set(client.scopes):
            return None
        return request, client

    def _account_url(self) -> str:
        return self.settings.issuer.rstrip("/") + ACCOUNT_PATH

    def _gone(self, cookie: SessionCookie | None = None) -> AuthorizeOutcome:
        return AuthorizeOutcome(ErrorPage("invalid_request", REQUEST_GONE, 400), session=cookie)

    def _error_page(self, error: OAuthError, client_id: str) -> AuthorizeOutcome:
        log.info("authorization request refused (error page)",
                 extra={"client_id": client_id, "error": error.code, "detail": error.detail})
        return AuthorizeOutcome(ErrorPage(error.code, error.description, 400))

    def _error_redirect(self, error: OAuthError, c: Checking) -> AuthorizeOutcome:
        state, mode = error_target(c)
        log.info("authorization request refused", extra={"client_id": c.client.client_id, "error": error.code,
                                                         "detail": error.detail})
        return AuthorizeOutcome(Redirect(self._error_location(error, c.redirect_uri, state, mode)))

    def _redirect_error(self, error: OAuthError, request: AuthorizationRequest,
                        cookie: SessionCookie | None) -> AuthorizeOutcome:
        log.info("authorization request answered with an error",
                 extra={"client_id": request.client_id, "error": error.code, "detail": error.detail})
        return AuthorizeOutcome(Redirect(self._error_location(error, request.redirect_uri, request.state,
                                                              request.response_mode)), session=cookie)

    def _error_location(self, error: OAuthError, redirect_uri: str, state: str, mode: str) -> str:
        """RFC 6749 §4.1.2.1 / §4.2.2.1 with RFC 9207 `iss`."""
        return response_location(redirect_uri, [("error", error.code), ("error_description", error.description),
                                                ("state", state), ("iss", self.settings.issuer)], mode)

    def _failure(self, exc: Exception) -> AuthorizeOutcome:
        # An OAuthError here is one of infrastructure already (the audit spool full: temporarily_unavailable).
        error = exc if isinstance(exc, OAuthError) else infrastructure_error(exc)
        if error.code == "server_error":
            log.error("authorization step failed", exc_info=exc)
        else:
            log.warning("authorization step failed: a dependency is unavailable", extra={"detail": error.detail})
        return AuthorizeOutcome(ErrorPage(error.code, error.description,
                                          503 if error.code == "temporarily_unavailable" else 500))



def counted(step: str, outcome: AuthorizeOutcome) -> AuthorizeOutcome:
    r = outcome.result
    if isinstance(r, Redirect):
        kind = "redirect_error" if "error=" in r.location else "redirect"
    else:
        kind = {ErrorPage: "error_page", SignInPage: "sign_in_page", ConsentPage: "consent_page"}[type(r)]
    OUTCOMES.labels(step, kind).inc()
    return outcome


@contextlib.contextmanager
def acting_user(user_id: str):
    """Events published meanwhile name the user as their actor (the browser acts for them)."""
    token = actors.actor_var.set(actors.actor(actors.USER, user_id or "unknown"))
    try:
        yield
    finally:
        actors.actor_var.reset(token)


def _hint_names(hint: dict | None, session: BrowserSession) -> bool:
    """Does a verified id_token_hint belong to `session` (RP-Initiated Logout 1.0 §2)?"""
    if not hint:
        return False
    if hint.get("sid"):
        return str(hint["sid"]) == session.sid
    return str(hint.get("sub", "")) == session.user_id


def _display(client: ClientRecord) -> ClientDisplay:
    return ClientDisplay(client_id=client.client_id, name=client.name, logo_url=client.logo_url)


def _scope_display(catalog: Mapping[str, ScopeRecord], name: str) -> ScopeDisplay:
    record = catalog.get(name)
    return ScopeDisplay(name=name, description=record.description if record is not None else name)

"""The authorize contract as plain Python (proto/inbound/authorize/v1/authorize.proto):
what the edge asks the authorization_code service for the browser, in process
(the one-process mode) or over gRPC (client.py), with the same interface.

The service decides; the edge renders the outcome (a redirect, an error page that
never redirects, the sign-in page, the consent page), keeps the session cookie
the outcome names, and checks CSRF on every form before calling.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from inboundlib.grants.api import NO_CONTEXT, RequestContext


@dataclass(frozen=True)
class SessionCookie:
    """Set the browser's session cookie to `session_id` for `max_age_seconds`, or clear it."""
    session_id: str = field(default="", repr=False)
    max_age_seconds: int = 0
    clear: bool = False


@dataclass(frozen=True)
class ClientDisplay:
    client_id: str
    name: str
    logo_url: str = ""


@dataclass(frozen=True)
class ScopeDisplay:
    name: str
    description: str


@dataclass(frozen=True)
class Redirect:
    """302 after GET, 303 after POST, to `location`."""
    location: str


@dataclass(frozen=True)
class ErrorPage:
    """A page, never a redirect (RFC 6749 §4.1.2.1: the client or redirect URI is not trusted)."""
    error: str
    description: str
    http_status: int = 400


@dataclass(frozen=True)
class SignInPage:
    request_id: str = field(repr=False)  # "" for the account page's sign-in
    client: ClientDisplay | None = None
    login_hint: str = ""
    message: str = ""  # why the last attempt failed, for the user; "" the first time


@dataclass(frozen=True)
class ConsentPage:
    request_id: str = field(repr=False)
    client: ClientDisplay
    scopes: tuple[ScopeDisplay, ...]  # to consent to now
    also_granted: tuple[ScopeDisplay, ...] = ()  # asked for, needing no consent or consented before
    user_display: str = ""


@dataclass(frozen=True)
class AuthorizeOutcome:
    result: Redirect | ErrorPage | SignInPage | ConsentPage
    session: SessionCookie | None = None  # None: leave the cookie as it is


@dataclass(frozen=True)
class ConsentView:
    client: ClientDisplay
    scopes: tuple[ScopeDisplay, ...]
    granted_at: int


@dataclass(frozen=True)
class Account:
    signed_in: bool
    username: str = ""
    display_name: str = ""
    consents: tuple[ConsentView, ...] = ()
    session: SessionCookie | None = None


@dataclass(frozen=True)
class EndSessionOutcome:
    result: Redirect | ErrorPage  # ErrorPage doubles as the "you are signed out" page (error "")
    session: SessionCookie | None = None


class AuthorizationApi(Protocol):
    """Every method answers an outcome; none raises for anything the browser sent.
    `params` are the query or form parameters with their values as sent (repeats
    are the service's to refuse). `user_info` raises InvalidToken (401) or
    InsufficientScope (403) per RFC 6750 §3.1, and answers the claims JSON object."""

    async def authorize(self, params: Mapping[str, tuple[str, ...]], session_id: str, *,
                        context: RequestContext = NO_CONTEXT, request_id: str = "") -> AuthorizeOutcome: ...

    async def sign_in(self, pending_request_id: str, username: str, password: str, session_id: str, *,
                      context: RequestContext = NO_CONTEXT, request_id: str = "") -> AuthorizeOutcome: ...

    async def consent(self, pending_request_id: str, session_id: str, approve: bool, *,
                      context: RequestContext = NO_CONTEXT, request_id: str = "") -> AuthorizeOutcome: ...

    async def account(self, session_id: str, *, request_id: str = "") -> Account: ...

    async def withdraw_consent(self, session_id: str, client_id: str, *,
                               context: RequestContext = NO_CONTEXT, request_id: str = "") -> Account: ...

    async def end_session(self, session_id: str, params: Mapping[str, tuple[str, ...]], *,
                          user_confirmed: bool = False, context: RequestContext = NO_CONTEXT,
                          request_id: str = "") -> EndSessionOutcome: ...

    async def user_info(self, access_token: str, *, request_id: str = "") -> dict: ...

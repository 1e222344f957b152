"""The authorization_code service over gRPC, for the edge: the grant's `handle(TokenRequest)`
(the code-for-token exchange, inboundlib.grants.client) and the authorize contract
(api.AuthorizationApi), on one channel, with the same interface as the component's `api`."""
from __future__ import annotations

import json
from collections.abc import Mapping

import grpc

from inbound.authorize.v1 import authorize_pb2 as pb
from inbound.authorize.v1 import authorize_pb2_grpc
from inboundlib.grants.api import NO_CONTEXT, RequestContext, TokenRequest, TokenResponse
from inboundlib.grants.client import GrantClient
from inboundlib.grants.server import params_to_pb
from inboundlib.wire import context_to_pb, error_from_pb, meta
from services.authorization_code import api

# The most the edge waits for a page's decision (a sign-in checks a password: tens of ms of one core).
TIMEOUT = 10.0


def _client(message: pb.ClientDisplay) -> api.ClientDisplay:
    return api.ClientDisplay(client_id=message.client_id, name=message.name, logo_url=message.logo_url)


def _scopes(items) -> tuple[api.ScopeDisplay, ...]:
    return tuple(api.ScopeDisplay(name=s.name, description=s.description) for s in items)


def _cookie(message, has: bool) -> api.SessionCookie | None:
    if not has:
        return None
    return api.SessionCookie(session_id=message.session_id, max_age_seconds=message.max_age_seconds,
                             clear=message.clear)


def _error_page(message: pb.ErrorPage) -> api.ErrorPage:
    return api.ErrorPage(error=message.error, description=message.description, http_status=message.http_status)


def outcome_from_pb(message: pb.AuthorizeOutcome) -> api.AuthorizeOutcome:
    kind = message.WhichOneof("outcome")
    if kind == "redirect":
        result = api.Redirect(message.redirect.location)
    elif kind == "error_page":
        result = _error_page(message.error_page)
    elif kind == "sign_in":
        s = message.sign_in
        result = api.SignInPage(request_id=s.request_id, client=_client(s.client) if s.HasField("client") else None,
                                login_hint=s.login_hint, message=s.message)
    elif kind == "consent":
        c = message.consent
        result = api.ConsentPage(request_id=c.request_id, client=_client(c.client), scopes=_scopes(c.scopes),
                                 also_granted=_scopes(c.also_granted), user_display=c.user_display)
    else:
        raise ValueError("an authorize outcome without a result")
    return api.AuthorizeOutcome(result, session=_cookie(message.session, message.HasField("session")))


def account_from_pb(message: pb.Account) -> api.Account:
    return api.Account(signed_in=message.signed_in, username=message.username, display_name=message.display_name,
                       consents=tuple(api.ConsentView(client=_client(c.client), scopes=_scopes(c.scopes),
                                                      granted_at=c.granted_at) for c in message.consents),
                       session=_cookie(message.session, message.HasField("session")))


class AuthorizationClient:
    """api.AuthorizationApi over gRPC. Nothing here is retried: a sign-in or a consent
    changes state, and a page's request is the browser's to repeat."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = authorize_pb2_grpc.AuthorizationStub(channel)

    async def authorize(self, params: Mapping[str, tuple[str, ...]], session_id: str, *,
                        context: RequestContext = NO_CONTEXT, request_id: str = "") -> api.AuthorizeOutcome:
        return outcome_from_pb(await self.stub.Authorize(pb.AuthorizeRequest(
            meta=meta(request_id, TIMEOUT), context=context_to_pb(context), params=params_to_pb(params),
            session_id=session_id), timeout=TIMEOUT))

    async def sign_in(self, pending_request_id: str, username: str, password: str, session_id: str, *,
                      context: RequestContext = NO_CONTEXT, request_id: str = "") -> api.AuthorizeOutcome:
        return outcome_from_pb(await self.stub.SignIn(pb.SignInRequest(
            meta=meta(request_id, TIMEOUT), context=context_to_pb(context), request_id=pending_request_id,
            username=username, password=password, session_id=session_id), timeout=TIMEOUT))

    async def consent(self, pending_request_id: str, session_id: str, approve: bool, *,
                      context: RequestContext = NO_CONTEXT, request_id: str = "") -> api.AuthorizeOutcome:
        return outcome_from_pb(await self.stub.Consent(pb.ConsentRequest(
            meta=meta(request_id, TIMEOUT), context=context_to_pb(context), request_id=pending_request_id,
            session_id=session_id, approve=approve), timeout=TIMEOUT))

    async def account(self, session_id: str, *, request_id: str = "") -> api.Account:
        return account_from_pb(await self.stub.GetAccount(pb.AccountRequest(
            meta=meta(request_id, TIMEOUT), session_id=session_id), timeout=TIMEOUT))

    async def withdraw_consent(self, session_id: str, client_id: str, *,
                               context: RequestContext = NO_CONTEXT, request_id: str = "") -> api.Account:
        return account_from_pb(await self.stub.WithdrawConsent(pb.WithdrawConsentRequest(
            meta=meta(request_id, TIMEOUT), context=context_to_pb(context), session_id=session_id,
            client_id=client_id), timeout=TIMEOUT))

    async def end_session(self, session_id: str, params: Mapping[str, tuple[str, ...]], *,
                          user_confirmed: bool = False, context: RequestContext = NO_CONTEXT,
                          request_id: str = "") -> api.EndSessionOutcome:
        reply = await self.stub.EndSession(pb.EndSessionRequest(
            meta=meta(request_id, TIMEOUT), context=context_to_pb(context), session_id=session_id,
            params=params_to_pb(params), user_confirmed=user_confirmed), timeout=TIMEOUT)
        result = api.Redirect(reply.redirect.location) if reply.WhichOneof("outcome") == "redirect" \
            else _error_page(reply.page)
        return api.EndSessionOutcome(result, session=_cookie(reply.session, reply.HasField("session")))

    async def user_info(self, access_token: str, *, request_id: str = "") -> dict:
        reply = await self.stub.UserInfo(pb.UserInfoRequest(meta=meta(request_id, TIMEOUT),
                                                            access_token=access_token), timeout=TIMEOUT)
        if reply.WhichOneof("outcome") == "error":
            raise error_from_pb(reply.error)
        return json.loads(reply.claims_json)


class AuthorizationCodeClient(AuthorizationClient):
    """What `connect()` gives the edge (`ctx.grants()["authorization_code"]`): the authorize
    contract and the grant's token requests, on one channel."""

    def __init__(self, grant_type: str, channel: grpc.aio.Channel):
        super().__init__(channel)
        self.grant_type = grant_type
        self._grant = GrantClient(grant_type, channel)

    async def handle(self, request: TokenRequest) -> TokenResponse:
        return await self._grant.handle(request)

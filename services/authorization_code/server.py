"""The authorize contract's gRPC servicer (proto/inbound/authorize/v1/authorize.proto):
protobuf in, api.AuthorizationApi, protobuf out. Nothing is decided here (authorize.py)."""
from __future__ import annotations

import json
import logging

import grpc

from inbound.authorize.v1 import authorize_pb2 as pb
from inbound.authorize.v1 import authorize_pb2_grpc
from inboundlib.grants.server import params_from_pb
from inboundlib.grpcx import infrastructure_error
from inboundlib.logs import request_id_var
from inboundlib.oauth.errors import OAuthError
from inboundlib.wire import context_from_pb, error_to_pb, item_budget
from services.authorization_code import api

log = logging.getLogger(__name__)

SERVICE_NAME = "inbound.authorize.v1.Authorization"


def client_to_pb(client: api.ClientDisplay | None) -> pb.ClientDisplay | None:
    if client is None:
        return None
    return pb.ClientDisplay(client_id=client.client_id, name=client.name, logo_url=client.logo_url)


def scopes_to_pb(scopes) -> list[pb.ScopeDisplay]:
    return [pb.ScopeDisplay(name=s.name, description=s.description) for s in scopes]


def cookie_to_pb(cookie: api.SessionCookie | None) -> pb.SessionCookie | None:
    if cookie is None:
        return None
    return pb.SessionCookie(session_id=cookie.session_id, max_age_seconds=cookie.max_age_seconds, clear=cookie.clear)


def error_page_to_pb(page: api.ErrorPage) -> pb.ErrorPage:
    return pb.ErrorPage(error=page.error, description=page.description, http_status=page.http_status)


def outcome_to_pb(outcome: api.AuthorizeOutcome) -> pb.AuthorizeOutcome:
    r = outcome.result
    message = pb.AuthorizeOutcome(session=cookie_to_pb(outcome.session))
    if isinstance(r, api.Redirect):
        message.redirect.location = r.location
    elif isinstance(r, api.ErrorPage):
        message.error_page.CopyFrom(error_page_to_pb(r))
    elif isinstance(r, api.SignInPage):
        message.sign_in.CopyFrom(pb.SignInPage(request_id=r.request_id, client=client_to_pb(r.client),
                                               login_hint=r.login_hint, message=r.message))
    elif isinstance(r, api.ConsentPage):
        message.consent.CopyFrom(pb.ConsentPage(request_id=r.request_id, client=client_to_pb(r.client),
                                                scopes=scopes_to_pb(r.scopes),
                                                also_granted=scopes_to_pb(r.also_granted),
                                                user_display=r.user_display))
    else:
        raise TypeError(f"unknown outcome {type(r).__name__}")
    return message


def account_to_pb(account: api.Account) -> pb.Account:
    return pb.Account(signed_in=account.signed_in, username=account.username, display_name=account.display_name,
                      consents=[pb.ConsentView(client=client_to_pb(c.client), scopes=scopes_to_pb(c.scopes),
                                               granted_at=c.granted_at) for c in account.consents],
                      session=cookie_to_pb(account.session))


def end_session_to_pb(outcome: api.EndSessionOutcome) -> pb.EndSessionOutcome:
    message = pb.EndSessionOutcome(session=cookie_to_pb(outcome.session))
    if isinstance(outcome.result, api.Redirect):
        message.redirect.location = outcome.result.location
    else:
        message.page.CopyFrom(error_page_to_pb(outcome.result))
    return message


def _context(request):
    return context_from_pb(request.context)


class AuthorizationServicer(authorize_pb2_grpc.AuthorizationServicer):
    def __init__(self, authorization: api.AuthorizationApi):
        self.api = authorization

    async def _call(self, request, work):
        token = request_id_var.set(request.meta.request_id)
        try:
            with item_budget(request.meta):
                return await work()
        finally:
            request_id_var.reset(token)

    async def Authorize(self, request, context):
        return outcome_to_pb(await self._call(request, lambda: self.api.authorize(
            params_from_pb(request.params), request.session_id, context=_context(request),
            request_id=request.meta.request_id)))

    async def SignIn(self, request, context):
        return outcome_to_pb(await self._call(request, lambda: self.api.sign_in(
            request.request_id, request.username, request.password, request.session_id, context=_context(request),
            request_id=request.meta.request_id)))

    async def Consent(self, request, context):
        return outcome_to_pb(await self._call(request, lambda: self.api.consent(
            request.request_id, request.session_id, request.approve, context=_context(request),
            request_id=request.meta.request_id)))

    async def GetAccount(self, request, context):
        return account_to_pb(await self._call(request, lambda: self.api.account(
            request.session_id, request_id=request.meta.request_id)))

    async def WithdrawConsent(self, request, context):
        return account_to_pb(await self._call(request, lambda: self.api.withdraw_consent(
            request.session_id, request.client_id, context=_context(request), request_id=request.meta.request_id)))

    async def EndSession(self, request, context):
        return end_session_to_pb(await self._call(request, lambda: self.api.end_session(
            request.session_id, params_from_pb(request.params), user_confirmed=request.user_confirmed,
            context=_context(request), request_id=request.meta.request_id)))

    async def UserInfo(self, request, context):
        async def work():
            try:
                claims = await self.api.user_info(request.access_token, request_id=request.meta.request_id)
            except OAuthError as exc:
                return pb.UserInfoResult(error=error_to_pb(exc))
            except Exception as exc:  # a dependency failed: temporarily_unavailable or server_error, as data
                error = infrastructure_error(exc)
                log.warning("userinfo failed", extra={"detail": error.detail})
                return pb.UserInfoResult(error=error_to_pb(error))
            return pb.UserInfoResult(claims_json=json.dumps(claims, separators=(",", ":")))
        return await self._call(request, work)


def add_to_server(authorization: api.AuthorizationApi, server: grpc.aio.Server) -> None:
    authorize_pb2_grpc.add_AuthorizationServicer_to_server(AuthorizationServicer(authorization), server)

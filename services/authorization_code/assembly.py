"""The authorization_code service's settings and start-up (see libs/inboundlib/hosting.py).

One component, two gRPC services on its port: `inbound.grant.v1.GrantService` (the
code-for-token exchange: grant.py's handler inside the GrantRunner every grant service
runs, built by services/grant_process.py as for any grant) and
`inbound.authorize.v1.Authorization` (the authorize decisions, authorize.py). Its `api`
(in process) and `connect()` (over gRPC) both offer the grant's `handle(TokenRequest)`
and the AuthorizationApi methods: the edge finds it among its grants,
`ctx.grants()["authorization_code"]`. Implicit lives here too (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from inboundlib.config import Env
from inboundlib.grants.api import NO_CONTEXT, RequestContext, TokenRequest, TokenResponse
from inboundlib.grants.runner import GrantRunner
from inboundlib.hosting import GRPC, Context, Module
from services import grant_process
from services.authorization_code import server
from services.authorization_code.api import Account, AuthorizeOutcome, EndSessionOutcome
from services.authorization_code.authorize import Authorization, AuthorizeSettings
from services.authorization_code.client import AuthorizationCodeClient
from services.authorization_code.userinfo import UserInfo
from services.client_registry.api import MAX_ACCESS_TOKEN_LIFETIME

CODE_LIFETIME = "INBOUND_AUTHORIZATION_CODE_LIFETIME"
REQUEST_LIFETIME = "INBOUND_AUTHORIZATION_REQUEST_LIFETIME"
SESSION_LIFETIME = "INBOUND_SESSION_LIFETIME"
IMPLICIT_LIFETIME = "INBOUND_IMPLICIT_ACCESS_TOKEN_LIFETIME"
# RFC 6749 §4.1.2: "A maximum authorization code lifetime of 10 minutes is RECOMMENDED."
MAX_CODE_LIFETIME = 600


@dataclass(frozen=True)
class Settings:
    grant: grant_process.Settings
    authorize: AuthorizeSettings

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        return cls(grant=grant_process.Settings.from_env(env), authorize=AuthorizeSettings(
            issuer=env.url("INBOUND_ISSUER", "http://127.0.0.1:8080"),
            code_lifetime=env.int(CODE_LIFETIME, 60, minimum=1, maximum=MAX_CODE_LIFETIME),
            request_lifetime=env.int(REQUEST_LIFETIME, 600, minimum=60, maximum=3600),
            session_lifetime=env.int(SESSION_LIFETIME, 28800, minimum=60, maximum=30 * 24 * 3600),
            implicit_access_token_lifetime=env.int(IMPLICIT_LIFETIME, 900, minimum=1,
                                                   maximum=MAX_ACCESS_TOKEN_LIFETIME)))


class LocalAuthorizationCode:
    """The component's `api`, what the edge calls in the same process: the grant's
    runner and the authorize decisions, with AuthorizationCodeClient's interface."""

    def __init__(self, runner: GrantRunner, authorization: Authorization):
        self.grant_type = runner.grant_type
        self.runner = runner
        self.authorization = authorization

    async def handle(self, request: TokenRequest) -> TokenResponse:
        return await self.runner.handle(request)

    async def authorize(self, params: Mapping[str, tuple[str, ...]], session_id: str, *,
                        context: RequestContext = NO_CONTEXT, request_id: str = "") -> AuthorizeOutcome:
        return await self.authorization.authorize(params, session_id, context=context, request_id=request_id)

    async def sign_in(self, pending_request_id: str, username: str, password: str, session_id: str, *,
                      context: RequestContext = NO_CONTEXT, request_id: str = "") -> AuthorizeOutcome:
        return await self.authorization.sign_in(pending_request_id, username, password, session_id,
                                                context=context, request_id=request_id)

    async def consent(self, pending_request_id: str, session_id: str, approve: bool, *,
                      context: RequestContext = NO_CONTEXT, request_id: str = "") -> AuthorizeOutcome:
        return await self.authorization.consent(pending_request_id, session_id, approve, context=context,
                                                request_id=request_id)

    async def account(self, session_id: str, *, request_id: str = "") -> Account:
        return await self.authorization.account(session_id, request_id=request_id)

    async def withdraw_consent(self, session_id: str, client_id: str, *,
                               context: RequestContext = NO_CONTEXT, request_id: str = "") -> Account:
        return await self.authorization.withdraw_consent(session_id, client_id, context=context,
                                                         request_id=request_id)

    async def end_session(self, session_id: str, params: Mapping[str, tuple[str, ...]], *,
                          user_confirmed: bool = False, context: RequestContext = NO_CONTEXT,
                          request_id: str = "") -> EndSessionOutcome:
        return await self.authorization.end_session(session_id, params, user_confirmed=user_confirmed,
                                                    context=context, request_id=request_id)

    async def user_info(self, access_token: str, *, request_id: str = "") -> dict:
        return await self.authorization.user_info(access_token, request_id=request_id)


@dataclass
class AuthorizationCodeService:
    grant: grant_process.GrantService
    authorization: Authorization

    def __post_init__(self) -> None:
        self.api = LocalAuthorizationCode(self.grant.api, self.authorization)

    def add_to_server(self, port: str, grpc_server: grpc.aio.Server) -> list[str]:
        assert port == GRPC, port
        names = self.grant.add_to_server(port, grpc_server)
        server.add_to_server(self.authorization, grpc_server)
        return [*names, server.SERVICE_NAME]

    async def stop(self) -> None:
        await self.grant.stop()


async def start(settings: Settings, ctx: Context) -> AuthorizationCodeService:
    # The grant as every grant service runs it (grant.py's build(deps), the client cache, the runner).
    grant = await grant_process.start(settings.grant, ctx)
    registry = await ctx.dependency("client_registry")
    issuer = await ctx.dependency("token_issuer")
    authorization = Authorization(grant.clients, registry, issuer, ctx.events, settings.authorize,
                                  user_info=UserInfo(issuer, registry).claims)
    return AuthorizationCodeService(grant=grant, authorization=authorization)


def connect(channel: grpc.aio.Channel, module: Module) -> AuthorizationCodeClient:
    return AuthorizationCodeClient(module.grant_type, channel)

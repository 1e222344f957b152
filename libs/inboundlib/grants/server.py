"""The gRPC servicer every grant service uses: a batch of token requests in,
one result each out; OAuth errors are data. Around the handler it runs the
GrantRunner (client authentication, the grant and parameter checks, metrics,
the refusal's log line and audit event).

Each item is answered on its own: whatever goes wrong with one (a malformed
field, a bug) is that item's `server_error`, never its neighbours'."""
from __future__ import annotations

import asyncio
import logging

import grpc

from inbound.grant.v1 import grant_pb2 as pb
from inbound.grant.v1 import grant_pb2_grpc
from inboundlib.events import EventBus
from inboundlib.grants.api import GrantHandler, RequestContext, TokenRequest, TokenResponse
from inboundlib.grants.runner import GrantRunner
from inboundlib.logs import request_id_var
from inboundlib.oauth.client_auth import ClientAuthenticator, ClientSource
from inboundlib.oauth.errors import OAuthError, ServerError, TemporarilyUnavailable
from inboundlib.wire import context_from_pb, credentials_from_pb, error_to_pb, expired, item_budget

log = logging.getLogger(__name__)

SERVICE_NAME = "inbound.grant.v1.GrantService"
MAX_BATCH = 256


def params_to_pb(params) -> list[pb.Parameter]:
    return [pb.Parameter(name=name, values=values) for name, values in params.items()]


def params_from_pb(items) -> dict[str, tuple[str, ...]]:
    params: dict[str, tuple[str, ...]] = {}
    for item in items:
        params[item.name] = params.get(item.name, ()) + tuple(item.values)
    return params


def request_from_pb(item: pb.TokenRequest) -> TokenRequest:
    return TokenRequest(grant_type=item.grant_type, client=credentials_from_pb(item.client),
                        params=params_from_pb(item.params), request_id=item.meta.request_id,
                        context=context_from_pb(item.context) if item.HasField("context") else RequestContext())


def response_to_pb(r: TokenResponse) -> pb.TokenResponse:
    return pb.TokenResponse(access_token=r.access_token, token_type=r.token_type, expires_in=r.expires_in,
                            scope=r.scope, refresh_token=r.refresh_token, id_token=r.id_token,
                            issued_token_type=r.issued_token_type)


class GrantServicer(grant_pb2_grpc.GrantServiceServicer):
    def __init__(self, handler: GrantHandler, clients: ClientSource | ClientAuthenticator,
                 events: EventBus | None = None):
        self.runner = GrantRunner(handler, clients, events)

    async def _one(self, item: pb.TokenRequest) -> pb.TokenResult:
        token = request_id_var.set(item.meta.request_id)
        try:
            if expired(item.meta):
                raise TemporarilyUnavailable(detail="no time left before handling")
            with item_budget(item.meta):
                return pb.TokenResult(token=response_to_pb(await self.runner.handle(request_from_pb(item))))
        except OAuthError as exc:
            return pb.TokenResult(error=error_to_pb(exc))
        except Exception:  # the runner answers every error; this is a bug in the wire code: this item's alone
            log.exception("token request failed")
            return pb.TokenResult(error=error_to_pb(ServerError()))
        finally:
            request_id_var.reset(token)

    async def Token(self, request, context):
        if len(request.requests) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} requests a call")
        results = await asyncio.gather(*(self._one(item) for item in request.requests))
        return pb.TokenResults(results=results)


def add_to_server(handler: GrantHandler, server: grpc.aio.Server, clients: ClientSource | ClientAuthenticator,
                  events: EventBus | None = None) -> None:
    grant_pb2_grpc.add_GrantServiceServicer_to_server(GrantServicer(handler, clients, events), server)

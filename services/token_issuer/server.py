"""gRPC servicer for token_issuer: protobuf in, TokenIssuer calls, protobuf out."""
from __future__ import annotations

import asyncio
import json
import logging

import grpc

from inbound.issuer.v1 import issuer_pb2 as pb
from inbound.issuer.v1 import issuer_pb2_grpc
from inboundlib import authz
from inboundlib.grpcx import answer_item, check_batch_size
from inboundlib.oauth.errors import KeysPending, OAuthError, TemporarilyUnavailable
from inboundlib.wire import credentials_from_pb, error_to_pb
from services import access
from services.token_issuer.api import FORMAT_JWT, FORMAT_OPAQUE, IssueRequest, KeyInfo
from services.token_issuer.introspection import TokenChecker
from services.token_issuer.issuer import TokenIssuer
from services.token_issuer.wire import id_token_request_from_pb, info_to_pb

log = logging.getLogger(__name__)

SERVICE_NAME = "inbound.issuer.v1.TokenIssuer"
MAX_BATCH = 256
_FORMATS = {pb.TOKEN_FORMAT_JWT: FORMAT_JWT, pb.TOKEN_FORMAT_OPAQUE: FORMAT_OPAQUE}


def key_to_pb(k: KeyInfo) -> pb.SigningKeyInfo:
    return pb.SigningKeyInfo(kid=k.kid, alg=k.alg, created_at=k.created_at, activates_at=k.activates_at,
                             signing=k.signing)


async def _per_item(meta, work):
    """One batch item (inboundlib.grpcx.answer_item), its OAuth error as data: keys_pending
    is internal, so only the edge gets it (its _answered loop sends the request again); a
    resource server or another service is told to retry later (RFC 6749 §5.2)."""
    outcome = await answer_item(meta, work)
    if not isinstance(outcome, OAuthError):
        return outcome
    if isinstance(outcome, KeysPending) and not authz.admitted(access.EDGE):
        outcome = TemporarilyUnavailable(detail=outcome.detail)
    log.info("request refused", extra={"error": outcome.code, "detail": outcome.detail})
    return error_to_pb(outcome)


class TokenIssuerServicer(issuer_pb2_grpc.TokenIssuerServicer):
    def __init__(self, issuer: TokenIssuer, checker: TokenChecker):
        self.issuer = issuer
        self.checker = checker

    async def _issue_one(self, item: pb.IssueRequest) -> pb.IssueResult:
        async def work():
            issued = await self.issuer.issue(IssueRequest(
                client_id=item.client_id, subject=item.subject, scopes=tuple(item.scopes),
                format=_FORMATS.get(item.format, FORMAT_JWT), lifetime_seconds=item.lifetime_seconds,
                audience=tuple(item.audience), username=item.username, request_id=item.meta.request_id,
                grant_type=item.grant_type, grant_id=item.grant_id,
                refresh_token_lifetime=item.refresh_token_lifetime_seconds,
                refresh_token_absolute_lifetime=item.refresh_token_absolute_lifetime_seconds,
                authenticated_at_ms=item.authenticated_at_unix_ms,
                id_token=id_token_request_from_pb(item.id_token) if item.HasField("id_token") else None,
                act_json=item.act_json, provider=item.provider))
            return pb.IssuedToken(access_token=issued.access_token, token_type=issued.token_type,
                                  expires_in=issued.expires_in, jti=issued.jti, issued_at=issued.issued_at,
                                  refresh_token=issued.refresh_token, grant_id=issued.grant_id,
                                  id_token=issued.id_token)

        outcome = await _per_item(item.meta, work)
        if isinstance(outcome, pb.IssuedToken):
            return pb.IssueResult(token=outcome)
        return pb.IssueResult(error=outcome)

    async def _introspect_one(self, item: pb.IntrospectRequest) -> pb.IntrospectResult:
        async def work():
            caller = credentials_from_pb(item.caller) if item.HasField("caller") else None
            return info_to_pb(await self.checker.introspect(item.token, caller, internal=caller is None,
                                                            endpoint_url=item.endpoint_url))

        outcome = await _per_item(item.meta, work)
        if isinstance(outcome, pb.TokenInfo):
            return pb.IntrospectResult(info=outcome)
        return pb.IntrospectResult(error=outcome)

    async def _revoke_one(self, item: pb.RevokeRequest) -> pb.RevokeResult:
        async def work():
            await self.checker.revoke(item.token, credentials_from_pb(item.caller), endpoint_url=item.endpoint_url)
            return None

        outcome = await _per_item(item.meta, work)
        return pb.RevokeResult(error=outcome) if outcome is not None else pb.RevokeResult()

    async def Introspect(self, request, context):
        await check_batch_size(context, request.requests, MAX_BATCH)
        return pb.IntrospectResults(results=await asyncio.gather(
            *(self._introspect_one(item) for item in request.requests)))

    async def Revoke(self, request, context):
        await check_batch_size(context, request.requests, MAX_BATCH)
        return pb.RevokeResults(results=await asyncio.gather(*(self._revoke_one(item) for item in request.requests)))

    async def RevokeClientTokens(self, request, context):
        if not request.client_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client_id is required")
        cut_off_ms = await self.checker.revoke_client_tokens(request.client_id)
        return pb.RevokeClientTokensResponse(revoked_before=cut_off_ms // 1000, revoked_before_unix_ms=cut_off_ms)

    async def Issue(self, request, context):
        await check_batch_size(context, request.requests, MAX_BATCH)
        results = await asyncio.gather(*(self._issue_one(item) for item in request.requests))
        return pb.IssueResults(results=results)

    async def GetJwks(self, request, context):
        return pb.GetJwksResponse(jwks_json=json.dumps(await self.issuer.jwks()))

    async def ListKeys(self, request, context):
        return pb.ListKeysResponse(keys=[key_to_pb(k) for k in await self.issuer.list_keys()])

    async def RotateKey(self, request, context):
        try:
            delay = request.activation_delay_seconds if request.HasField("activation_delay_seconds") else None
            key = await self.issuer.rotate_key(request.alg, delay)
        except OAuthError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.description)
        return pb.RotateKeyResponse(key=key_to_pb(key))

    async def RewrapKeys(self, request, context):
        try:
            report = await self.issuer.rewrap_keys()
        except TemporarilyUnavailable as exc:  # a key kept changing under it: another rewrap races this one
            await context.abort(grpc.StatusCode.ABORTED, exc.detail)
        return pb.RewrapKeysResponse(rewrapped=report.rewrapped, current=report.current,
                                     unreadable=report.unreadable)


# What the introspection-only port serves: an allow-list, so an RPC added to the
# contract later is not exposed there by accident.
INTROSPECTION_PORT_METHODS = {
    "Introspect": (pb.IntrospectBatch, pb.IntrospectResults),
    "GetJwks": (pb.GetJwksRequest, pb.GetJwksResponse),
}


def add_to_server(issuer: TokenIssuer, checker: TokenChecker, server: grpc.aio.Server, *,
                  introspection_only: bool = False) -> None:
    """The full API on the main port; with `introspection_only`, just Introspect and
    the JWKS, for resource servers outside Inbound (every other method: UNIMPLEMENTED)."""
    servicer = TokenIssuerServicer(issuer, checker)
    if not introspection_only:
        issuer_pb2_grpc.add_TokenIssuerServicer_to_server(servicer, server)
        return
    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name),
                                                          request_deserializer=request.FromString,
                                                          response_serializer=reply.SerializeToString)
                for name, (request, reply) in INTROSPECTION_PORT_METHODS.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))

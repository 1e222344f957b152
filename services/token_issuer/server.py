"""gRPC servicer for token_issuer: protobuf in, TokenIssuer calls, protobuf out."""
from __future__ import annotations

import asyncio
import json
import logging

import grpc

from inbound.issuer.v1 import issuer_pb2 as pb
from inbound.issuer.v1 import issuer_pb2_grpc
from inboundlib.logs import request_id_var
from inboundlib.oauth.errors import OAuthError, ServerError, TemporarilyUnavailable
from inboundlib.wire import error_to_pb, expired
from services.token_issuer.api import FORMAT_JWT, FORMAT_OPAQUE, IssueRequest, KeyInfo
from services.token_issuer.issuer import TokenIssuer

log = logging.getLogger(__name__)

SERVICE_NAME = "inbound.issuer.v1.TokenIssuer"
MAX_BATCH = 256
_FORMATS = {pb.TOKEN_FORMAT_JWT: FORMAT_JWT, pb.TOKEN_FORMAT_OPAQUE: FORMAT_OPAQUE}


def key_to_pb(k: KeyInfo) -> pb.SigningKeyInfo:
    return pb.SigningKeyInfo(kid=k.kid, alg=k.alg, created_at=k.created_at, activates_at=k.activates_at,
                             signing=k.signing)


class TokenIssuerServicer(issuer_pb2_grpc.TokenIssuerServicer):
    def __init__(self, issuer: TokenIssuer):
        self.issuer = issuer

    async def _issue_one(self, item: pb.IssueRequest) -> pb.IssueResult:
        token = request_id_var.set(item.meta.request_id)
        try:
            if expired(item.meta):
                raise TemporarilyUnavailable(detail="deadline passed before issuing")
            issued = await self.issuer.issue(IssueRequest(
                client_id=item.client_id, subject=item.subject, scopes=tuple(item.scopes),
                format=_FORMATS.get(item.format, FORMAT_JWT), lifetime_seconds=item.lifetime_seconds,
                audience=tuple(item.audience), username=item.username, request_id=item.meta.request_id))
            return pb.IssueResult(token=pb.IssuedToken(
                access_token=issued.access_token, token_type=issued.token_type, expires_in=issued.expires_in,
                jti=issued.jti, issued_at=issued.issued_at))
        except OAuthError as exc:
            log.info("token not issued", extra={"error": exc.code, "detail": exc.detail})
            return pb.IssueResult(error=error_to_pb(exc))
        except Exception:
            log.exception("token issuance failed")
            return pb.IssueResult(error=error_to_pb(ServerError()))
        finally:
            request_id_var.reset(token)

    async def Issue(self, request, context):
        if len(request.requests) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} requests a call")
        results = await asyncio.gather(*(self._issue_one(item) for item in request.requests))
        return pb.IssueResults(results=results)

    async def GetJwks(self, request, context):
        return pb.GetJwksResponse(jwks_json=json.dumps(await self.issuer.jwks()))

    async def ListKeys(self, request, context):
        return pb.ListKeysResponse(keys=[key_to_pb(k) for k in await self.issuer.list_keys()])

    async def RotateKey(self, request, context):
        try:
            key = await self.issuer.rotate_key(request.alg, request.activation_delay_seconds)
        except OAuthError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.description)
        return pb.RotateKeyResponse(key=key_to_pb(key))


def add_to_server(issuer: TokenIssuer, server: grpc.aio.Server) -> None:
    issuer_pb2_grpc.add_TokenIssuerServicer_to_server(TokenIssuerServicer(issuer), server)

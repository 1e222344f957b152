"""token_issuer over gRPC, with Issue calls coalesced into batches (same interface as TokenIssuer)."""
from __future__ import annotations

import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inbound.issuer.v1 import issuer_pb2 as pb
from inbound.issuer.v1 import issuer_pb2_grpc
from inboundlib.batching import Coalescer
from inboundlib.grpcx import is_unavailable, peer_going_away, request_metadata
from inboundlib.oauth.client_auth import ClientCredentials
from inboundlib.oauth.errors import InvalidRequest
from inboundlib.wire import credentials_to_pb, error_from_pb, meta, restamp
from services.token_issuer.api import FORMAT_OPAQUE, IssuedToken, IssueRequest, KeyInfo, RewrapReport, TokenInfo
from services.token_issuer.wire import id_token_request_to_pb, info_from_pb

SERVICE_NAME = "inbound.issuer.v1.TokenIssuer"
HOT_TIMEOUT = 3.0
# How long an idempotent call sent once more after its peer went away waits for a
# peer (a restarted issuer, another replica) to be ready: a short wait, not the budget.
RETRY_WAIT = 1.0
ADMIN_TIMEOUT = 10.0


def _key(k: pb.SigningKeyInfo) -> KeyInfo:
    return KeyInfo(kid=k.kid, alg=k.alg, created_at=k.created_at, activates_at=k.activates_at, signing=k.signing)


class IssuerClient:
    def __init__(self, channel: grpc.aio.Channel, *, max_in_flight: int | None = None):
        self.stub = issuer_pb2_grpc.TokenIssuerStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        # Issuing is not idempotent (a second call mints a second token): never sent again.
        # Introspection reads, and revoking twice revokes once: those are retried once
        # when the issuer goes away mid-call, and split when one item breaks a call.
        self._issue = Coalescer("issuer.Issue", self._send_issue, max_batch=32, max_in_flight=max_in_flight,
                                restamp=restamp)
        self._introspect = Coalescer("issuer.Introspect", self._send_introspect, max_batch=32,
                                     max_in_flight=max_in_flight, idempotent=True, transient=peer_going_away,
                                     unavailable=is_unavailable,
                                     restamp=restamp,
                                     resend=lambda items, timeout: self._send_introspect(items, min(timeout, RETRY_WAIT), True))
        self._revoke = Coalescer("issuer.Revoke", self._send_revoke, max_batch=32, max_in_flight=max_in_flight,
                                 idempotent=True, transient=peer_going_away, unavailable=is_unavailable,
                                 restamp=restamp,
                                 resend=lambda items, timeout: self._send_revoke(items, min(timeout, RETRY_WAIT), True))

    async def _send_issue(self, items: list[pb.IssueRequest], timeout: float) -> list[pb.IssueResult]:
        reply = await self.stub.Issue(pb.IssueBatch(requests=items), timeout=timeout)
        return list(reply.results)

    async def issue(self, request: IssueRequest) -> IssuedToken:
        item = pb.IssueRequest(
            meta=meta(request.request_id, HOT_TIMEOUT), client_id=request.client_id, subject=request.subject,
            scopes=request.scopes, audience=request.audience,
            format=pb.TOKEN_FORMAT_OPAQUE if request.format == FORMAT_OPAQUE else pb.TOKEN_FORMAT_JWT,
            lifetime_seconds=request.lifetime_seconds, username=request.username, grant_type=request.grant_type,
            grant_id=request.grant_id, refresh_token_lifetime_seconds=request.refresh_token_lifetime,
            refresh_token_absolute_lifetime_seconds=request.refresh_token_absolute_lifetime,
            authenticated_at_unix_ms=request.authenticated_at_ms, act_json=request.act_json,
            provider=request.provider)
        if request.id_token is not None:
            item.id_token.CopyFrom(id_token_request_to_pb(request.id_token))
        result = await self._issue.submit(item, HOT_TIMEOUT)
        if result.HasField("error"):
            raise error_from_pb(result.error)
        t = result.token
        return IssuedToken(access_token=t.access_token, token_type=t.token_type, expires_in=t.expires_in,
                           jti=t.jti, issued_at=t.issued_at, refresh_token=t.refresh_token, grant_id=t.grant_id,
                           id_token=t.id_token)

    async def serving(self) -> bool:
        """Whether token_issuer answers its health check as SERVING (for readiness probes)."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def jwks(self) -> dict:
        """Idempotent: when the issuer went away (a restart), asked once more, waiting
        for the channel to be ready again rather than failing at once."""
        try:
            reply = await self.stub.GetJwks(pb.GetJwksRequest(), timeout=HOT_TIMEOUT, metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            if not peer_going_away(exc):
                raise
            reply = await self.stub.GetJwks(pb.GetJwksRequest(), timeout=RETRY_WAIT, wait_for_ready=True,
                                            metadata=request_metadata())
        return json.loads(reply.jwks_json)

    async def list_keys(self) -> list[KeyInfo]:
        reply = await self.stub.ListKeys(pb.ListKeysRequest(), timeout=ADMIN_TIMEOUT, metadata=request_metadata())
        return [_key(k) for k in reply.keys]

    async def rotate_key(self, alg: str = "", activation_delay: int | None = None) -> KeyInfo:
        try:
            request = pb.RotateKeyRequest(alg=alg)
            if activation_delay is not None:
                request.activation_delay_seconds = activation_delay
            reply = await self.stub.RotateKey(request, timeout=ADMIN_TIMEOUT, metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidRequest(exc.details()) from None
            raise
        return _key(reply.key)

    async def rewrap_keys(self) -> RewrapReport:
        reply = await self.stub.RewrapKeys(pb.RewrapKeysRequest(), timeout=ADMIN_TIMEOUT, metadata=request_metadata())
        return RewrapReport(rewrapped=tuple(reply.rewrapped), current=tuple(reply.current),
                            unreadable=tuple(reply.unreadable))

    async def _send_introspect(self, items: list[pb.IntrospectRequest], timeout: float,
                               wait_for_ready: bool = False) -> list[pb.IntrospectResult]:
        reply = await self.stub.Introspect(pb.IntrospectBatch(requests=items), timeout=timeout,
                                           wait_for_ready=wait_for_ready)
        return list(reply.results)

    async def introspect(self, token: str, caller: ClientCredentials | None = None, *,
                         request_id: str = "", endpoint_url: str = "") -> TokenInfo:
        """RFC 7662. `caller` is the HTTP client asking; internal services pass None."""
        item = pb.IntrospectRequest(meta=meta(request_id, HOT_TIMEOUT), token=token,
                                    caller=credentials_to_pb(caller), endpoint_url=endpoint_url)
        result = await self._introspect.submit(item, HOT_TIMEOUT)
        if result.HasField("error"):
            raise error_from_pb(result.error)
        return info_from_pb(result.info)

    async def _send_revoke(self, items: list[pb.RevokeRequest], timeout: float,
                           wait_for_ready: bool = False) -> list[pb.RevokeResult]:
        reply = await self.stub.Revoke(pb.RevokeBatch(requests=items), timeout=timeout, wait_for_ready=wait_for_ready)
        return list(reply.results)

    async def revoke(self, token: str, caller: ClientCredentials | None, *, token_type_hint: str = "",
                     request_id: str = "", endpoint_url: str = "") -> None:
        """RFC 7009; raises the OAuth error when the request is refused."""
        item = pb.RevokeRequest(meta=meta(request_id, HOT_TIMEOUT), token=token, token_type_hint=token_type_hint,
                                caller=credentials_to_pb(caller), endpoint_url=endpoint_url)
        result = await self._revoke.submit(item, HOT_TIMEOUT)
        if result.HasField("error"):
            raise error_from_pb(result.error)

    async def revoke_client_tokens(self, client_id: str) -> int:
        reply = await self.stub.RevokeClientTokens(pb.RevokeClientTokensRequest(client_id=client_id),
                                                   timeout=ADMIN_TIMEOUT, metadata=request_metadata())
        return reply.revoked_before_unix_ms


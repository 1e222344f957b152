"""A grant service over gRPC, for the edge: coalesced Token batches (same interface as a GrantRunner)."""
from __future__ import annotations

import grpc

from inbound.grant.v1 import grant_pb2 as pb
from inbound.grant.v1 import grant_pb2_grpc
from inboundlib.batching import Coalescer
from inboundlib.grants.api import TokenRequest, TokenResponse
from inboundlib.grants.server import params_to_pb
from inboundlib.grpcx import peer_going_away
from inboundlib.wire import context_to_pb, credentials_to_pb, error_from_pb, meta, restamp

# The most the edge waits for a grant service; less when the request's budget has less left.
TIMEOUT = 5.0


class GrantClient:
    def __init__(self, grant_type: str, channel: grpc.aio.Channel, *, max_batch: int = 32,
                 max_in_flight: int | None = None):
        self.grant_type = grant_type
        self.stub = grant_pb2_grpc.GrantServiceStub(channel)
        # Not idempotent: a token request may issue a token, so a failed call is never sent again.
        self._token = Coalescer(f"grant.Token[{grant_type}]", self._send, max_batch=max_batch,
                                max_in_flight=max_in_flight, transient=peer_going_away, restamp=restamp)

    async def _send(self, items: list[pb.TokenRequest], timeout: float) -> list[pb.TokenResult]:
        reply = await self.stub.Token(pb.TokenBatch(requests=items), timeout=timeout)
        return list(reply.results)

    async def handle(self, request: TokenRequest) -> TokenResponse:
        item = pb.TokenRequest(meta=meta(request.request_id, TIMEOUT), grant_type=request.grant_type,
                               params=params_to_pb(request.params), client=credentials_to_pb(request.client),
                               context=context_to_pb(request.context))
        result = await self._token.submit(item, TIMEOUT)
        if result.HasField("error"):
            raise error_from_pb(result.error)
        t = result.token
        return TokenResponse(access_token=t.access_token, token_type=t.token_type, expires_in=t.expires_in,
                             scope=t.scope, refresh_token=t.refresh_token, id_token=t.id_token,
                             issued_token_type=t.issued_token_type)

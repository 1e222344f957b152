"""third_party_token over gRPC: the grant's `handle(TokenRequest)` (for the edge,
inboundlib.grants.client) and ForeignTokens' coalesced Introspect batches (for
token_issuer), on one channel, with the same interface as the component's `api`."""
from __future__ import annotations

import grpc

from inbound.federation.v1 import federation_pb2 as pb
from inbound.federation.v1 import federation_pb2_grpc
from inboundlib.batching import Coalescer
from inboundlib.grants.client import GrantClient
from inboundlib.grpcx import is_unavailable, peer_going_away
from inboundlib.wire import error_from_pb, meta, restamp
from services.token_issuer.api import TokenInfo
from services.token_issuer.wire import info_from_pb

HOT_TIMEOUT = 3.0
RETRY_WAIT = 1.0


class ThirdPartyTokenClient(GrantClient):
    def __init__(self, grant_type: str, channel: grpc.aio.Channel, *, max_in_flight: int | None = None):
        super().__init__(grant_type, channel, max_in_flight=max_in_flight)
        self._foreign = federation_pb2_grpc.ForeignTokensStub(channel)
        # Introspection only reads: sent once more when the peer goes away, split when one item breaks a call.
        self._introspect = Coalescer(
            "third_party_token.Introspect", self._send_introspect, max_batch=32, max_in_flight=max_in_flight,
            idempotent=True, transient=peer_going_away, unavailable=is_unavailable, restamp=restamp,
            resend=lambda items, timeout: self._send_introspect(items, min(timeout, RETRY_WAIT), True))

    async def _send_introspect(self, items: list[pb.ForeignIntrospectRequest], timeout: float,
                               wait_for_ready: bool = False) -> list[pb.ForeignIntrospectResult]:
        reply = await self._foreign.Introspect(pb.ForeignIntrospectBatch(requests=items), timeout=timeout,
                                               wait_for_ready=wait_for_ready)
        return list(reply.results)

    async def introspect_foreign(self, token: str, *, request_id: str = "") -> TokenInfo:
        item = pb.ForeignIntrospectRequest(meta=meta(request_id, HOT_TIMEOUT), token=token)
        result = await self._introspect.submit(item, HOT_TIMEOUT)
        if result.HasField("error"):
            raise error_from_pb(result.error)
        return info_from_pb(result.info)

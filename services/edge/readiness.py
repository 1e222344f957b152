"""The edge's readiness: only what every route needs.

A grant service that is down makes its own grant answer 503
`temporarily_unavailable`; it must not take the edge out of rotation, or one
grant's outage would become every endpoint's. What every OAuth route needs is
token_issuer (introspection, revocation, JWKS, and every grant's issuance)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CHECK_TIMEOUT = 1.0


def ready_when_serving(channels: Mapping[str, grpc.aio.Channel]) -> Callable[[], Awaitable[bool]]:
    """A readiness check: every channel given reports SERVING (pass only what every route needs)."""
    stubs = {name: health_pb2_grpc.HealthStub(channel) for name, channel in channels.items()}

    async def ready() -> bool:
        try:
            for stub in stubs.values():
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=CHECK_TIMEOUT)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
            return True
        except Exception:
            return False

    return ready


def ready_when_issuer_serves(tokens: object) -> Callable[[], Awaitable[bool]]:
    """The edge's readiness from its token_issuer interface: over gRPC, the issuer's
    health; in the same process (no `serving`), always ready."""
    serving = getattr(tokens, "serving", None)
    if serving is None:
        async def ready() -> bool:
            return True

        return ready
    return serving

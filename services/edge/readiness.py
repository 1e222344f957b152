"""The edge's readiness: only what every route needs.

A grant service that is down makes its own grant answer 503
`temporarily_unavailable`; it must not take the edge out of rotation, or one
grant's outage would become every endpoint's. What every OAuth route needs is
token_issuer (introspection, revocation, JWKS, and every grant's issuance)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable


def ready_when_issuer_serves(tokens: object) -> Callable[[], Awaitable[bool]]:
    """The edge's readiness from its token_issuer interface: over gRPC, the issuer's
    health; in the same process (no `serving`), always ready."""
    serving = getattr(tokens, "serving", None)
    if serving is None:
        async def ready() -> bool:
            return True

        return ready
    return serving

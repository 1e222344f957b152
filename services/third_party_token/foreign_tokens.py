"""ForeignTokens.Introspect: a registered OpenID provider's token accepted as-is (RFC 7662
§2.2 for a token Inbound did not issue), so resource servers need not know the difference.
token_issuer routes here every JWT naming another issuer than its own."""
from __future__ import annotations

import logging

from prometheus_client import Counter

from services.third_party_token.providers import ForeignTokenVerifier, Refused
from services.token_issuer.api import TokenInfo

log = logging.getLogger(__name__)

INACTIVE = TokenInfo(active=False)
FOREIGN_INTROSPECTIONS = Counter("inbound_foreign_introspections_total",
                                 "Third-party tokens introspected, by outcome", ["outcome"])


class ForeignTokens:
    def __init__(self, verifier: ForeignTokenVerifier):
        self.verifier = verifier

    async def introspect_foreign(self, token: str, *, request_id: str = "") -> TokenInfo:
        try:
            verified = await self.verifier.verify(token, consume=False)
        except Refused as exc:
            FOREIGN_INTROSPECTIONS.labels("inactive").inc()
            log.info("third-party token inactive", extra={"detail": exc.reason})
            return INACTIVE
        FOREIGN_INTROSPECTIONS.labels("active").inc()
        claims, provider, user = verified.claims, verified.provider, verified.user
        aud = claims["aud"]
        audiences = (aud,) if isinstance(aud, str) else tuple(aud)
        azp = claims.get("azp")
        # RFC 7662 §2.2 client_id: the client the provider issued it to (OpenID Connect Core
        # §2 azp, else its audience).
        client_id = azp if isinstance(azp, str) and azp else audiences[0]
        iat = claims.get("iat", claims.get("nbf", 0))
        jti = claims.get("jti")
        return TokenInfo(active=True, scope=" ".join(provider.scopes), client_id=client_id, sub=user.id,
                         username=user.username, token_type="Bearer", exp=int(claims["exp"]), iat=int(iat),
                         iss=provider.issuer, aud=audiences, jti=jti if isinstance(jti, str) else "",
                         provider=provider.name)

"""The JWT bearer grant: RFC 7523 §2.1 (an assertion as an authorization grant), §3.

This first cut checks the request's shape (`assertion`, exactly one: RFC 7523 §2.1) and
refuses every assertion (invalid_grant, §3.1): no integration's keys are trusted until
the integrations and the JWT validator are wired in (issue 10)."""
from __future__ import annotations

from inboundlib.grants.api import GrantParameters, TokenRequest, TokenResponse
from inboundlib.oauth.errors import InvalidGrant, InvalidRequest
from services.client_registry.api import GRANT_JWT_BEARER, ClientRecord

# RFC 7523 §2.1, §3.1: one text for every refused assertion; the reason goes to the detail.
ASSERTION_REFUSED = "The assertion is not valid."


class JwtBearerGrant:
    grant_type = GRANT_JWT_BEARER
    # RFC 7523 §2.1: grant_type, assertion (a single JWT) and scope (RFC 7521 §4.1).
    parameters = GrantParameters(single=frozenset({"assertion", "scope"}))
    authenticates_client = False

    async def handle(self, request: TokenRequest, client: ClientRecord) -> TokenResponse:
        if not request.param("assertion"):
            raise InvalidRequest("The assertion parameter is missing.", detail="missing assertion")
        raise InvalidGrant(ASSERTION_REFUSED, detail="no JWT-bearer integration is trusted yet")


def build() -> JwtBearerGrant:
    return JwtBearerGrant()

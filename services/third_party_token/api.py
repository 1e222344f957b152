"""third_party_token's interface as plain Python: foreign_tokens.py and grant.py implement
it, client.py calls it over gRPC, server.py serves it."""
from __future__ import annotations

from typing import Protocol

from inboundlib.grants.api import TokenRequest, TokenResponse
from services.token_issuer.api import TokenInfo


class ForeignTokensApi(Protocol):
    async def introspect_foreign(self, token: str, *, request_id: str = "") -> TokenInfo:
        """RFC 7662 for a registered OpenID provider's token: active, as the mapped Inbound
        user (sub = its id, username), client_id the token's azp or first aud, scope the
        provider's scopes, provider its name; inactive when no active provider vouches for
        it. Raises KeysPending while the provider's keys are being fetched."""
        ...


class ThirdPartyTokenApi(ForeignTokensApi, Protocol):
    """The service as a whole: also the token-exchange grant (GrantService/Token)."""
    grant_type: str

    async def handle(self, request: TokenRequest) -> TokenResponse: ...

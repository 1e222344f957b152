"""The client credentials grant: RFC 6749 §4.4.

The client asks for a token for itself. The grant runner has already
authenticated it (§2.3, §3.2.1 -> invalid_client) and checked that it is
registered for this grant type (-> unauthorized_client). This grant's own rules:
1. the client is confidential (§4.4: only those)   -> unauthorized_client
2. the scope is within the client's scopes (§3.3)  -> invalid_scope
No refresh token is issued (§4.4.3).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from inboundlib.grants.api import GrantParameters, TokenRequest, TokenResponse
from inboundlib.oauth.errors import UnauthorizedClient
from inboundlib.oauth.scopes import format_scope, narrow_scopes
from services.client_registry.api import GRANT_CLIENT_CREDENTIALS, ClientRecord
from services.token_issuer.api import IssueRequest, TokenIssuerApi

if TYPE_CHECKING:  # the grant's logic imports no gRPC code; grant_process does
    from services.grant_process import GrantDeps


class ClientCredentialsGrant:
    grant_type = GRANT_CLIENT_CREDENTIALS
    # §4.4.2: grant_type and scope (client authentication is the runner's).
    parameters = GrantParameters(single=frozenset({"scope"}))
    authenticates_client = False

    def __init__(self, issuer: TokenIssuerApi):
        self.issuer = issuer

    async def handle(self, request: TokenRequest, client: ClientRecord) -> TokenResponse:
        if client.public:
            raise UnauthorizedClient(detail="public client asked for client_credentials")
        scopes = narrow_scopes(request.param("scope"), list(client.scopes))
        token = await self.issuer.issue(IssueRequest(
            client_id=client.client_id, subject=client.client_id, scopes=tuple(scopes),
            format=client.token_format, lifetime_seconds=client.access_token_lifetime,
            request_id=request.request_id, grant_type=self.grant_type))
        return TokenResponse(access_token=token.access_token, token_type=token.token_type,
                             expires_in=token.expires_in, scope=format_scope(scopes))


def build(deps: GrantDeps) -> ClientCredentialsGrant:
    """The grant as its service runs it (services/grant_process.py)."""
    return ClientCredentialsGrant(deps.issuer)

"""The client credentials grant: RFC 6749 §4.4.

The client asks for a token for itself, authenticating with its own
credentials. Checks, in order (each a named rule in libs/inboundlib/oauth):
1. client authentication (§2.3, §3.2.1)            -> invalid_client
2. the client is confidential (§4.4: only those)   -> unauthorized_client
3. the grant type is registered for the client     -> unauthorized_client
4. the scope is within the client's scopes (§3.3)  -> invalid_scope
No refresh token is issued (§4.4.3).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from inboundlib.grants.api import TokenRequest, TokenResponse
from inboundlib.oauth.client_auth import authenticate_client, require_grant_type
from inboundlib.oauth.errors import UnauthorizedClient
from inboundlib.oauth.scopes import format_scope, narrow_scopes
from services.client_registry.api import GRANT_CLIENT_CREDENTIALS, ClientRecord
from services.token_issuer.api import IssueRequest, TokenIssuerApi

if TYPE_CHECKING:  # the grant's logic imports no gRPC code; grant_process does
    from services.grant_process import GrantDeps


class ClientSource(Protocol):
    async def get_client(self, client_id: str) -> ClientRecord | None: ...


class ClientCredentialsGrant:
    grant_type = GRANT_CLIENT_CREDENTIALS

    def __init__(self, clients: ClientSource, issuer: TokenIssuerApi):
        self.clients = clients
        self.issuer = issuer

    async def handle(self, request: TokenRequest) -> TokenResponse:
        record = await self.clients.get_client(request.client.client_id) if request.client else None
        client = authenticate_client(record, request.client)
        if client.public:
            raise UnauthorizedClient(detail="public client asked for client_credentials")
        require_grant_type(client, self.grant_type)
        scopes = narrow_scopes(request.params.get("scope"), list(client.scopes))
        token = await self.issuer.issue(IssueRequest(
            client_id=client.client_id, subject=client.client_id, scopes=tuple(scopes),
            format=client.token_format, lifetime_seconds=client.access_token_lifetime,
            request_id=request.request_id, grant_type=self.grant_type))
        return TokenResponse(access_token=token.access_token, token_type=token.token_type,
                             expires_in=token.expires_in, scope=format_scope(scopes))


def build(deps: GrantDeps) -> ClientCredentialsGrant:
    """The grant as its service runs it (services/grant_process.py)."""
    return ClientCredentialsGrant(deps.clients, deps.issuer)

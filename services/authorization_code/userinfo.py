"""The UserInfo endpoint's decision: OpenID Connect Core §5.3, answered with RFC 6750 errors.

The authorization_code service's `AuthorizationApi.user_info` calls `UserInfo.claims`; the
edge renders the answer (JSON) or the error (401 invalid_token / 403 insufficient_scope,
with a Bearer challenge, RFC 6750 §3.1).

1. The access token is checked by token_issuer's introspection (signature or stored
   record, expiry, revocation, the client still active): inactive        -> InvalidToken
2. only an access token: a refresh token is never a bearer credential at a resource
   (RFC 6749 §1.5), though introspection knows it                          -> InvalidToken
3. a token that names no end-user (client_credentials: the subject is the client itself)
   -> InvalidToken, not insufficient_scope: RFC 6750 §3.1 keeps insufficient_scope for a
   token that a token with more scope would replace, and no token of a client acting for
   itself can ever describe a user here; Core §5.3 returns claims "about the authenticated
   End-User", which such a token has none of ("invalid for other reasons", §3.1)
4. the `openid` scope (Core §5.3: "obtained through OpenID Connect Authentication")
                                                                        -> InsufficientScope
5. the user still exists and is active (a disabled or deleted user's tokens are revoked by
   a subject cut-off already; checked here too, on the directory's own word) -> InvalidToken
Then: `sub` and the claims the token's scopes release (inboundlib.oauth.oidc.claims_for,
the same rule as the ID token's, so the two never disagree).

The token itself is never logged or put in an error.
"""
from __future__ import annotations

from typing import Protocol

from inboundlib.oauth import oidc
from inboundlib.oauth.errors import InsufficientScope, InvalidToken
from inboundlib.oauth.scopes import parse_scope
from services.client_registry.api import UserDirectory, UserRecord
from services.token_issuer.api import TokenInfo

# RFC 7662 token_type of an access token as token_issuer's introspection answers it.
ACCESS_TOKEN_TYPE = "Bearer"


class Introspector(Protocol):
    """token_issuer's introspection as an internal service calls it (caller None: no
    client authentication, every active token visible): its client.py or LocalIssuer."""
    async def introspect(self, token: str, caller=None, *, request_id: str = "") -> TokenInfo: ...


class UserInfo:
    def __init__(self, tokens: Introspector, users: UserDirectory):
        self.tokens = tokens
        self.users = users

    async def claims(self, access_token: str, *, request_id: str = "") -> dict:
        """The UserInfo response's claims (Core §5.3.2); raises InvalidToken or InsufficientScope."""
        if not access_token:
            raise InvalidToken(detail="no access token")
        info = await self.tokens.introspect(access_token, None, request_id=request_id)
        if not info.active:
            raise InvalidToken(detail="access token inactive (unknown, expired or revoked)")
        if info.token_type != ACCESS_TOKEN_TYPE:
            raise InvalidToken(detail=f"a {info.token_type or 'non-access'} token is not an access token")
        if info.sub == info.client_id and not info.username:
            raise InvalidToken(detail=f"token of client {info.client_id} acting for itself names no user")
        scopes = parse_scope(info.scope)
        if oidc.OPENID not in scopes:
            raise InsufficientScope(detail="access token without the openid scope")
        user = await self.users.get_user(id=info.sub)
        if user is None or not user.active:
            raise InvalidToken(detail=f"user {info.sub} {'no longer exists' if user is None else 'is disabled'}")
        return response(user, scopes)


def response(user: UserRecord, scopes: list[str]) -> dict:
    """Core §5.3.2: `sub` always, and what the scopes release."""
    return {"sub": user.id, **oidc.claims_for(user, scopes)}

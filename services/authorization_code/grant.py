"""The authorization code grant at the token endpoint: RFC 6749 §4.1.3, with PKCE
(RFC 7636 §4.6) and OpenID Connect ID tokens (Core §3.1.3).

The grant runner has already authenticated the client (§4.1.3: a confidential client
authenticates, a public one sends only its client_id, `none`) and checked that it is
registered for authorization_code (-> unauthorized_client). This grant:
1. `code` is required (§4.1.3)                                              -> invalid_request
2. a value that cannot be one of our codes (no `ibc_`, too long) is refused
   without a lookup                                                          -> invalid_grant
3. the registry consumes the code (SHA-256 of it, services/authorization_code/codes.py)
   atomically, for this client only. Unknown, expired, or another client's (then left
   unconsumed: its own client can still redeem it)                           -> invalid_grant
   Consumed before: the registry revoked, in the same transaction, every token issued
   from the first use (its grant id) and published the revocation (§4.1.2: "SHOULD revoke
   (when possible) all tokens previously issued based on that authorization code")
                                                                               -> invalid_grant
   A code is consumed by its first presentation, even one that fails a check below: a
   guessed verifier or redirect URI gets one try, never many.
4. `redirect_uri` is present and the very string of the authorization request (§4.1.3:
   "REQUIRED ... and their values MUST be identical"; every authorization request here
   carries one)                                                               -> invalid_grant
5. PKCE (RFC 7636 §4.6, inboundlib.oauth.pkce): a code bound to a challenge needs the
   verifier that hashes to it (constant-time compare); a code without one refuses a
   verifier (RFC 9700 §4.8.2, a downgrade); and a public or PKCE-required client's code
   must have had a challenge at all (the authorize side requires it; checked again here,
   so a code minted before the client became PKCE-required is not redeemed without) -> invalid_grant
6. the user (the registry's directory, by id) still exists, is active, and has not
   changed password since the sign-in behind the code                          -> invalid_grant
Then token_issuer issues, for the user, the code's scopes (less any the client no longer
has), under the code's grant id (so a reuse or a withdrawn consent revokes them), stamped
as authenticated when the code was minted (a password change or disable recorded after
that covers them); a refresh token when the client may use the refresh_token grant
(§4.1.4 "optionally"); and with `openid` an ID token (Core §3.1.3.3) carrying the code's
nonce, auth_time and sid, `at_hash`, and the claims the scopes release (oidc.claims_for).

Every refusal of the code is the same public invalid_grant text; the reason is private
detail (log and audit). The code itself is never logged, put in an error or in an event.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from inboundlib.grants.api import GrantParameters, TokenRequest, TokenResponse
from inboundlib.oauth import oidc, pkce
from inboundlib.oauth.errors import InvalidGrant, InvalidRequest, ServerError, TemporarilyUnavailable
from inboundlib.oauth.scopes import format_scope
from services.authorization_code.codes import code_hash, is_code_shaped
from services.client_registry.api import (
    GRANT_AUTHORIZATION_CODE,
    GRANT_REFRESH_TOKEN,
    ITEM_UNAVAILABLE,
    AuthorizationCodeRecord,
    AuthorizationStore,
    ClientRecord,
    CodeNotFound,
    CodeReused,
    CodeToConsume,
    ItemError,
    UserDirectory,
    UserRecord,
)
from services.token_issuer.api import IdTokenRequest, IssueRequest, TokenIssuerApi

if TYPE_CHECKING:  # the grant's logic imports no gRPC code
    from services.grant_process import GrantDeps

# One public text for every refusal of the code: which check failed is the audit trail's business.
REFUSED = "The authorization code is invalid, expired or already used, or does not match this request."


class CodeStore(AuthorizationStore, UserDirectory, Protocol):
    """What the grant needs of the registry: the codes (consume_authorization_codes), and
    the users they name (get_user)."""


class AuthorizationCodeGrant:
    grant_type = GRANT_AUTHORIZATION_CODE
    # §4.1.3: grant_type, code, redirect_uri, client_id (the runner's); RFC 7636 §4.5: code_verifier.
    parameters = GrantParameters(single=frozenset({"code", "redirect_uri", "code_verifier"}))
    authenticates_client = False

    def __init__(self, registry: CodeStore, issuer: TokenIssuerApi):
        self.registry = registry
        self.issuer = issuer

    async def handle(self, request: TokenRequest, client: ClientRecord) -> TokenResponse:
        presented = request.param("code")
        if not presented:
            raise InvalidRequest("The code parameter is missing.", detail="no code")
        if not is_code_shaped(presented):
            raise InvalidGrant(REFUSED, detail="code refused: not one of ours (shape)")
        code = await self._consume(presented, client)
        self._check_binding(code, request, client)
        user = await self._user(code)
        # The code's scopes, less any the client lost since it was minted (a minute at most).
        scopes = [scope for scope in code.scopes if scope in set(client.scopes)]
        refresh = GRANT_REFRESH_TOKEN in client.grant_types
        id_token = _id_token(code, user, scopes)
        token = await self.issuer.issue(IssueRequest(
            client_id=client.client_id, subject=user.id, username=user.username, scopes=tuple(scopes),
            format=client.token_format, lifetime_seconds=client.access_token_lifetime,
            request_id=request.request_id, grant_type=self.grant_type, grant_id=code.grant_id,
            refresh_token_lifetime=client.refresh_token_lifetime if refresh else 0,
            refresh_token_absolute_lifetime=client.refresh_token_absolute_lifetime if refresh else 0,
            # The sign-in behind the code was checked before the code was minted: a cut-off
            # (password change, disable) recorded after that moment must cover these tokens.
            authenticated_at_ms=code.created_at_ms,
            id_token=id_token))
        if id_token is not None and not token.id_token:
            # Core §3.1.3.3: an `openid` exchange answers an ID token. A token_issuer replica of the
            # version before ID tokens (a rolling upgrade) ignores the request's id_token field and
            # issues the rest: never a silent OAuth-only answer to a relying party.
            raise ServerError(detail="token_issuer issued no ID token for an openid exchange (an older replica?)")
        return TokenResponse(access_token=token.access_token, token_type=token.token_type,
                             expires_in=token.expires_in, scope=format_scope(scopes),
                             refresh_token=token.refresh_token, id_token=token.id_token)

    async def _consume(self, presented: str, client: ClientRecord) -> AuthorizationCodeRecord:
        [outcome] = await self.registry.consume_authorization_codes(
            [CodeToConsume(code_hash=code_hash(presented), client_id=client.client_id)])
        if isinstance(outcome, AuthorizationCodeRecord):
            if outcome.client_id != client.client_id:  # the registry's rule, not taken on trust
                raise InvalidGrant(REFUSED, detail="code refused: issued to another client")
            return outcome
        if isinstance(outcome, CodeReused):
            raise InvalidGrant(REFUSED, detail=f"code refused: used before (grant {outcome.grant_id} revoked)")
        if isinstance(outcome, CodeNotFound):
            raise InvalidGrant(REFUSED, detail="code refused: unknown, expired or another client's")
        if isinstance(outcome, ItemError) and outcome.code == ITEM_UNAVAILABLE:
            raise TemporarilyUnavailable(detail="the registry could not consume the code now")
        if isinstance(outcome, ItemError):
            raise ServerError(detail=f"code consumption failed in the registry: {outcome.code}")
        raise ServerError(detail=f"unexpected code outcome {type(outcome).__name__}")

    @staticmethod
    def _check_binding(code: AuthorizationCodeRecord, request: TokenRequest, client: ClientRecord) -> None:
        """What the code is bound to besides its client: the redirect URI and the PKCE challenge."""
        redirect_uri = request.param("redirect_uri")
        if not redirect_uri:
            raise InvalidGrant(REFUSED, detail="code refused: redirect_uri missing")
        if redirect_uri != code.redirect_uri:  # §4.1.3 "identical": the exact string, no normalising
            raise InvalidGrant(REFUSED, detail="code refused: redirect_uri differs from the authorization request's")
        if (client.public or client.pkce_required) and not code.code_challenge:
            raise InvalidGrant(REFUSED, detail="code refused: minted without the PKCE challenge the client needs")
        try:
            pkce.verify(request.param("code_verifier"), code.code_challenge, code.code_challenge_method)
        except InvalidGrant as exc:
            raise InvalidGrant(REFUSED, detail=f"code refused: {exc.detail}") from None

    async def _user(self, code: AuthorizationCodeRecord) -> UserRecord:
        user = await self.registry.get_user(id=code.user_id)
        if user is None:
            raise InvalidGrant(REFUSED, detail=f"code refused: user {code.user_id} no longer exists")
        if not user.active:
            raise InvalidGrant(REFUSED, detail=f"code refused: user {code.user_id} is disabled")
        if code.auth_time_ms and user.password_changed_at > code.auth_time_ms // 1000:
            # The sign-in behind the code predates a password change (a whole second later at
            # least: the change is stored to the second). Its access and refresh tokens would be
            # born revoked by the change's cut-off, but an ID token is not revocable: a relying
            # party would sign in whoever held the old password.
            raise InvalidGrant(REFUSED, detail=f"code refused: user {code.user_id} changed password since the sign-in")
        return user


def _id_token(code: AuthorizationCodeRecord, user: UserRecord, scopes: list[str]) -> IdTokenRequest | None:
    """OpenID Connect Core §3.1.3.3: an ID token only for an `openid` request, with the
    nonce of the authorization request (§3.1.3.6: echoed unchanged), the sign-in's time,
    the session, `at_hash` of the access token issued beside it, and the claims the
    granted scopes release (§5.4)."""
    if oidc.OPENID not in scopes:
        return None
    return IdTokenRequest(nonce=code.nonce, auth_time=code.auth_time_ms // 1000, sid=code.sid,
                          claims=oidc.claims_for(user, scopes), at_hash=True)


def build(deps: GrantDeps) -> AuthorizationCodeGrant:
    """The grant as services/authorization_code/assembly.py runs it (inside a GrantRunner)."""
    return AuthorizationCodeGrant(deps.registry, deps.issuer)

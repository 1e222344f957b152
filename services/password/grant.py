"""The resource owner password credentials grant: RFC 6749 §4.3.

The client sends the user's username and password (§4.3.2). The grant runner has
already authenticated the client (§2.3, §3.2.1 -> invalid_client) and checked that
it is registered for this grant type (-> unauthorized_client). This grant's rules:
1. `username` and `password` are both present (§4.3.2)          -> invalid_request
2. a public client only when the operator allowed it for that client (§4.3.2:
   confidential clients MUST authenticate; a public one cannot) -> unauthorized_client
3. the scope is within the client's scopes (§3.3)                -> invalid_scope
4. the registry verifies the password (§4.3.2 "MUST validate the resource owner
   password credentials"), counting failures and locks in the same step:
   a wrong password, an unknown user, a disabled one and a locked one all get
   the same invalid_grant with the same text (§5.2), so the answer tells a guesser
   nothing; only the private `detail` (log, audit) says which.
A refresh token is issued only when the client may use the refresh_token grant
(§4.3.3: "optional").

The password is held only in the request; it is never put in a log line, an
error, an event or a repr (TokenRequest.params and SignIn.password are repr=False).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from inboundlib import redact
from inboundlib.grants.api import GrantParameters, TokenRequest, TokenResponse
from inboundlib.oauth.errors import (
    InvalidGrant,
    InvalidRequest,
    ServerError,
    TemporarilyUnavailable,
    UnauthorizedClient,
)
from inboundlib.oauth.scopes import format_scope, narrow_scopes
from services.client_registry.api import (
    GRANT_PASSWORD,
    GRANT_REFRESH_TOKEN,
    ITEM_UNAVAILABLE,
    PURPOSE_PASSWORD_GRANT,
    ClientRecord,
    Invalid,
    ItemError,
    Locked,
    SignIn,
    UserAuthenticator,
    UserRecord,
)
from services.token_issuer.api import IssueRequest, TokenIssuerApi

if TYPE_CHECKING:  # the grant's logic imports no gRPC code; grant_process does
    from services.grant_process import GrantDeps

# One public text for every credential refusal (wrong password, unknown, disabled or
# locked user): §5.2 invalid_grant, without saying which.
CREDENTIALS_REFUSED = "The username or password is incorrect, or the account cannot sign in."


class PasswordGrant:
    grant_type = GRANT_PASSWORD
    # §4.3.2: grant_type, username, password, scope (client authentication is the runner's).
    parameters = GrantParameters(single=frozenset({"username", "password", "scope"}))
    authenticates_client = False

    def __init__(self, users: UserAuthenticator, issuer: TokenIssuerApi):
        self.users = users
        self.issuer = issuer

    async def handle(self, request: TokenRequest, client: ClientRecord) -> TokenResponse:
        username = request.param("username")
        password = request.param("password")
        if not username or not password:
            missing = [name for name, value in (("username", username), ("password", password)) if not value]
            raise InvalidRequest(f"The {' and '.join(missing)} parameter{'s are' if len(missing) > 1 else ' is'} "
                                 "missing.", detail=f"missing {', '.join(missing)}")
        if client.public and not client.allow_public_password_grant:
            raise UnauthorizedClient(detail="public client not allowed the password grant")
        # Scope before the password check: a request that cannot succeed costs no hash
        # and no failure count.
        scopes = narrow_scopes(request.param("scope"), list(client.scopes))
        user = await self._authenticate(username, password, request)
        refresh = GRANT_REFRESH_TOKEN in client.grant_types
        token = await self.issuer.issue(IssueRequest(
            client_id=client.client_id, subject=user.id, username=user.username, scopes=tuple(scopes),
            format=client.token_format, lifetime_seconds=client.access_token_lifetime,
            request_id=request.request_id, grant_type=self.grant_type,
            refresh_token_lifetime=client.refresh_token_lifetime if refresh else 0,
            refresh_token_absolute_lifetime=client.refresh_token_absolute_lifetime if refresh else 0,
            # Stamped as of the password check: a password change, disable or delete racing this
            # sign-in records a cut-off after it, which then covers these tokens too.
            authenticated_at_ms=user.verified_at_ms))
        return TokenResponse(access_token=token.access_token, token_type=token.token_type,
                             expires_in=token.expires_in, scope=format_scope(scopes),
                             refresh_token=token.refresh_token)

    async def _authenticate(self, username: str, password: str, request: TokenRequest) -> UserRecord:
        """The registry's one verdict on the credentials (an unreachable registry raises,
        and the runner answers temporarily_unavailable)."""
        [outcome] = await self.users.authenticate_users([SignIn(
            username=username, password=password, client_address=request.context.client_address,
            purpose=PURPOSE_PASSWORD_GRANT, request_id=request.request_id)])
        # The username is the caller's word until it names a user (it may be a password
        # typed in the wrong field): the detail carries only its fingerprint.
        who = redact.unverified(username)
        if isinstance(outcome, UserRecord):
            return outcome
        if isinstance(outcome, Invalid):
            raise InvalidGrant(CREDENTIALS_REFUSED, detail=f"invalid credentials for user {who}")
        if isinstance(outcome, Locked):
            raise InvalidGrant(CREDENTIALS_REFUSED, detail=f"user {who} locked until {outcome.locked_until}")
        if isinstance(outcome, ItemError) and outcome.code == ITEM_UNAVAILABLE:
            raise TemporarilyUnavailable(detail="the registry's sign-in queue is full")
        if isinstance(outcome, ItemError):
            raise ServerError(detail=f"sign-in failed in the registry: {outcome.code}")
        raise ServerError(detail=f"unexpected sign-in outcome {type(outcome).__name__}")


def build(deps: GrantDeps) -> PasswordGrant:
    """The grant as its service runs it (services/grant_process.py)."""
    return PasswordGrant(deps.registry, deps.issuer)

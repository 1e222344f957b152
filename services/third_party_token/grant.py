"""The token exchange grant: RFC 8693 §2.

The client presents a subject token (a registered OpenID provider's ID token, access
token or other JWT, or one of Inbound's own access tokens) and gets an Inbound access
token for the subject's Inbound user. The grant runner has already authenticated the
client and checked that it is registered for this grant type. This grant's rules, in
order (errors of §2.2.2):
1. the client has a token-exchange policy                         -> unauthorized_client
2. the parameters are present and well formed; the token types are
   ones this server handles (subject/actor: id_token, access_token,
   jwt; requested: access_token or jwt)                          -> invalid_request
3. the subject token type is one the policy allows; an actor token
   only when the policy allows delegation                         -> invalid_request
4. every resource/audience is among the policy's audiences (none
   may be asked for when the policy lists none)                   -> invalid_target
5. the subject token: a provider's, from a provider the policy
   names, verified and mapped to an active user (provisioned when
   the provider says so), its jti used once when the provider
   checks jti; or Inbound's own, only when the policy allows it,
   active (token_issuer's introspection) and an access token      -> invalid_grant
6. the actor token likewise; `act` = {sub: the actor's Inbound
   subject, iss: Inbound}, the subject token's own `act` nested
   inside it (§4.1)                                               -> invalid_grant
7. scope: what is asked for must be within the client's scopes,
   the policy's (when it lists any), and the subject's (the
   provider's scopes, or the subject token's own scopes); nothing
   asked for: all of that                                         -> invalid_scope
The token issued never outlives an Inbound subject token and never widens its scopes.
Response (§2.2.1): issued_token_type (access_token, or jwt when asked for), token_type
Bearer, no refresh token.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inboundlib import redact
from inboundlib.grants.api import TokenRequest, TokenResponse
from inboundlib.jose.validator import InvalidJwt, KeySource, unverified_claims
from inboundlib.oauth import token_exchange
from inboundlib.oauth.errors import InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget, UnauthorizedClient
from inboundlib.oauth.scopes import format_scope, parse_scope
from services.client_registry.api import GRANT_TOKEN_EXCHANGE, ClientRecord, OidcProvider, TokenExchangePolicy
from services.third_party_token.providers import ForeignTokenVerifier, Refused
from services.token_issuer.api import FORMAT_JWT, IssueRequest

if TYPE_CHECKING:  # the grant's logic imports no gRPC code; the assembly does
    from services.third_party_token.assembly import ExchangeDeps

log = logging.getLogger(__name__)

# One public text for every refusal of a presented token (§2.2.2 invalid_grant): which
# check failed is the private detail (log, audit).
TOKEN_REFUSED = "The subject or actor token is invalid, expired, or not accepted for this client."


@dataclass(frozen=True)
class Party:
    """Who a presented token stands for, once verified."""
    subject: str  # the Inbound user's id (or, for Inbound's own client tokens, the client's)
    username: str
    scopes: tuple[str, ...]  # what it may carry at most
    expires_at: int  # 0: no bound from the token (a provider's token: the client's lifetime applies)
    provider: str = ""  # the provider's name; "" for Inbound's own token
    act: dict | None = None  # its own `act` (an Inbound token issued by delegation)


class TokenExchangeGrant:
    grant_type = GRANT_TOKEN_EXCHANGE
    parameters = token_exchange.PARAMETERS
    authenticates_client = False

    def __init__(self, verifier: ForeignTokenVerifier, issuer, *, issuer_url: str, clock=time.time):
        self.verifier = verifier
        self.issuer = issuer  # token_issuer: issue, and introspect for Inbound's own tokens
        self.issuer_url = issuer_url
        self.clock = clock

    async def handle(self, request: TokenRequest, client: ClientRecord) -> TokenResponse:
        policy = client.token_exchange
        if policy is None:
            raise UnauthorizedClient(detail="the client has no token-exchange policy")
        wanted = token_exchange.parse_request(request)
        if wanted.subject_token_type not in policy.subject_token_types:
            raise InvalidRequest("The subject_token_type is not allowed for this client.",
                                 detail=f"subject_token_type {wanted.subject_token_type} not in the policy")
        if wanted.actor_token and not policy.actor_tokens:
            raise InvalidRequest("Actor tokens are not allowed for this client.",
                                 detail="actor_token sent; the policy allows no delegation")
        audience = self._audience(wanted, policy)
        requested = parse_scope(wanted.scope)  # malformed: invalid_scope before any token is checked
        # Every check that uses nothing up before any token is used up: a provider that checks
        # jti accepts its token once, and a request refused for its scope must not spend it.
        subject_at = await self._locate(wanted.subject_token, wanted.subject_token_type, policy, "subject")
        actor_at = await self._locate(wanted.actor_token, wanted.actor_token_type, policy, "actor") \
            if wanted.actor_token else None
        scopes = self._scopes(requested, client, policy, subject_at.scopes if isinstance(subject_at, Party)
                              else tuple(subject_at[0].scopes))
        subject = await self._verified(subject_at, wanted.subject_token, "subject")
        act, actor = None, None
        if actor_at is not None:
            actor = await self._verified(actor_at, wanted.actor_token, "actor")
            act = token_exchange.act_claim(actor.subject, self.issuer_url, prior=subject.act)
        elif subject.act:
            act = subject.act  # impersonation of a token issued by delegation: its actor stays named
        lifetime = client.access_token_lifetime
        # The new token outlives neither Inbound token it derives from: not the subject's, and
        # not the actor's, whose delegation would otherwise outlast it (RFC 8693 §1.1).
        for role, party in (("subject", subject), ("actor", actor)):
            if party is not None and party.expires_at:
                lifetime = min(lifetime, party.expires_at - int(self.clock()))
                if lifetime <= 0:
                    raise InvalidGrant(TOKEN_REFUSED, detail=f"the {role} token expires now")
        jwt_asked = wanted.requested_token_type == token_exchange.JWT_TOKEN_TYPE
        token = await self.issuer.issue(IssueRequest(
            client_id=client.client_id, subject=subject.subject, username=subject.username, scopes=tuple(scopes),
            # An `act` or a JWT asked for: a JWT (an opaque token's record has no place for `act`).
            format=FORMAT_JWT if act or jwt_asked else client.token_format, lifetime_seconds=lifetime,
            audience=audience, request_id=request.request_id, grant_type=self.grant_type,
            act_json=token_exchange.act_json(act), provider=subject.provider))
        return TokenResponse(access_token=token.access_token, token_type=token.token_type,
                             expires_in=token.expires_in, scope=format_scope(scopes),
                             issued_token_type=token_exchange.JWT_TOKEN_TYPE if jwt_asked
                             else token_exchange.ACCESS_TOKEN_TYPE)

    @staticmethod
    def _audience(wanted: token_exchange.ExchangeRequest, policy: TokenExchangePolicy) -> tuple[str, ...]:
        """RFC 8693 §2.1, RFC 8707 §2: every target must be one the policy allows; with none
        asked for, the issuer's default audience."""
        beyond = [t for t in wanted.targets if t not in policy.audiences]
        if beyond:
            raise InvalidTarget(detail=f"{len(beyond)} resource/audience value(s) not allowed: "
                                       f"{[redact.unverified(t) for t in beyond]}")
        return wanted.targets

    def _ours(self, token: str) -> bool:
        """Inbound's own: an opaque token (no JWT), or a JWT naming our issuer (unverified:
        routing only; token_issuer's introspection decides)."""
        if token.count(".") != 2:
            return True
        try:
            return unverified_claims(token).get("iss") == self.issuer_url
        except InvalidJwt:
            return False

    async def _locate(self, token: str, token_type: str, policy: TokenExchangePolicy, role: str
                      ) -> Party | tuple[OidcProvider, KeySource]:
        """Inbound's own token, checked (token_issuer's introspection uses nothing up); or the
        provider of a foreign one, in the client's policy, its token not verified yet."""
        if self._ours(token):
            return await self._own_party(token, token_type, policy, role)
        try:
            found = await self.verifier.provider_of(token)
            if found[0].name not in policy.providers:
                raise Refused(f"provider {found[0].name} not in the client's policy")
        except Refused as exc:
            raise InvalidGrant(TOKEN_REFUSED, detail=f"{role} token: {exc.reason}") from None
        return found

    async def _verified(self, located: Party | tuple[OidcProvider, KeySource], token: str, role: str) -> Party:
        """A foreign token verified and used up (its jti claimed when the provider checks jti)."""
        if isinstance(located, Party):
            return located
        try:
            verified = await self.verifier.verify(token, consume=True, found=located)
        except Refused as exc:
            raise InvalidGrant(TOKEN_REFUSED, detail=f"{role} token: {exc.reason}") from None
        return Party(subject=verified.user.id, username=verified.user.username,
                     scopes=tuple(verified.provider.scopes), expires_at=0, provider=verified.provider.name)

    async def _own_party(self, token: str, token_type: str, policy: TokenExchangePolicy, role: str) -> Party:
        if not policy.own_tokens:
            raise InvalidGrant(TOKEN_REFUSED, detail=f"{role} token is Inbound's own; the policy allows none")
        if token_type == token_exchange.ID_TOKEN_TYPE:
            raise InvalidGrant(TOKEN_REFUSED, detail=f"{role} token: Inbound's own tokens are access tokens")
        info = await self.issuer.introspect(token)
        if not info.active or info.token_type != "Bearer" or info.provider:
            raise InvalidGrant(TOKEN_REFUSED, detail=f"{role} token: not an active Inbound access token")
        return Party(subject=info.sub, username=info.username, scopes=tuple(info.scope.split()),
                     expires_at=info.exp, act=token_exchange.parse_act_json(info.act_json))

    @staticmethod
    def _scopes(requested: list[str], client: ClientRecord, policy: TokenExchangePolicy,
                subject_scopes: tuple[str, ...]) -> list[str]:
        """Never wider than the client's, the policy's (when it lists any) or the subject's."""
        allowed = [s for s in client.scopes if s in subject_scopes and (not policy.scopes or s in policy.scopes)]
        if not requested:
            return allowed
        beyond = [s for s in requested if s not in allowed]
        if beyond:
            raise InvalidScope(detail=f"{len(beyond)} scope(s) beyond the client, policy or subject token: "
                                      f"{[redact.unverified(s) for s in beyond]}")
        return requested


def build(deps: ExchangeDeps) -> TokenExchangeGrant:
    """The grant as its service runs it (services/third_party_token/assembly.py)."""
    return TokenExchangeGrant(deps.verifier, deps.issuer, issuer_url=deps.issuer_url)

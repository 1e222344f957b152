"""The JWT bearer grant: RFC 7523 §2.1 (a JWT as an authorization grant), checked per §3.

The grant runner has authenticated the client (any method it is registered for; RFC 7521
§4.1) and checked that it may use this grant (-> unauthorized_client). The assertion's trust
is an integration (JwtBearerIntegration) registered for this client and the assertion's
`iss`. This grant's rules:
1. `assertion` is present (a repeat: the runner's invalid_request)        -> invalid_request
2. an active integration for (client, iss) exists                         -> invalid_grant
3. the JWT (inboundlib.jose): signed by the integration's keys (jwks_uri, inline JWKS or
   certificate, optionally pinned to a kid; HS256 with its sealed secret only when the
   operator allowed HS256), `aud` the token endpoint or the issuer identifier (§3 item 3),
   exp/nbf/iat within the skew (§3 items 4-6), at most the integration's lifetime, its
   `jti` used once while it could be valid (§3 item 7, namespace integration:<id>)
                                                                           -> invalid_grant
4. the integration's claim rules                                          -> invalid_grant
5. the subject (§3 item 2): an active user whose configured field equals `sub`, or the
   client itself (`sub` = client_id)                                      -> invalid_grant
6. the scope within the integration's scopes and the client's (RFC 6749 §3.3) -> invalid_scope
Every refused assertion gets the same generic description (§3.1); the reason is in the
detail, which the runner logs and audits. Keys still being fetched (KeysPending) pass
through: the edge asks again shortly. No refresh token: the client presents a new
assertion instead (issue 10).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol

from inboundlib.cache import CacheSettings, ReadThroughCache
from inboundlib.grants.api import GrantParameters, TokenRequest, TokenResponse
from inboundlib.jose.fetch import Fetcher, RemoteKeys
from inboundlib.jose.keys import ALL_ALGORITHMS, KeySet, StaticKeys
from inboundlib.jose.validator import InvalidJwt, JwtPolicy, JwtValidator, KeySource, unverified_issuer
from inboundlib.oauth.errors import InvalidGrant, InvalidRequest, KeysPending
from inboundlib.oauth.scopes import format_scope, narrow_scopes
from inboundlib.redact import unverified
from services.client_registry.api import (
    GRANT_JWT_BEARER,
    ClaimRule,
    ClientRecord,
    FederatedUsers,
    JwtBearerIntegration,
)
from services.jwt_bearer.client_assertions import AssertionSettings
from services.token_issuer.api import IssueRequest, TokenIssuerApi

log = logging.getLogger(__name__)

# RFC 7523 §3.1: one text for every refused assertion; the reason goes to the detail.
ASSERTION_REFUSED = "The assertion is not valid."
SUBJECT_USER, SUBJECT_CLIENT = "user", "client"
# HS256 alone among the HMAC algorithms, and only with an integration's sealed secret.
HS256 = "HS256"
NOT_HMAC = tuple(alg for alg in ALL_ALGORITHMS if not alg.startswith("HS"))
# (client_id, iss) -> the integrations that trust it: read on every grant, changed rarely.
# Unknown pairs (any iss a caller makes up) are kept apart, fewer and shorter.
INTEGRATION_CACHE = CacheSettings(ttl=60.0, negative_ttl=5.0, max_entries=10_000, max_negative_entries=10_000,
                                  max_stale=900.0)


class IntegrationSource(Protocol):
    """The registry's IntegrationStore, as far as the grant reads it."""
    async def find_integrations(self, client_id: str, issuer: str) -> list[JwtBearerIntegration]: ...
    async def list_integrations(self) -> list[JwtBearerIntegration]: ...
    async def get_integration_secrets(self, ids: list[str]) -> list[bytes]: ...


class SecretOpener(Protocol):
    """The key-encryption keys (inboundlib.kek.KeyEncryptor): AES-GCM with associated data."""
    def decrypt(self, associated_data: str, blob: bytes) -> bytes: ...


@dataclass(frozen=True)
class Trust:
    """One active integration, ready to check assertions: its keys and the algorithms they may use."""
    integration: JwtBearerIntegration
    keys: KeySource
    algorithms: tuple[str, ...]


class Integrations:
    """The active integrations by (client_id, iss), cached (inboundlib.cache), each with its
    key source built once; emptied on every integration change and NATS reconnection
    (`invalidate`). Keys behind a jwks_uri come from the fetcher's cache only (a miss is
    KeysPending while it fetches); `warm` prefetches them."""

    def __init__(self, source: IntegrationSource, fetcher: Fetcher, opener: SecretOpener | None,
                 settings: CacheSettings = INTEGRATION_CACHE):
        self.source = source
        self.fetcher = fetcher
        self.opener = opener
        self.cache: ReadThroughCache[tuple[str, str], tuple[Trust, ...]] = ReadThroughCache(
            "jwt_bearer_integrations", settings, load=self._load)

    async def find(self, client_id: str, issuer: str) -> tuple[Trust, ...]:
        return await self.cache.get((client_id, issuer)) or ()

    def invalidate(self) -> None:
        self.cache.invalidate_all()

    async def warm(self) -> int:
        """Start fetching every active integration's jwks_uri in the background; how many."""
        started = 0
        for integration in await self.source.list_integrations():
            if integration.active and integration.jwks_uri:
                self.fetcher.warm(integration.jwks_uri, "jwks")
                started += 1
        return started

    async def _load(self, key: tuple[str, str]) -> tuple[Trust, ...] | None:
        client_id, issuer = key
        found = [i for i in await self.source.find_integrations(client_id, issuer)
                 if i.active and i.client_id == client_id and i.issuer == issuer]
        trusts = []
        for integration in found:
            try:
                trusts.append(await self._trust(integration))
            except (InvalidJwt, ValueError) as exc:  # this integration's keys are unusable: the others still count
                log.warning("JWT-bearer integration unusable", extra={
                    "integration": integration.id, "detail": exc.reason if isinstance(exc, InvalidJwt) else str(exc)})
        return tuple(trusts) or None

    async def _trust(self, integration: JwtBearerIntegration) -> Trust:
        asymmetric = tuple(a for a in integration.algorithms if a in NOT_HMAC) if integration.algorithms else NOT_HMAC
        kid = integration.kid
        if integration.jwks_uri:
            return Trust(integration, RemoteKeys(self.fetcher, integration.jwks_uri, kid=kid), asymmetric)
        if integration.jwks or integration.certificate_pem:
            key_set = (KeySet.from_jwks(integration.jwks) if integration.jwks
                       else KeySet.from_certificate_pem(integration.certificate_pem))
            return Trust(integration, StaticKeys(key_set.pinned(kid) if kid else key_set), asymmetric)
        if integration.allow_hs256:
            return Trust(integration, StaticKeys(KeySet.from_secret(await self._secret(integration), kid=kid)),
                         (HS256,))
        raise InvalidJwt("the integration has no keys (jwks_uri, jwks, certificate or an HS256 secret)")

    async def _secret(self, integration: JwtBearerIntegration) -> bytes:
        if self.opener is None:
            raise InvalidJwt("HS256 allowed but no key-encryption key is configured to open its secret")
        [sealed] = await self.source.get_integration_secrets([integration.id])
        if not sealed:
            raise InvalidJwt("HS256 allowed but no secret is stored")
        try:
            return self.opener.decrypt(f"integration:{integration.id}", sealed)
        except Exception as exc:  # InvalidTag: another key-encryption key, or a damaged blob
            raise InvalidJwt(f"the sealed HS256 secret cannot be opened ({type(exc).__name__})") from None


def claim_rule_holds(rule: ClaimRule, claims: dict) -> bool:
    """One of an integration's extra conditions. A missing claim fails every rule (a rule
    names a claim the operator expects). Strings compare as they are, other JSON values by
    their JSON text (true, 42); `contains`: a list holding the value, or a string with the
    value as one of its space-separated words (an OAuth `scope`)."""
    if rule.claim not in claims:
        return False
    value = claims[rule.claim]
    if rule.operator == "contains":
        if isinstance(value, list):
            return rule.value in (_text(item) for item in value)
        return isinstance(value, str) and rule.value in value.split(" ")
    if isinstance(value, (dict, list)):
        return False  # compared only by `contains`
    text = _text(value)
    if rule.operator == "equals":
        return text == rule.value
    if rule.operator == "not_equals":
        return text != rule.value
    if rule.operator == "in":
        return text in (item.strip() for item in rule.value.split(","))
    return False  # an operator this version does not know refuses (fail closed)


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class JwtBearerGrant:
    grant_type = GRANT_JWT_BEARER
    # RFC 7523 §2.1: grant_type, assertion (a single JWT) and scope (RFC 7521 §4.1).
    parameters = GrantParameters(single=frozenset({"assertion", "scope"}))
    authenticates_client = False

    def __init__(self, integrations: Integrations, validator: JwtValidator, users: FederatedUsers,
                 issuer: TokenIssuerApi, settings: AssertionSettings):
        self.integrations = integrations
        self.validator = validator
        self.users = users
        self.issuer = issuer
        self.settings = settings

    async def handle(self, request: TokenRequest, client: ClientRecord) -> TokenResponse:
        assertion = request.param("assertion")
        if not assertion:
            raise InvalidRequest("The assertion parameter is missing.", detail="missing assertion")
        claims, integration = await self._verified(assertion, client, request.context.endpoint_url)
        subject, username = await self._subject(integration, claims, client)
        allowed = [s for s in client.scopes if not integration.scopes or s in integration.scopes]
        scopes = narrow_scopes(request.param("scope"), allowed)
        token = await self.issuer.issue(IssueRequest(
            client_id=client.client_id, subject=subject, username=username, scopes=tuple(scopes),
            format=client.token_format, lifetime_seconds=client.access_token_lifetime,
            request_id=request.request_id, grant_type=self.grant_type))
        return TokenResponse(access_token=token.access_token, token_type=token.token_type,
                             expires_in=token.expires_in, scope=format_scope(scopes))

    async def _verified(self, assertion: str, client: ClientRecord,
                        endpoint_url: str) -> tuple[dict, JwtBearerIntegration]:
        """The claims and the integration that vouches for them; InvalidGrant with the reason."""
        try:
            # Usable text only: an iss with a NUL names no integration and never reaches the lookup.
            issuer = unverified_issuer(assertion)
        except InvalidJwt as exc:
            raise _refused(exc.reason) from None
        trusts = await self.integrations.find(client.client_id, issuer)
        if not trusts:
            raise _refused(f"no active integration for this client and issuer {unverified(issuer)}")
        # RFC 7523 §3 item 3: the token endpoint's URL (the one presented at, too) or the issuer identifier.
        audiences = tuple(dict.fromkeys((self.settings.issuer, self.settings.token_endpoint,
                                         *((endpoint_url,) if self.settings.is_endpoint(endpoint_url) else ()))))
        reasons: list[str] = []
        pending: KeysPending | None = None
        for trust in trusts:
            try:
                claims = await self.validator.validate(assertion, self._policy(trust, client, audiences), trust.keys)
            except InvalidJwt as exc:
                reasons.append(f"integration {trust.integration.id}: {exc.reason}")
                continue
            except KeysPending as exc:
                pending = exc
                continue
            broken = [rule for rule in trust.integration.claim_rules if not claim_rule_holds(rule, claims)]
            if broken:
                raise _refused(f"integration {trust.integration.id}: claim rule failed "
                               f"({broken[0].claim} {broken[0].operator})")
            return claims, trust.integration
        if pending is not None:
            raise pending
        raise _refused("; ".join(reasons))

    def _policy(self, trust: Trust, client: ClientRecord, audiences: tuple[str, ...]) -> JwtPolicy:
        integration = trust.integration
        return JwtPolicy(
            issuers=(integration.issuer,), audiences=audiences, algorithms=trust.algorithms,
            skew=self.settings.skew, max_lifetime=integration.max_assertion_lifetime,
            require_jti=integration.require_jti, jti_namespace=f"integration:{integration.id}",
            subject=client.client_id if integration.subject_kind == SUBJECT_CLIENT else None,
            required=("iss", "sub", "aud", "exp", *(("jti",) if integration.require_jti else ())))

    async def _subject(self, integration: JwtBearerIntegration, claims: dict,
                       client: ClientRecord) -> tuple[str, str]:
        """The token's subject and username: RFC 7523 §3 item 2."""
        sub = claims["sub"]
        if integration.subject_kind == SUBJECT_CLIENT:
            return client.client_id, ""  # the validator held sub to the client id
        if integration.subject_kind != SUBJECT_USER:
            raise _refused(f"integration {integration.id}: unknown subject kind {integration.subject_kind!r}")
        user = await self.users.find_user(integration.user_field, sub)
        if user is None:
            raise _refused(f"no user whose {integration.user_field} is the assertion's sub ({unverified(sub)})")
        if not user.active:
            raise _refused(f"user {user.id} is disabled")
        return user.id, user.username


def _refused(reason: str) -> InvalidGrant:
    return InvalidGrant(ASSERTION_REFUSED, detail=f"assertion refused: {reason}")


def build(integrations: Integrations, validator: JwtValidator, users: FederatedUsers, issuer: TokenIssuerApi,
          settings: AssertionSettings) -> JwtBearerGrant:
    """The grant as jwt_bearer's assembly runs it."""
    return JwtBearerGrant(integrations, validator, users, issuer, settings)


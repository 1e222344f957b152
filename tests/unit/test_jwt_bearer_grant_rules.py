"""The JWT bearer grant's rules (RFC 7523 §2.1, §3), one by one, with in-memory fakes and
keys made here (no HTTP, no gRPC): each refusal is invalid_grant with the one generic
description and its reason in the detail. The paths end to end (jwks_uri on the demo IdP,
the runner's audit record, Authlib) are tests/integration/test_jwt_bearer_grant.py."""
from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from inboundlib.grants.api import RequestContext, TokenRequest
from inboundlib.jose.validator import JwtValidator
from inboundlib.oauth.errors import InvalidGrant, InvalidRequest, InvalidScope, KeysPending
from services.client_registry.api import GRANT_JWT_BEARER, ClaimRule, JwtBearerIntegration, UserRecord
from services.jwt_bearer.client_assertions import AssertionSettings
from services.jwt_bearer.grant import (
    ASSERTION_REFUSED,
    Integrations,
    JwtBearerGrant,
    claim_rule_holds,
)
from services.token_issuer.keys import KeyEncryptor
from tests.fakes import FakeIssuer, client_record

ISSUER = "https://auth.example.com"
TOKEN_ENDPOINT = ISSUER + "/oauth/token"
PARTNER = "https://idp.partner.example"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
KEK = os.urandom(32)
HMAC_SECRET = os.urandom(64)


def _jwk(key, kid: str, alg: str) -> dict:
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig"}


JWKS = json.dumps({"keys": [_jwk(RSA_KEY, "rsa-1", "RS256"), _jwk(OTHER_RSA_KEY, "rsa-2", "RS256"),
                            _jwk(EC_KEY, "ec-1", "ES256")]})
ALICE = UserRecord(id="u-alice", username="alice", email="alice@example.com", display_name="Alice",
                   active=True, roles=())
BOB = dataclasses.replace(ALICE, id="u-bob", username="bob", email="bob@example.com", active=False)


def integration(**overrides) -> JwtBearerIntegration:
    base = JwtBearerIntegration(id="int-1", name="partner", client_id="app", issuer=PARTNER, jwks=JWKS,
                                scopes=("api.read",))
    return dataclasses.replace(base, **overrides)


class FakeIntegrations:
    def __init__(self, *integrations: JwtBearerIntegration, secrets: dict[str, bytes] | None = None):
        self.integrations = list(integrations)
        self.secrets = secrets or {}
        self.lookups = 0

    async def find_integrations(self, client_id: str, issuer: str) -> list[JwtBearerIntegration]:
        self.lookups += 1
        return [i for i in self.integrations if i.client_id == client_id and i.issuer == issuer]

    async def list_integrations(self) -> list[JwtBearerIntegration]:
        return list(self.integrations)

    async def get_integration_secrets(self, ids: list[str]) -> list[bytes]:
        return [self.secrets.get(i, b"") for i in ids]


class FakeUsers:
    def __init__(self, *users: UserRecord):
        self.users = users

    async def find_user(self, field: str, value: str) -> UserRecord | None:
        return next((u for u in self.users if getattr(u, field) == value), None)


class MemoryJtis:
    def __init__(self):
        self.seen: set[tuple[str, str]] = set()

    async def first_use(self, namespace: str, jti: str, expires_at: int) -> bool:
        if (namespace, jti) in self.seen:
            return False
        self.seen.add((namespace, jti))
        return True


class PendingFetcher:
    """A fetcher whose cache is cold: every read starts a fetch and answers KeysPending."""

    def key_set(self, jwks_uri, *, max_cache=None):
        raise KeysPending(detail="being fetched")

    def refetch_for_unknown_kid(self, jwks_uri):
        return False

    def warm(self, url, kind, max_cache=None):
        pass


def grant(*integrations: JwtBearerIntegration, secrets=None, opener=True, fetcher=None, issuer=None,
          jtis=None) -> tuple[JwtBearerGrant, FakeIssuer]:
    issuer = issuer or FakeIssuer()
    source = FakeIntegrations(*(integrations or (integration(),)), secrets=secrets)
    directory = Integrations(source, fetcher or PendingFetcher(), KeyEncryptor(KEK) if opener else None)
    return JwtBearerGrant(directory, JwtValidator(jtis or MemoryJtis()), FakeUsers(ALICE, BOB), issuer,
                          AssertionSettings(issuer=ISSUER)), issuer


def assertion(*, key=RSA_KEY, alg="RS256", kid="rsa-1", headers=None, **claims) -> str:
    now = int(time.time())
    body = {"iss": PARTNER, "sub": "alice", "aud": TOKEN_ENDPOINT, "iat": now, "exp": now + 300,
            "jti": str(uuid.uuid4()), **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={**({"kid": kid} if kid else {}), **(headers or {})})


def request(token: str | None, *, scope: str | None = None, endpoint_url: str = "") -> TokenRequest:
    params = {} if token is None else {"assertion": (token,)}
    if scope is not None:
        params["scope"] = (scope,)
    return TokenRequest(grant_type=GRANT_JWT_BEARER, client=None, params=params,
                        context=RequestContext(endpoint_url=endpoint_url))


APP = client_record(grant_types=(GRANT_JWT_BEARER,), scopes=("api.read", "api.write"))


async def refused(g: JwtBearerGrant, token: str, **kwargs) -> str:
    with pytest.raises(InvalidGrant) as caught:
        await g.handle(request(token, **kwargs), APP)
    assert caught.value.description == ASSERTION_REFUSED
    return caught.value.detail


async def test_an_assertion_for_a_user_issues_a_token_for_that_user():
    g, issuer = grant()
    response = await g.handle(request(assertion()), APP)
    issued = issuer.requests[0]
    assert (issued.subject, issued.username, issued.client_id) == ("u-alice", "alice", "app")
    assert issued.grant_type == GRANT_JWT_BEARER and issued.refresh_token_lifetime == 0
    # the integration's scopes bound the client's
    assert issued.scopes == ("api.read",) and response.scope == "api.read"
    assert not response.refresh_token


async def test_the_subject_is_matched_on_the_integration_s_user_field():
    """An integration whose assertions name users by email: sub is an email, never a username."""
    g, issuer = grant(integration(user_field="email"))
    await g.handle(request(assertion(sub="alice@example.com")), APP)
    assert issuer.requests[0].subject == "u-alice"
    assert "no user whose email" in await refused(g, assertion(sub="alice"))


async def test_each_key_type_of_the_integration_verifies():
    g, issuer = grant()
    await g.handle(request(assertion(key=EC_KEY, alg="ES256", kid="ec-1")), APP)
    await g.handle(request(assertion(key=OTHER_RSA_KEY, kid="rsa-2")), APP)
    assert len(issuer.requests) == 2


async def test_a_certificate_is_a_key_source():
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "partner")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(RSA_KEY.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(RSA_KEY, jwt.algorithms.hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    g, issuer = grant(integration(jwks="", certificate_pem=pem))
    await g.handle(request(assertion(kid=None)), APP)
    assert await refused(g, assertion(key=OTHER_RSA_KEY, kid=None))


async def test_a_client_subject_must_be_the_client_itself():
    g, issuer = grant(integration(subject_kind="client"))
    await g.handle(request(assertion(sub="app")), APP)
    assert (issuer.requests[0].subject, issuer.requests[0].username) == ("app", "")
    assert "subject not accepted" in await refused(g, assertion(sub="alice"))


async def test_missing_assertion_is_invalid_request():
    g, _ = grant()
    with pytest.raises(InvalidRequest):
        await g.handle(request(None), APP)


@pytest.mark.parametrize("case,token,reason", [
    ("not a JWT", "not-a-jwt", "malformed"),
    ("no iss", lambda: assertion(iss=None), "no iss"),
    ("another issuer", lambda: assertion(iss="https://elsewhere.example"), "no active integration"),
    ("wrong aud", lambda: assertion(aud="https://other.example/token"), "audience not accepted"),
    ("expired beyond the skew", lambda: assertion(iat=int(time.time()) - 1000, exp=int(time.time()) - 400),
     "expired"),
    ("nbf in the future", lambda: assertion(nbf=int(time.time()) + 900, exp=int(time.time()) + 1000),
     "not valid for another"),
    ("no exp", lambda: assertion(exp=None), "missing claim exp"),
    ("longer than the integration allows", lambda: assertion(exp=int(time.time()) + 7200), "exceeds the maximum"),
    ("bad signature", lambda: assertion(key=OTHER_RSA_KEY), "bad signature"),
    ("unknown kid", lambda: assertion(kid="rsa-9"), "unknown kid"),
    ("no jti", lambda: assertion(jti=None), "missing claim jti"),
    ("alg none", lambda: jwt.encode({"iss": PARTNER, "sub": "alice", "aud": TOKEN_ENDPOINT,
                                     "exp": int(time.time()) + 60}, None, algorithm="none"), "algorithm"),
    ("unknown user", lambda: assertion(sub="mallory"), "no user"),
    ("disabled user", lambda: assertion(sub="bob"), "disabled"),
])
async def test_each_refusal_is_invalid_grant_with_its_reason(case, token, reason):
    g, issuer = grant()
    detail = await refused(g, token() if callable(token) else token)
    assert reason in detail, detail
    assert not issuer.requests


async def test_hs256_with_a_public_key_as_secret_is_refused():
    """The classic key confusion: the RSA public key's PEM as an HMAC secret."""
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    forged = jwt.api_jws.PyJWS()
    forged._algorithms["HS256"].prepare_key = lambda key: key  # the forger's pyjwt takes any key
    token = forged.encode(json.dumps({"iss": PARTNER, "sub": "alice", "aud": TOKEN_ENDPOINT, "exp": now + 60,
                                      "jti": "j"}).encode(), pem, algorithm="HS256", headers={"kid": "rsa-1"})
    g, _ = grant()
    assert "algorithm HS256 not allowed" in await refused(g, token)


async def test_hs256_only_when_allowed_with_the_sealed_secret():
    sealed = KeyEncryptor(KEK).encrypt("integration:int-hs", HMAC_SECRET)
    hs = integration(id="int-hs", jwks="", allow_hs256=True)
    g, issuer = grant(hs, secrets={"int-hs": sealed})
    await g.handle(request(assertion(key=HMAC_SECRET, alg="HS256", kid=None)), APP)
    assert len(issuer.requests) == 1
    # HS384 is not HS256; an RSA-signed one has no key here
    assert await refused(g, assertion(key=HMAC_SECRET, alg="HS384", kid=None))
    assert await refused(g, assertion())
    # not allowed: the same secret stored means nothing
    g, _ = grant(dataclasses.replace(hs, allow_hs256=False), secrets={"int-hs": sealed})
    assert "no active integration" in await refused(g, assertion(key=HMAC_SECRET, alg="HS256", kid=None))
    # allowed, but no key-encryption key to open it, or sealed for another integration
    g, _ = grant(hs, secrets={"int-hs": sealed}, opener=False)
    assert await refused(g, assertion(key=HMAC_SECRET, alg="HS256", kid=None))
    g, _ = grant(hs, secrets={"int-hs": KeyEncryptor(KEK).encrypt("integration:other", HMAC_SECRET)})
    assert await refused(g, assertion(key=HMAC_SECRET, alg="HS256", kid=None))


async def test_a_replayed_jti_is_refused_within_the_integration():
    jtis = MemoryJtis()
    g, issuer = grant(jtis=jtis)
    token = assertion(jti="once")
    await g.handle(request(token), APP)
    assert "jti replayed" in await refused(g, token)
    assert ("integration:int-1", "once") in jtis.seen
    # an integration that does not require jti accepts assertions without one
    g, issuer = grant(integration(require_jti=False))
    await g.handle(request(assertion(jti=None)), APP)
    assert issuer.requests


async def test_pinned_kid_trusts_only_that_key():
    g, issuer = grant(integration(kid="rsa-2"))
    await g.handle(request(assertion(key=OTHER_RSA_KEY, kid="rsa-2")), APP)
    assert await refused(g, assertion(kid="rsa-1"))


async def test_integration_algorithms_restrict_the_keys():
    g, _ = grant(integration(algorithms=("ES256",)))
    assert "not allowed by the policy" in await refused(g, assertion())


async def test_audience_may_be_the_issuer_or_the_endpoint_presented_at():
    g, issuer = grant()
    await g.handle(request(assertion(aud=ISSUER)), APP)
    await g.handle(request(assertion(aud=["x", ISSUER + "/oauth_token.do"]),
                           endpoint_url=ISSUER + "/oauth_token.do"), APP)
    assert len(issuer.requests) == 2


async def test_an_inactive_integration_trusts_nothing():
    g, _ = grant(integration(active=False))
    assert "no active integration" in await refused(g, assertion())


async def test_an_integration_of_another_client_trusts_nothing():
    g, _ = grant(integration(client_id="someone-else"))
    assert "no active integration" in await refused(g, assertion())


async def test_claim_rules_must_all_hold():
    rules = (ClaimRule("tenant", "equals", "acme"), ClaimRule("scp", "contains", "sync"))
    g, issuer = grant(integration(claim_rules=rules))
    await g.handle(request(assertion(tenant="acme", scp="read sync")), APP)
    assert "claim rule failed (scp contains)" in await refused(g, assertion(tenant="acme", scp="read"))
    assert "claim rule failed (tenant equals)" in await refused(g, assertion(tenant="evil", scp="sync"))
    assert len(issuer.requests) == 1


@pytest.mark.parametrize("rule,claims,holds", [
    (ClaimRule("tenant", "equals", "acme"), {"tenant": "acme"}, True),
    (ClaimRule("tenant", "equals", "acme"), {"tenant": "acme2"}, False),
    (ClaimRule("tenant", "equals", "acme"), {}, False),
    (ClaimRule("admin", "equals", "true"), {"admin": True}, True),
    (ClaimRule("tenant", "not_equals", "evil"), {"tenant": "acme"}, True),
    (ClaimRule("tenant", "not_equals", "evil"), {"tenant": "evil"}, False),
    (ClaimRule("tenant", "not_equals", "evil"), {}, False),
    (ClaimRule("region", "in", "eu, us"), {"region": "us"}, True),
    (ClaimRule("region", "in", "eu,us"), {"region": "apac"}, False),
    (ClaimRule("groups", "contains", "ops"), {"groups": ["dev", "ops"]}, True),
    (ClaimRule("groups", "contains", "ops"), {"groups": ["devops"]}, False),
    (ClaimRule("scp", "contains", "ops"), {"scp": "dev ops"}, True),
    (ClaimRule("scp", "contains", "ops"), {"scp": "devops"}, False),
    (ClaimRule("groups", "equals", "ops"), {"groups": ["ops"]}, False),
    (ClaimRule("tenant", "matches", "acme"), {"tenant": "acme"}, False),
])
def test_claim_rule_operators(rule, claims, holds):
    assert claim_rule_holds(rule, claims) is holds


async def test_scope_beyond_the_integration_is_invalid_scope():
    g, issuer = grant()
    with pytest.raises(InvalidScope):
        await g.handle(request(assertion(), scope="api.write"), APP)
    # an integration without scopes of its own: the client's
    g, issuer = grant(integration(scopes=()))
    response = await g.handle(request(assertion(), scope="api.write"), APP)
    assert response.scope == "api.write"


async def test_keys_being_fetched_pass_through_as_keys_pending():
    g, issuer = grant(integration(jwks="", jwks_uri="https://idp.partner.example/jwks"))
    with pytest.raises(KeysPending):
        await g.handle(request(assertion()), APP)
    assert not issuer.requests


async def test_integrations_are_cached_until_invalidated():
    source = FakeIntegrations(integration())
    directory = Integrations(source, PendingFetcher(), None)
    assert len(await directory.find("app", PARTNER)) == 1
    await directory.find("app", PARTNER)
    assert source.lookups == 1
    source.integrations = [integration(active=False)]
    directory.invalidate()
    assert await directory.find("app", PARTNER) == ()
    assert source.lookups == 2

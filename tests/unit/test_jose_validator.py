"""The JWT validator (libs/inboundlib/jose/validator.py), rule by rule: each negative test
turns one thing of an otherwise valid token wrong, so it fails if that rule is removed."""
from __future__ import annotations

import pytest

from inboundlib.jose.keys import KeySet, StaticKeys
from inboundlib.jose.validator import InvalidJwt, JwtPolicy, JwtValidator, unverified_claims, unverified_header
from inboundlib.oauth.errors import KeysPending
from services.demo_idp import DemoIdp

AUD = "https://inbound.example/oauth/token"
NOW = 1_800_000_000


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    return DemoIdp(tmp_path_factory.mktemp("ca"))  # never started: its keys and mint() only


@pytest.fixture(scope="module")
def attacker(tmp_path_factory):
    return DemoIdp(tmp_path_factory.mktemp("ca-attacker"))


class Source:
    """A KeySource that records what it was asked; `then` replaces the set on refetch."""

    def __init__(self, key_set: KeySet, *, refetch_allowed: bool = False, then: KeySet | None = None):
        self.key_set, self.refetch_allowed, self.then = key_set, refetch_allowed, then
        self.refetches = 0

    def keys(self) -> KeySet:
        return self.key_set

    def refetch(self) -> bool:
        self.refetches += 1
        if self.refetch_allowed and self.then is not None:
            self.key_set = self.then
        return self.refetch_allowed


class Jtis:
    def __init__(self):
        self.seen: dict[tuple[str, str], int] = {}

    async def first_use(self, namespace: str, jti: str, expires_at: int) -> bool:
        if (namespace, jti) in self.seen:
            return False
        self.seen[(namespace, jti)] = expires_at
        return True


def policy(idp, **overrides) -> JwtPolicy:
    return JwtPolicy(**{"issuers": (idp.issuer,), "audiences": (AUD,), **overrides})


def claims(idp, **overrides) -> dict:
    base = {"iss": idp.issuer, "sub": "alice", "aud": AUD, "iat": NOW, "exp": NOW + 300, "jti": "jti-1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def validator(jtis=None, now: float = NOW) -> JwtValidator:
    return JwtValidator(jtis, clock=lambda: now)


def keys_of(idp) -> Source:
    return Source(KeySet.from_jwks(idp.jwks()))


async def refused(token, pol, source, jtis=None, now: float = NOW) -> str:
    with pytest.raises(InvalidJwt) as caught:
        await validator(jtis, now).validate(token, pol, source)
    return caught.value.reason


# ---- positives

@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_each_key_type_verifies_its_algorithm(idp, alg):
    got = await validator().validate(idp.mint(claims(idp), alg=alg), policy(idp), keys_of(idp))
    assert got["sub"] == "alice"


async def test_a_registered_shared_secret_verifies_hs256(idp):
    secret = b"s" * 43
    token = idp.mint(claims(idp), alg="HS256", secret=secret)
    got = await validator().validate(token, policy(idp), StaticKeys(KeySet.from_secret(secret)))
    assert got["sub"] == "alice"


async def test_aud_may_be_a_list_naming_one_accepted_audience(idp):
    token = idp.mint(claims(idp, aud=["https://other.example", AUD]))
    assert (await validator().validate(token, policy(idp), keys_of(idp)))["aud"][1] == AUD


async def test_times_within_the_skew_are_accepted(idp):
    token = idp.mint(claims(idp, iat=NOW + 200, nbf=NOW + 200, exp=NOW - 200 + 600))
    assert await validator(now=NOW).validate(token, policy(idp, skew=300), keys_of(idp))


# ---- negatives: signature and keys

async def test_bad_signature_refused(idp, attacker):
    # Signed by another key under our key's kid.
    token = attacker.mint(claims(idp), kid=idp.keys["RS256"].kid)
    assert "bad signature" in await refused(token, policy(idp), keys_of(idp))


async def test_tampered_payload_refused(idp):
    header, _payload, signature = idp.mint(claims(idp)).split(".")
    other = idp.mint(claims(idp, sub="mallory")).split(".")[1]
    assert "bad signature" in await refused(f"{header}.{other}.{signature}", policy(idp), keys_of(idp))


async def test_alg_none_refused(idp):
    token = idp.mint(claims(idp), alg="none", kid=idp.keys["RS256"].kid)
    assert "algorithm not accepted" in await refused(token, policy(idp), keys_of(idp))


async def test_hs256_keyed_with_the_providers_public_key_refused(idp):
    rsa = idp.keys["RS256"]
    for secret in (rsa.public_pem(), rsa.jwk["n"].encode()):
        token = idp.mint(claims(idp), alg="HS256", kid=rsa.kid, secret=secret)
        assert "no trusted key for algorithm HS256" in await refused(token, policy(idp), keys_of(idp))


async def test_oct_keys_in_a_jwks_are_never_trusted(idp):
    jwks = {"keys": [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2U"}]}
    token = idp.mint(claims(idp), alg="HS256", kid="shared", secret=b"secretsecretsecretsecretsecretse")
    assert "unknown kid" in await refused(token, policy(idp), Source(KeySet.from_jwks(jwks)))


async def test_the_policy_restricts_the_algorithms_the_key_allows(idp):
    token = idp.mint(claims(idp), alg="RS256")
    assert "not allowed by the policy" in await refused(token, policy(idp, algorithms=("ES256",)), keys_of(idp))


async def test_an_algorithm_the_key_does_not_allow_is_refused(idp):
    # The EC key's kid with RS256: the kid is known, its key cannot verify RS256.
    token = idp.mint(claims(idp), alg="RS256", kid=idp.keys["ES256"].kid)
    assert "no trusted key for algorithm RS256" in await refused(token, policy(idp), keys_of(idp))


@pytest.mark.parametrize("kid", ["../../x", "' OR '1'='1", "https://evil.example/jwks", "rs256-%00", ""])
async def test_kid_injection_only_misses(idp, kid):
    source = keys_of(idp)
    token = idp.mint(claims(idp), kid=kid)
    assert "unknown kid" in await refused(token, policy(idp), source)
    assert source.refetches == 1  # only a lookup: a miss, one refetch asked (refused here), nothing else


@pytest.mark.parametrize("header", [
    {"jku": "https://evil.example/jwks"},
    {"x5u": "https://evil.example/cert.pem"},
])
async def test_jku_and_x5u_in_the_header_are_ignored(idp, attacker, header):
    # An attacker's key, announced by URL under the attacker's kid: never fetched, never trusted.
    source = keys_of(idp)
    forged = attacker.mint(claims(idp), headers=header)
    assert "unknown kid" in await refused(forged, policy(idp), source)
    # And a genuine token carrying the same header is judged by our keys alone.
    genuine = idp.mint(claims(idp), headers=header)
    assert (await validator().validate(genuine, policy(idp), keys_of(idp)))["sub"] == "alice"


async def test_an_embedded_jwk_or_x5c_is_ignored(idp, attacker):
    key = attacker.keys["RS256"]
    forged = attacker.mint(claims(idp), kid=idp.keys["RS256"].kid,
                           headers={"jwk": key.jwk, "x5c": ["MIIB"]})
    assert "bad signature" in await refused(forged, policy(idp), keys_of(idp))


async def test_unknown_kid_refetches_once_then_pends_or_refuses(idp, attacker):
    token = attacker.mint(claims(idp))  # the attacker's kid is not ours
    limited = keys_of(idp)
    assert "unknown kid" in await refused(token, policy(idp), limited)
    assert limited.refetches == 1
    started = Source(KeySet.from_jwks(idp.jwks()), refetch_allowed=True)
    with pytest.raises(KeysPending):
        await validator().validate(token, policy(idp), started)


async def test_a_rotated_key_is_found_after_the_refetch(idp, tmp_path):
    rotated = DemoIdp(tmp_path)
    token = rotated.mint(claims(idp))
    source = Source(keys_of(idp).key_set, refetch_allowed=True, then=KeySet.from_jwks(rotated.jwks()))
    with pytest.raises(KeysPending):
        await validator().validate(token, policy(idp), source)
    assert (await validator().validate(token, policy(idp), source))["sub"] == "alice"


# ---- negatives: claims

async def test_wrong_aud_refused(idp):
    token = idp.mint(claims(idp, aud=["https://elsewhere.example"]))
    assert "audience not accepted" in await refused(token, policy(idp), keys_of(idp))


async def test_wrong_iss_refused(idp):
    token = idp.mint(claims(idp, iss="https://evil.example"))
    assert "issuer not accepted" in await refused(token, policy(idp), keys_of(idp))


async def test_subject_must_match_when_the_policy_names_one(idp):
    token = idp.mint(claims(idp, sub="someone-else"))
    assert "subject not accepted" in await refused(token, policy(idp, subject="alice"), keys_of(idp))


async def test_expired_beyond_the_skew_refused(idp):
    token = idp.mint(claims(idp, iat=NOW - 700, exp=NOW - 301))
    assert "expired" in await refused(token, policy(idp, skew=300), keys_of(idp))


async def test_nbf_in_the_future_beyond_the_skew_refused(idp):
    token = idp.mint(claims(idp, nbf=NOW + 301, iat=None, exp=NOW + 600))
    assert "nbf" in await refused(token, policy(idp, skew=300), keys_of(idp))


async def test_iat_in_the_future_beyond_the_skew_refused(idp):
    token = idp.mint(claims(idp, iat=NOW + 301, exp=NOW + 600))
    assert "iat" in await refused(token, policy(idp, skew=300), keys_of(idp))


@pytest.mark.parametrize("name", ["exp", "iss", "sub", "aud"])
async def test_required_claims_missing_refused(idp, name):
    token = idp.mint(claims(idp, **{name: None}))
    assert f"missing claim {name}" in await refused(token, policy(idp), keys_of(idp))


async def test_non_numeric_exp_refused(idp):
    token = idp.mint(claims(idp, exp="tomorrow"))
    assert "exp is not a number" in await refused(token, policy(idp), keys_of(idp))


async def test_lifetime_too_long_refused(idp):
    token = idp.mint(claims(idp, iat=NOW, exp=NOW + 3601))
    assert "exceeds the maximum" in await refused(token, policy(idp, max_lifetime=3600), keys_of(idp))
    from_nbf = idp.mint(claims(idp, iat=None, nbf=NOW, exp=NOW + 3601))
    assert "exceeds the maximum" in await refused(from_nbf, policy(idp, max_lifetime=3600), keys_of(idp))


# ---- jti replay

async def test_replayed_jti_refused_and_remembered_until_exp_plus_skew(idp):
    jtis = Jtis()
    pol = policy(idp, require_jti=True, jti_namespace="integration:7", skew=60)
    token = idp.mint(claims(idp))
    await validator(jtis).validate(token, pol, keys_of(idp))
    assert jtis.seen == {("integration:7", "jti-1"): NOW + 300 + 60}
    assert "jti replayed" in await refused(token, pol, keys_of(idp), jtis)


async def test_a_token_failing_another_check_never_spends_its_jti(idp):
    jtis = Jtis()
    pol = policy(idp, require_jti=True, jti_namespace="client:c")
    await refused(idp.mint(claims(idp, aud="https://elsewhere.example")), pol, keys_of(idp), jtis)
    assert jtis.seen == {}


async def test_jti_required_when_the_policy_checks_replay(idp):
    token = idp.mint(claims(idp, jti=None))
    assert "missing jti" in await refused(token, policy(idp, require_jti=True), keys_of(idp), Jtis())


async def test_replay_check_without_a_store_fails_closed(idp):
    assert "unavailable" in await refused(idp.mint(claims(idp)), policy(idp, require_jti=True), keys_of(idp))


# ---- malformed input and the unverified helpers

@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 40_000, "eyJhbGciOiJSUzI1NiJ9..", None])
async def test_malformed_tokens_refused(idp, token):
    await refused(token, policy(idp), keys_of(idp))


async def test_reasons_carry_fingerprints_not_token_contents(idp):
    secret_aud = "https://secret-audience.example/SECRET"
    reason = await refused(idp.mint(claims(idp, aud=secret_aud)), policy(idp), keys_of(idp))
    assert "SECRET" not in reason and "sha256:" in reason


def test_unverified_helpers_read_without_verifying(idp, attacker):
    token = attacker.mint(claims(idp, sub="bob"), headers={"typ": "JWT"})
    assert unverified_claims(token)["sub"] == "bob"
    assert unverified_header(token)["typ"] == "JWT"
    with pytest.raises(InvalidJwt):
        unverified_header("not a jwt")


# ---- hostile values (review): types, ranges, RFC 7515 header rules

@pytest.mark.parametrize("name, value", [
    ("exp", True), ("exp", "1800000300"), ("exp", 10**400), ("exp", -10**400), ("exp", 10**12),
    ("nbf", 10**400), ("iat", 10**400), ("iat", False), ("nbf", [NOW]),
], ids=lambda v: str(v)[:12])
async def test_numeric_dates_of_another_type_or_out_of_range_are_refused_not_crashed(idp, name, value):
    # No max_lifetime, so only the type/range rule stands between a 400-digit exp and float overflow.
    token = idp.mint(claims(idp, **{name: value}))
    assert f"{name} is not a number" in await refused(token, policy(idp, max_lifetime=None), keys_of(idp))


async def test_fractional_numeric_dates_are_accepted(idp):
    token = idp.mint(claims(idp, iat=NOW + 0.5, exp=NOW + 300.25))
    assert (await validator().validate(token, policy(idp), keys_of(idp)))["exp"] == NOW + 300.25


@pytest.mark.parametrize("aud", [[], [7], {"a": AUD}, ""])
async def test_empty_or_malformed_aud_refused(idp, aud):
    assert "aud" in await refused(idp.mint(claims(idp, aud=aud)), policy(idp), keys_of(idp))


@pytest.mark.parametrize("headers", [
    {"crit": ["https://ext.example/must-understand"], "https://ext.example/must-understand": 1},  # RFC 7515 §4.1.11
    {"crit": []},
    {"crit": "exp"},
])
async def test_a_critical_header_we_do_not_understand_is_refused(idp, headers):
    assert "malformed token" in await refused(idp.mint(claims(idp), headers=headers), policy(idp), keys_of(idp))


async def test_unencoded_payload_b64_false_is_refused(idp):
    # RFC 7797: the payload is not base64url; a verifier without the detached payload must refuse.
    token = idp.mint(claims(idp), headers={"b64": False, "crit": ["b64"]})
    assert "malformed token" in await refused(token, policy(idp), keys_of(idp))


async def test_a_jwk_pinned_to_rs256_does_not_verify_ps256(idp):
    import jwt

    key = idp.keys["RS256"]
    pss = jwt.encode(claims(idp), key.private_key, algorithm="PS256", headers={"kid": key.kid})
    assert "no trusted key for algorithm PS256" in await refused(pss, policy(idp), keys_of(idp))
    unpinned = Source(KeySet.from_jwks({"keys": [{k: v for k, v in key.jwk.items() if k != "alg"}]}))
    assert (await validator().validate(pss, policy(idp), unpinned))["sub"] == "alice"


async def test_an_es_algorithm_of_another_curve_is_refused(idp):
    import json

    from jwt.utils import base64url_encode

    key = idp.keys["ES256"]  # P-256: a header saying ES384 names another curve (pyjwt will not sign it)
    _header, payload, signature = idp.mint(claims(idp), alg="ES256").split(".")
    header = base64url_encode(json.dumps({"alg": "ES384", "kid": key.kid}).encode()).decode()
    token = f"{header}.{payload}.{signature}"
    assert "no trusted key for algorithm ES384" in await refused(token, policy(idp), keys_of(idp))


@pytest.mark.parametrize("kid", [7, ["a"], "k" * 257])
async def test_a_malformed_kid_is_refused_without_a_refetch(idp, kid):
    import json

    from jwt.utils import base64url_encode

    _header, payload, signature = idp.mint(claims(idp)).split(".")  # pyjwt will not sign a non-string kid
    header = base64url_encode(json.dumps({"alg": "RS256", "kid": kid}).encode()).decode()
    source = keys_of(idp)
    assert "malformed" in await refused(f"{header}.{payload}.{signature}", policy(idp), source)
    assert source.refetches == 0  # junk never costs the IdP a fetch


async def test_a_validly_signed_token_over_the_size_limit_is_refused(idp):
    token = idp.mint(claims(idp, padding="x" * 33_000))
    assert "too large" in await refused(token, policy(idp), keys_of(idp))


async def test_a_non_string_sub_is_refused(idp):
    assert "sub is not a string" in await refused(idp.mint(claims(idp, sub=42)), policy(idp), keys_of(idp))


async def test_without_iat_or_nbf_the_remaining_lifetime_is_bounded(idp):
    token = idp.mint(claims(idp, iat=None, exp=NOW + 3601))
    assert "exceeds the maximum" in await refused(token, policy(idp, max_lifetime=3600), keys_of(idp))


async def test_an_overlong_jti_is_refused_before_the_store(idp):
    jtis = Jtis()
    pol = policy(idp, require_jti=True, jti_namespace="client:c")
    assert "jti too long" in await refused(idp.mint(claims(idp, jti="j" * 257)), pol, keys_of(idp), jtis)
    assert jtis.seen == {}


async def test_a_replay_check_needs_a_namespace(idp):
    # One shared namespace would let one client's jti spend another trust's.
    jtis = Jtis()
    reason = await refused(idp.mint(claims(idp)), policy(idp, require_jti=True), keys_of(idp), jtis)
    assert "namespace" in reason and jtis.seen == {}


@pytest.mark.parametrize("name", ["iss", "sub"])
async def test_an_empty_iss_or_sub_is_refused(idp, name):
    # issuers includes "" so only the non-empty rule refuses the empty iss.
    token = idp.mint({**claims(idp), name: ""})
    assert f"{name} is empty" in await refused(token, policy(idp, issuers=(idp.issuer, "")), keys_of(idp))


@pytest.mark.parametrize("name", ["iat", "nbf"])
async def test_a_null_date_is_malformed_not_absent(idp, name):
    token = idp.mint({**claims(idp), name: None})
    assert f"{name} is not a number" in await refused(token, policy(idp), keys_of(idp))

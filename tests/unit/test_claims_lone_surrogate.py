"""A JWT whose claims hold a lone surrogate (a \\uD800 escape: RFC 8259 §8.2) is malformed
(InvalidJwt), verified or not: such a string cannot be UTF-8, Postgres text or a protobuf
string, and reached the registry from a verified assertion's sub or jti, an IdP token's email,
or an unverified iss, where it failed as a server error."""
from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from inboundlib.jose.keys import KeySet, StaticKeys
from inboundlib.jose.validator import InvalidJwt, JwtPolicy, JwtValidator, unverified_claims

KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = {"keys": [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key())), "kid": "k"}]}
POLICY = JwtPolicy(issuers=("https://idp.example",), audiences=("app",))


def signed(**claims) -> str:
    """Signed over the raw payload, as an attacker (or a broken IdP) would send it."""
    now = int(time.time())
    body = {"iss": "https://idp.example", "sub": "s", "aud": "app", "iat": now, "exp": now + 60, **claims}
    payload = json.dumps(body).encode()  # ensure_ascii: "\ud800" travels as the escape \\ud800
    return jwt.api_jws.encode(payload, KEY, algorithm="ES256", headers={"kid": "k"})


@pytest.mark.parametrize("claim", ["sub", "jti", "email", "nested"])
async def test_a_verified_token_with_a_lone_surrogate_is_malformed(claim):
    value = {"a": ["\ud800"]} if claim == "nested" else "x\ud800"
    with pytest.raises(InvalidJwt) as caught:
        await JwtValidator().validate(signed(**{claim: value}), POLICY, StaticKeys(KeySet.from_jwks(JWKS)))
    assert "Unicode" in caught.value.reason


def test_unverified_claims_with_a_lone_surrogate_are_malformed():
    with pytest.raises(InvalidJwt):
        unverified_claims(signed(iss="\udfff"))


async def test_valid_unicode_is_accepted():
    claims = await JwtValidator().validate(signed(sub="zoë 😀"), POLICY, StaticKeys(KeySet.from_jwks(JWKS)))
    assert claims["sub"] == "zoë 😀"

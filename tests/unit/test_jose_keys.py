"""Trusted key sets (libs/inboundlib/jose/keys.py): which algorithms each key may verify."""
from __future__ import annotations

import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from inboundlib import pki
from inboundlib.jose.keys import KeySet
from services.demo_idp import DemoIdp


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    return DemoIdp(tmp_path_factory.mktemp("ca"))


def jwk_of(public_key, alg: str, **extra) -> dict:
    return {**json.loads(jwt.get_algorithm_by_name(alg).to_jwk(public_key)), **extra}


def test_algorithms_follow_the_key_type(idp):
    by_kid = {k.kid: k.algorithms for k in KeySet.from_jwks({"keys": [
        {k: v for k, v in key.jwk.items() if k != "alg"} for key in idp.keys.values()]}).keys}
    assert by_kid[idp.keys["RS256"].kid] == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert by_kid[idp.keys["ES256"].kid] == {"ES256"}
    assert by_kid[idp.keys["EdDSA"].kid] == {"EdDSA"}


def test_an_ec_key_verifies_only_the_algorithm_of_its_curve():
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    (key,) = KeySet.from_jwks({"keys": [jwk_of(p384, "ES384", kid="p384")]}).keys
    assert key.algorithms == {"ES384"}
    assert KeySet.from_jwks({"keys": [{**jwk_of(p384, "ES384", kid="p384"), "alg": "ES256"}]}).keys == ()


def test_a_jwk_naming_its_alg_is_held_to_it(idp):
    (key,) = KeySet.from_jwks({"keys": [idp.keys["RS256"].jwk]}).keys
    assert key.algorithms == {"RS256"}


@pytest.mark.parametrize("extra", [{"use": "enc"}, {"key_ops": ["encrypt"]}, {"alg": "HS256"}, {"alg": "none"},
                                   {"kid": 7}, {"alg": ["RS256"]}, {"alg": {"RS256": 1}}, {"key_ops": "verify"}])
def test_keys_not_for_verification_are_skipped(idp, extra):
    assert KeySet.from_jwks({"keys": [{**idp.keys["RS256"].jwk, **extra}]}).keys == ()


def test_symmetric_and_small_keys_are_skipped():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    jwks = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}, jwk_of(small, "RS256", kid="small"), {"kty": "XYZ"}, "junk"]}
    assert KeySet.from_jwks(jwks).keys == ()


def test_malformed_sets_raise():
    for bad in ("not json", {"keys": "x"}, [], {"nokeys": []}):
        with pytest.raises(ValueError):
            KeySet.from_jwks(bad)


def test_secret_keys_are_hmac_only_and_long_enough():
    (key,) = KeySet.from_secret(b"k" * 48, kid="k1").keys
    assert key.kty == "oct" and key.algorithms == {"HS256", "HS384"} and key.kid == "k1"
    with pytest.raises(ValueError):
        KeySet.from_secret(b"short")
    assert "kkkk" not in repr(KeySet.from_secret(b"k" * 48))


def test_pinned_keeps_only_that_kid(idp):
    full = KeySet.from_jwks(idp.jwks())
    kid = idp.keys["ES256"].kid
    assert [k.kid for k in full.pinned(kid).keys] == [kid]
    assert full.find(idp.keys["RS256"].kid, "RS256") and not full.pinned(kid).find(idp.keys["RS256"].kid, "RS256")


def test_find_matches_kid_as_a_plain_string(idp):
    full = KeySet.from_jwks(idp.jwks())
    kid = idp.keys["RS256"].kid
    assert full.find(kid, "RS256") and not full.find(kid.upper(), "RS256") and not full.find(kid + " ", "RS256")
    assert [k.kid for k in full.find(None, "EdDSA")] == [idp.keys["EdDSA"].kid]


def test_certificate_keys_match_any_kid(tmp_path):
    files = pki.DevCA(tmp_path).issue("partner", dns_names=("partner.example",))
    key_set = KeySet.from_certificate_pem(files.cert.read_text())
    (key,) = key_set.keys
    assert key.kid is None and key.algorithms == {"ES256"} and key_set.find("anything", "ES256")
    with pytest.raises(ValueError):
        KeySet.from_certificate_pem("-----BEGIN CERTIFICATE-----\nbad\n-----END CERTIFICATE-----\n")


def _rsa_jwk(e: int, n: int, kid: str) -> dict:
    from jwt.utils import to_base64url_uint

    return {"kty": "RSA", "kid": kid, "e": to_base64url_uint(e).decode(), "n": to_base64url_uint(n).decode()}


def test_rsa_keys_too_costly_to_verify_with_are_skipped():
    # Each verify runs on the event loop: a 3000-bit exponent costs ~40x e = 65537.
    n = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers().n
    assert len(KeySet.from_jwks({"keys": [_rsa_jwk(65537, n, "ok")]})) == 1
    assert KeySet.from_jwks({"keys": [_rsa_jwk((1 << 2000) + 1, n, "huge-e")]}).keys == ()
    assert KeySet.from_jwks({"keys": [_rsa_jwk(65537, (1 << 9000) + 1, "huge-n")]}).keys == ()


def test_parsing_a_jwks_stops_at_the_key_limit(monkeypatch):
    from inboundlib.jose import keys as keys_module

    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwks = {"keys": [jwk_of(p256, "ES256", kid=f"k{i}") for i in range(keys_module.MAX_KEYS + 50)]}
    parsed = []
    real = keys_module._from_jwk
    monkeypatch.setattr(keys_module, "_from_jwk", lambda jwk, i: parsed.append(i) or real(jwk, i))
    assert len(KeySet.from_jwks(jwks)) == keys_module.MAX_KEYS
    assert len(parsed) == keys_module.MAX_KEYS  # the rest of a huge set is never parsed (EC point checks)

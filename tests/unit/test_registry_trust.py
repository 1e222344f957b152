"""The rules on trust material an operator registers (services/client_registry/trust.py),
one refusal each, and the key-encryption seal's binding to what it seals (inboundlib.kek)."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from inboundlib.kek import KeyEncryptor, client_secret_label, integration_secret_label
from services.client_registry.api import InvalidArgument, TokenExchangePolicy
from services.client_registry.trust import (
    TOKEN_TYPE_ID_TOKEN,
    check_auth_signing_alg,
    check_certificate_pem,
    check_client_keys,
    check_exchange_policy,
    check_https_url,
    check_jwks,
)

EC_PRIVATE = ec.generate_private_key(ec.SECP256R1())


def jwks(*keys: dict) -> str:
    return json.dumps({"keys": list(keys)})


PUBLIC = ECAlgorithm.to_jwk(EC_PRIVATE.public_key(), as_dict=True)


def test_a_public_jwks_is_accepted_as_given():
    text = jwks(PUBLIC, RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key(), as_dict=True))
    assert check_jwks("jwks", text) == text


@pytest.mark.parametrize("text,why", [
    ("not json", "not JSON"),
    (json.dumps({"keys": []}), "at least one"),
    (json.dumps([PUBLIC]), "JWK Set"),
    (jwks(ECAlgorithm.to_jwk(EC_PRIVATE, as_dict=True)), "private"),  # the private key pasted by mistake
    (jwks({"kty": "oct", "k": "c2VjcmV0"}), "symmetric"),
    (jwks({**PUBLIC, "x": "AAAA"}), "usable"),
    (jwks(*[PUBLIC] * 101), "more than"),
    (jwks("a string"), "object"),
    # What the JWT validator would skip is refused here, not stored to fail at the first assertion.
    (jwks({**PUBLIC, "alg": ["ES256"]}), "usable"),  # a list: TypeError out of PyJWK before
    (jwks({**PUBLIC, "alg": "ES384"}), "usable"),  # not the key's curve
    (jwks({**PUBLIC, "use": "enc"}), "usable"),
    (jwks({**PUBLIC, "key_ops": ["encrypt"]}), "usable"),
    (jwks({**PUBLIC, "kid": 7}), "usable"),
    (jwks(RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 1024).public_key(), as_dict=True)), "usable"),
    ('{"keys": ' + "[" * 60_000, "not JSON"),  # RecursionError out of json before
])
def test_a_bad_jwks_is_refused(text, why):
    with pytest.raises(InvalidArgument, match=why):
        check_jwks("jwks", text)


def certificate(key) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "partner")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_certificate_needs_a_key_the_validator_accepts():
    good = certificate(EC_PRIVATE)
    assert check_certificate_pem("certificate_pem", good) == good
    # RSA-1024: KeySet.from_certificate_pem refuses it (ValueError in jwt_bearer's grant before).
    with pytest.raises(InvalidArgument, match="not accepted"):
        check_certificate_pem("certificate_pem", certificate(rsa.generate_private_key(65537, 1024)))
    with pytest.raises(InvalidArgument, match="PEM"):
        check_certificate_pem("certificate_pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


@pytest.mark.parametrize("url,why", [
    ("http://keys.example/jwks", "https"),
    ("https:///jwks", "https"),
    ("https://user:pw@keys.example/jwks", "user"),
    ("https://keys.example/jwks#x", "fragment"),
    ("https://keys.example/a b", "URL"),
    ("https://keys.example/" + "a" * 2000, "URL"),
])
def test_a_key_url_must_be_plain_https(url, why):
    with pytest.raises(InvalidArgument, match=why):
        check_https_url("jwks_uri", url)
    assert check_https_url("jwks_uri", "https://keys.example/.well-known/jwks.json")


def test_the_signing_alg_belongs_to_the_method():
    assert check_auth_signing_alg("client_secret_jwt", "HS256") == "HS256"
    assert check_auth_signing_alg("private_key_jwt", "PS256") == "PS256"
    assert check_auth_signing_alg("private_key_jwt", "") == ""
    # HS384/HS512 need 48/64-byte keys (RFC 7518 §3.2); a registry secret has 32 bytes of entropy.
    for method, alg in (("client_secret_jwt", "RS256"), ("client_secret_jwt", "HS384"), ("client_secret_jwt", "HS512"),
                        ("private_key_jwt", "HS256"), ("private_key_jwt", "none"), ("client_secret_basic", "HS256")):
        with pytest.raises(InvalidArgument):
            check_auth_signing_alg(method, alg)


def test_keys_only_for_private_key_jwt_and_exactly_one_source():
    assert check_client_keys("private_key_jwt", "", "https://k.example/jwks") == ("", "https://k.example/jwks")
    for method, keys in (("private_key_jwt", ("", "")), ("private_key_jwt", (jwks(PUBLIC), "https://k.example/j")),
                         ("client_secret_basic", (jwks(PUBLIC), ""))):
        with pytest.raises(InvalidArgument):
            check_client_keys(method, *keys)


def test_an_exchange_policy_is_checked():
    policy = TokenExchangePolicy(subject_token_types=(TOKEN_TYPE_ID_TOKEN,), scopes=("a",), providers=("okta",))
    assert check_exchange_policy(policy, ["a", "b"], public=False) == policy
    assert check_exchange_policy(None, [], public=True) is None
    for bad, why in ((TokenExchangePolicy(subject_token_types=("urn:ietf:params:oauth:token-type:saml2",)), "types"),
                     (TokenExchangePolicy(scopes=("c",)), "does not have"),
                     (TokenExchangePolicy(providers=("has space",)), "providers"),
                     (TokenExchangePolicy(audiences=("",)), "audiences")):
        with pytest.raises(InvalidArgument, match=why):
            check_exchange_policy(bad, ["a", "b"], public=False)


def test_a_public_client_cannot_have_a_token_exchange_policy():
    with pytest.raises(InvalidArgument, match="public client"):
        check_exchange_policy(TokenExchangePolicy(scopes=("a",)), ["a"], public=True)


def test_a_sealed_secret_opens_only_for_its_own_label_and_under_any_listed_kek():
    old, new = os.urandom(32), os.urandom(32)
    sealed = KeyEncryptor(old).encrypt(client_secret_label("app"), b"s3cret")
    assert KeyEncryptor(new, old).decrypt(client_secret_label("app"), sealed) == b"s3cret"
    for label in (client_secret_label("other"), integration_secret_label("app")):
        with pytest.raises(InvalidTag):
            KeyEncryptor(old).decrypt(label, sealed)

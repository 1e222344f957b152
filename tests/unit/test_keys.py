"""Signing keys: encryption at rest, RFC 7638 kids, and which keys sign and are published."""
from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag

from services.token_issuer.keys import (
    ALGORITHMS,
    KeyEncryptor,
    KeyRing,
    SigningKey,
    new_key_record,
    open_key_record,
    public_jwk,
)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_key_survives_encryption_and_its_kid_is_the_jwk_thumbprint(alg):
    encryptor = KeyEncryptor(os.urandom(32))
    record = new_key_record(alg, encryptor)
    assert b"PRIVATE" not in record.encrypted_private_key
    key = open_key_record(record, encryptor)
    assert key.kid == record.kid == public_jwk(alg, key.private_key)["kid"]
    assert "d" not in key.jwk and key.jwk["alg"] == alg and key.jwk["use"] == "sig"


def test_rfc7638_thumbprint_example():
    """The RSA example of RFC 7638 §3.1 gives the kid the RFC prints."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4"
         "n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0"
         "zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-"
         "csFCur-kEgU8awapJzKnqDKgw")
    n_int = int.from_bytes(base64.urlsafe_b64decode(n + "=="), "big")

    class Fake:
        def public_key(self):
            return RSAPublicNumbers(65537, n_int).public_key()

    assert public_jwk("RS256", Fake())["kid"] == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_blob_moved_to_another_kid_or_opened_with_another_key_fails():
    encryptor = KeyEncryptor(os.urandom(32))
    record = new_key_record("ES256", encryptor)
    with pytest.raises(InvalidTag):
        encryptor.decrypt("another-kid", record.encrypted_private_key)
    with pytest.raises(InvalidTag):
        KeyEncryptor(os.urandom(32)).decrypt(record.kid, record.encrypted_private_key)


def key(kid: str, activates_at: int) -> SigningKey:
    return SigningKey(kid=kid, alg="ES256", private_key=None, jwk={"kid": kid}, created_at=0,
                      activates_at=activates_at)


def test_rotation_publishes_early_signs_late_and_keeps_retired_keys_until_their_tokens_expire():
    ring = KeyRing([key("old", 0), key("new", 100), key("future", 10_000)])
    lifetime = 1000
    # Before "new" activates: "old" signs, and every key is already published.
    assert ring.signing_key(50).kid == "old"
    assert [k.kid for k in ring.published(lifetime, now=50)] == ["old", "new", "future"]
    # "new" signs from its activation; "old" stays published while its tokens can live.
    assert ring.signing_key(100).kid == "new"
    assert [k.kid for k in ring.published(lifetime, now=100 + lifetime - 1)] == ["old", "new", "future"]
    assert [k.kid for k in ring.published(lifetime, now=100 + lifetime + 1)] == ["new", "future"]
    # Once "future" activates, "new" retires the same way.
    assert ring.signing_key(10_000).kid == "future"
    assert [k.kid for k in ring.published(lifetime, now=10_000 + lifetime + 1)] == ["future"]


def test_no_key_signs_before_the_first_activates():
    assert KeyRing([key("a", 100)]).signing_key(99) is None
    assert KeyRing([]).signing_key() is None

"""TokenChecker's JWT rules in isolation, with a real key and in-memory fakes:
each rule is the only thing that can make these tokens inactive."""
from __future__ import annotations

import os
import time

import jwt

from services.token_issuer.introspection import TokenChecker
from services.token_issuer.keys import KeyEncryptor, KeyRing, new_key_record, open_key_record
from services.token_issuer.revocations import RevocationSet
from tests.fakes import FakeClients, client_record

ISSUER = "https://issuer.example"
ENC = KeyEncryptor(os.urandom(32))
KEY = open_key_record(new_key_record("ES256", ENC), ENC)
RING = KeyRing([KEY])


def checker(*clients) -> TokenChecker:
    return TokenChecker(issuer=ISSUER, keyring=lambda: RING, revocations=RevocationSet(),
                        clients=FakeClients(*(clients or (client_record(scopes=("api.read",)),))), registry=None)


def mint(headers=None, **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "app", "aud": "api", "client_id": "app", "scope": "api.read",
            "jti": os.urandom(8).hex(), "iat": now, "exp": now + 600, **claims}
    return jwt.encode(body, KEY.private_key, algorithm="ES256", headers={"kid": KEY.kid, "typ": "at+jwt",
                                                                          **(headers or {})})


async def test_control_a_well_formed_token_is_active():
    assert (await checker().introspect(mint(), None, internal=True)).active


async def test_a_jwt_signed_by_our_key_without_typ_at_jwt_is_inactive():
    """RFC 9068 §4: an ID token or any other JWT we signed is not an access token."""
    for typ in ("JWT", "", "application/at+jwt-not"):
        assert not (await checker().introspect(mint(headers={"typ": typ}), None, internal=True)).active


async def test_a_jwt_signed_by_our_key_with_another_issuer_is_inactive():
    token = mint(iss="https://other.example")
    assert not (await checker().introspect(token, None, internal=True)).active


async def test_a_disabled_owner_makes_its_token_inactive_even_without_a_revocation():
    """Defence in depth: the cut-off revocation may not have reached this replica yet
    (or a token was issued from a stale client cache after it)."""
    token = mint()
    assert not (await checker(client_record(active=False)).introspect(token, None, internal=True)).active


async def test_tokens_that_fail_verification_are_not_cached():
    c = checker()
    junk = [mint(iss="https://other.example"), mint(headers={"typ": "JWT"}), "a.b.c", mint()[:-4] + "AAAA"]
    for token in junk:
        assert not (await c.introspect(token, None, internal=True)).active
    assert c._verified == {}  # only verified tokens take cache room (a flood of junk cannot evict real ones)
    good = mint()
    assert (await c.introspect(good, None, internal=True)).active
    assert len(c._verified) == 1

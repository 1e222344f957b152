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
    UnreadableKey,
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


def test_the_first_key_encryption_key_encrypts_and_every_one_decrypts():
    old, new = os.urandom(32), os.urandom(32)
    under_old = new_key_record("ES256", KeyEncryptor(old))
    both = KeyEncryptor(new, old)
    record = new_key_record("ES256", both)
    assert KeyEncryptor(new).decrypt(record.kid, record.encrypted_private_key)  # the first one encrypted
    with pytest.raises(InvalidTag):
        KeyEncryptor(old).decrypt(record.kid, record.encrypted_private_key)
    assert both.decrypt_with_index(record.kid, record.encrypted_private_key)[1] == 0
    assert both.decrypt_with_index(under_old.kid, under_old.encrypted_private_key)[1] == 1
    assert open_key_record(under_old, both).kid == under_old.kid
    with pytest.raises(InvalidTag):
        KeyEncryptor(new).decrypt(under_old.kid, under_old.encrypted_private_key)


def test_a_stored_key_that_does_not_decrypt_or_parse_or_match_its_kid_is_unreadable():
    from dataclasses import replace

    encryptor = KeyEncryptor(os.urandom(32))
    good = new_key_record("ES256", encryptor)
    for bad in (replace(good, encrypted_private_key=b"garbage"),
                replace(good, encrypted_private_key=encryptor.encrypt(good.kid, b"not a PEM key")),
                replace(good, alg="RS256"),  # an EC key stored as RS256
                replace(new_key_record("ES256", encryptor), kid=good.kid,  # another key under this kid
                        encrypted_private_key=_reencrypt(encryptor, new_key_record("ES256", encryptor), good.kid))):
        with pytest.raises(UnreadableKey):
            open_key_record(bad, encryptor)
    assert open_key_record(good, encryptor).kid == good.kid


def _reencrypt(encryptor: KeyEncryptor, record, kid: str) -> bytes:
    return encryptor.encrypt(kid, encryptor.decrypt(record.kid, record.encrypted_private_key))


async def test_the_issuer_skips_an_unreadable_stored_key_and_counts_it():
    from dataclasses import replace

    from prometheus_client import REGISTRY

    from services.token_issuer.issuer import TokenIssuer
    from tests.fakes import FakeSigningKeys

    encryptor = KeyEncryptor(os.urandom(32))
    good = new_key_record("ES256", encryptor, activates_at=1)
    garbage = replace(new_key_record("ES256", encryptor), encrypted_private_key=os.urandom(80))  # newest
    issuer = TokenIssuer(FakeSigningKeys(good, garbage), encryptor, issuer="i", default_audience="a")
    await issuer.start()
    assert issuer.keyring.signing_key("ES256").kid == good.kid
    assert list(issuer.unreadable) == [garbage.kid]
    assert REGISTRY.get_sample_value("inbound_signing_keys_unreadable") == 1


async def test_the_issuer_refuses_to_start_when_no_active_key_opens():
    from inboundlib.config import ConfigError
    from services.token_issuer.issuer import TokenIssuer
    from tests.fakes import FakeSigningKeys

    stored = new_key_record("ES256", KeyEncryptor(os.urandom(32)))
    issuer = TokenIssuer(FakeSigningKeys(stored), KeyEncryptor(os.urandom(32)), issuer="i", default_audience="a")
    with pytest.raises(ConfigError, match="no active signing key can be read"):
        await issuer.start()


def key(kid: str, activates_at: int, alg: str = "ES256") -> SigningKey:
    return SigningKey(kid=kid, alg=alg, private_key=None, jwk={"kid": kid}, created_at=0,
                      activates_at=activates_at)


def test_rotation_publishes_early_signs_late_and_keeps_retired_keys_until_their_tokens_expire():
    ring = KeyRing([key("old", 0), key("new", 100), key("future", 10_000)])
    lifetime = 1000
    # Before "new" activates: "old" signs, and every key is already published.
    assert ring.signing_key("ES256", 50).kid == "old"
    assert [k.kid for k in ring.published(lifetime, now=50)] == ["old", "new", "future"]
    # "new" signs from its activation; "old" stays published while its tokens can live.
    assert ring.signing_key("ES256", 100).kid == "new"
    assert [k.kid for k in ring.published(lifetime, now=100 + lifetime - 1)] == ["old", "new", "future"]
    assert [k.kid for k in ring.published(lifetime, now=100 + lifetime + 1)] == ["new", "future"]
    # Once "future" activates, "new" retires the same way.
    assert ring.signing_key("ES256", 10_000).kid == "future"
    assert [k.kid for k in ring.published(lifetime, now=10_000 + lifetime + 1)] == ["future"]


def test_no_key_signs_before_the_first_activates():
    assert KeyRing([key("a", 100)]).signing_key("ES256", 99) is None
    assert KeyRing([]).signing_key("ES256") is None


def test_one_key_signs_per_algorithm_and_a_rotation_of_one_leaves_the_other_signing():
    ring = KeyRing([key("es-1", 0), key("rs-1", 0, "RS256"), key("rs-2", 100, "RS256"), key("es-2", 200)])
    assert ring.signing_key("ES256", 50).kid == "es-1" and ring.signing_key("RS256", 50).kid == "rs-1"
    # rs-2 is the newest key of all at 150: it signs RS256 only; es-1 still signs ES256.
    assert ring.signing_key("ES256", 150).kid == "es-1" and ring.signing_key("RS256", 150).kid == "rs-2"
    assert {alg: k.kid for alg, k in ring.signing_keys(150).items()} == {"ES256": "es-1", "RS256": "rs-2"}
    assert ring.signing_key("ES256", 250).kid == "es-2" and ring.signing_key("RS256", 250).kid == "rs-2"
    assert ring.signing_key("EdDSA", 250) is None


def test_a_retired_key_is_published_while_its_tokens_live_whatever_the_other_algorithm_does():
    lifetime = 1000
    ring = KeyRing([key("es-old", 0), key("rs", 0, "RS256"), key("rs-new", 50, "RS256"), key("es-new", 2000)])
    # rs retired at 50 (by rs-new): published until 50 + lifetime; es-old retires only at 2000, by es-new.
    assert [k.kid for k in ring.published(lifetime, now=50 + lifetime - 1)] == ["es-old", "rs", "rs-new", "es-new"]
    assert [k.kid for k in ring.published(lifetime, now=50 + lifetime + 1)] == ["es-old", "rs-new", "es-new"]
    # A newer key of ANOTHER algorithm retires nothing: es-old is still the ES256 signer at 1999.
    assert "es-old" in [k.kid for k in ring.published(lifetime, now=1999)]
    assert [k.kid for k in ring.published(lifetime, now=2000 + lifetime + 1)] == ["rs-new", "es-new"]


async def test_the_issuer_creates_one_key_per_algorithm_it_signs_with_and_rotates_each_alone():
    from services.token_issuer.issuer import TokenIssuer
    from tests.fakes import FakeSigningKeys

    encryptor = KeyEncryptor(os.urandom(32))
    store = FakeSigningKeys()
    issuer = TokenIssuer(store, encryptor, issuer="i", default_audience="a")  # ES256 access, RS256 ID tokens
    await issuer.start()
    assert sorted(r.alg for r in store.keys) == ["ES256", "RS256"]
    await TokenIssuer(store, encryptor, issuer="i", default_audience="a").start()  # a second replica
    assert len(store.keys) == 2
    signing = {k.alg: k.kid for k in await issuer.list_keys() if k.signing}
    assert signing.keys() == {"ES256", "RS256"}
    rotated = await issuer.rotate_key("RS256", 0)
    after = {k.alg: k.kid for k in await issuer.list_keys() if k.signing}
    assert after == {"ES256": signing["ES256"], "RS256": rotated.kid}
    rotated = await issuer.rotate_key("", 0)  # the access tokens' algorithm by default
    assert {k.alg: k.kid for k in await issuer.list_keys() if k.signing} == {"ES256": rotated.kid,
                                                                             "RS256": after["RS256"]}
    # Same algorithm for both: one key.
    one = FakeSigningKeys()
    await TokenIssuer(one, encryptor, issuer="i", default_audience="a", id_token_alg="ES256").start()
    assert [r.alg for r in one.keys] == ["ES256"]


async def test_a_first_key_of_a_new_algorithm_never_becomes_an_older_replicas_signing_key():
    """A rolling upgrade: the first new replica makes the RS256 key for ID tokens while replicas
    of the version before still run. Those sign with the newest active key of ANY algorithm:
    the new key must not be it, or their access tokens turn RS256 mid-upgrade."""
    import time

    from services.token_issuer.issuer import TokenIssuer
    from tests.fakes import FakeSigningKeys

    encryptor = KeyEncryptor(os.urandom(32))
    existing = new_key_record("ES256", encryptor, activates_at=int(time.time()) - 86400)
    store = FakeSigningKeys(existing)
    issuer = TokenIssuer(store, encryptor, issuer="i", default_audience="a")  # ES256 access, RS256 ID tokens
    await issuer.start()
    [made] = [r for r in store.keys if r.alg == "RS256"]
    # This version signs ID tokens with the new key at once, access tokens with the ES256 key still.
    assert issuer.keyring.signing_key("RS256").kid == made.kid
    assert issuer.keyring.signing_key("ES256").kid == existing.kid
    assert made.kid in {k["kid"] for k in (await issuer.jwks())["keys"]}
    # The version before (74f7054) signed with KeyRing's newest active key, whatever its algorithm.
    ring = KeyRing([open_key_record(r, encryptor) for r in store.keys])
    assert [k for k in ring.keys if k.activates_at <= time.time()][-1].kid == existing.kid


async def test_the_issuer_is_not_ready_while_the_registry_declines_a_first_key_of_its_algorithm():
    """A registry replica from before one key per algorithm (a rolling upgrade) declines the
    RS256 key because an ES256 one exists: the issuer must not start without an ID-token key
    (its start is retried until it gets one), nor sign on as if it had one."""
    from services.token_issuer.issuer import TokenIssuer
    from tests.fakes import FakeSigningKeys

    class OlderRegistry(FakeSigningKeys):
        async def add_signing_key(self, key, only_if_none: bool) -> bool:
            if only_if_none and self.keys:  # "only if there is no key at all", as before
                return False
            return await super().add_signing_key(key, only_if_none)

    encryptor = KeyEncryptor(os.urandom(32))
    store = OlderRegistry(new_key_record("ES256", encryptor))
    with pytest.raises(RuntimeError, match="no RS256 signing key"):
        await TokenIssuer(store, encryptor, issuer="i", default_audience="a").start()
    await TokenIssuer(FakeSigningKeys(*store.keys), encryptor, issuer="i", default_audience="a").start()


def test_key_encryption_keys_come_from_a_file_a_list_or_the_older_single_setting(tmp_path):
    import base64

    from inboundlib.config import ConfigError, Env
    from inboundlib.kek import key_encryption_keys

    new, old = os.urandom(32), os.urandom(32)
    b64 = [base64.b64encode(k).decode() for k in (new, old)]
    keys_file = tmp_path / "keks"
    keys_file.write_text(f"# the first encrypts\n{b64[0]}\n\n{b64[1]}\n")
    assert key_encryption_keys(Env({"INBOUND_KEY_ENCRYPTION_KEYS_FILE": str(keys_file)})) == (new, old)
    assert key_encryption_keys(Env({"INBOUND_KEY_ENCRYPTION_KEYS": f"{b64[0]}, {b64[1]}"})) == (new, old)
    assert key_encryption_keys(Env({"INBOUND_KEY_ENCRYPTION_KEY": b64[1]})) == (old,)
    refused = [
        ({}, "set exactly one of"),
        ({"INBOUND_KEY_ENCRYPTION_KEY": b64[0], "INBOUND_KEY_ENCRYPTION_KEYS": b64[1]}, "set exactly one of"),
        ({"INBOUND_KEY_ENCRYPTION_KEYS": f"{b64[0]},{b64[1][:-8]}"}, "INBOUND_KEY_ENCRYPTION_KEYS: key 2 must"),
        ({"INBOUND_KEY_ENCRYPTION_KEYS": " , "}, "holds no key"),
        ({"INBOUND_KEY_ENCRYPTION_KEYS_FILE": str(tmp_path / "missing")}, "cannot read"),
    ]
    for environ, message in refused:
        with pytest.raises(ConfigError, match=message) as caught:
            key_encryption_keys(Env(environ))
        assert b64[0] not in str(caught.value) and b64[1][:-8] not in str(caught.value)


def test_the_issuer_settings_never_show_a_key_encryption_key():
    """A Settings object in a log line or a traceback's locals shows no key material."""
    import base64

    from inboundlib.config import Env
    from services.token_issuer.assembly import Settings

    kek = os.urandom(32)
    settings = Settings.from_env(Env({"INBOUND_KEY_ENCRYPTION_KEYS": base64.b64encode(kek).decode()}))
    assert settings.key_encryption_keys == (kek,)
    assert repr(kek) not in repr(settings) and "key_encryption_keys" not in repr(settings)


@pytest.mark.parametrize("service", ["client_registry", "audit"])
def test_database_settings_never_show_a_database_password(service):
    import importlib

    from inboundlib.config import Env

    settings = importlib.import_module(f"services.{service}.assembly").Settings.from_env(Env({
        "DATABASE_URL": "postgresql://runtime:pw-runtime@db/inbound",
        "INBOUND_MIGRATION_DATABASE_URL": "postgresql://owner:pw-owner@db/inbound"}))
    assert settings.database_url.endswith("@db/inbound")
    assert "pw-" not in repr(settings)


async def test_rewrap_reencrypts_under_the_first_key_and_rereads_a_key_another_rewrap_replaced():
    from dataclasses import replace

    from services.token_issuer.issuer import TokenIssuer
    from tests.fakes import FakeSigningKeys

    old, new = os.urandom(32), os.urandom(32)
    under_old = [new_key_record("ES256", KeyEncryptor(old)) for _ in range(2)]
    under_new = new_key_record("ES256", KeyEncryptor(new))
    garbage = replace(new_key_record("ES256", KeyEncryptor(old)), encrypted_private_key=os.urandom(80))

    class RacedStore(FakeSigningKeys):
        """Another replica rewraps the first key between this one's read and its swap."""
        raced = False

        async def rewrap_signing_key(self, kid, expected, encrypted_private_key):
            if not self.raced:
                self.raced = True
                other = KeyEncryptor(new).encrypt(kid, KeyEncryptor(old).decrypt(kid, expected))
                assert await super().rewrap_signing_key(kid, expected, other)
            return await super().rewrap_signing_key(kid, expected, encrypted_private_key)

    store = RacedStore(*under_old, under_new, garbage)
    issuer = TokenIssuer(store, KeyEncryptor(new, old), issuer="i", default_audience="a")
    report = await issuer.rewrap_keys()
    assert report.rewrapped == (under_old[1].kid,)  # the first was rewrapped by the other replica
    assert sorted(report.current) == sorted([under_old[0].kid, under_new.kid])
    assert report.unreadable == (garbage.kid,)
    assert len(store.keys) == 4
    for record in store.keys:
        if record.kid != garbage.kid:
            assert open_key_record(record, KeyEncryptor(new)).kid == record.kid


def test_id_token_algorithms_are_the_ones_keys_exist_for_and_the_setting_is_checked():
    """The edge states INBOUND_ID_TOKEN_ALG without importing crypto code (inboundlib.oauth.oidc);
    token_issuer must be able to make a key of whatever it allows."""
    from inboundlib.config import ConfigError, Env
    from inboundlib.oauth.oidc import ID_TOKEN_ALGORITHMS, id_token_alg
    from services.token_issuer.assembly import Settings

    assert sorted(ID_TOKEN_ALGORITHMS) == sorted(ALGORITHMS)
    kek = {"INBOUND_KEY_ENCRYPTION_KEYS": "A" * 43 + "="}
    settings = Settings.from_env(Env(kek))
    assert (settings.alg, settings.id_token_alg, settings.id_token_lifetime) == ("ES256", "RS256", 3600)
    assert Settings.from_env(Env({**kek, "INBOUND_ID_TOKEN_ALG": "ES256"})).id_token_alg == "ES256"
    assert id_token_alg(Env({})) == "RS256"
    for bad in ({"INBOUND_ID_TOKEN_ALG": "HS256"}, {"INBOUND_ID_TOKEN_LIFETIME": "0"},
                {"INBOUND_ID_TOKEN_LIFETIME": "86401"}):
        with pytest.raises(ConfigError):
            Settings.from_env(Env({**kek, **bad}))

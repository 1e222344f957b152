"""The registry's federation data against the real Postgres and the running registry:
client authentication methods (RFC 7591 §2) and the sealing of client_secret_jwt secrets
under the key-encryption key, the used-jti store (RFC 7523 §3 replay refusal) and its
purge, and migration 0008's backfill of existing clients."""
from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from inbound.registry.v1 import registry_pb2 as pb
from inbound.registry.v1 import registry_pb2_grpc
from inboundlib import db, identity
from inboundlib.config import Env
from inboundlib.kek import KeyEncryptor, client_secret_label, key_encryption_keys
from inboundlib.oauth.client_auth import hash_client_secret
from services import modules
from services.client_registry.api import (
    ClientSpec,
    ClientUpdate,
    InvalidArgument,
    ItemError,
    JtiClaim,
    TokenExchangePolicy,
)
from services.client_registry.client import RegistryClient
from services.client_registry.jtis import JtiRepository
from services.client_registry.trust import TOKEN_TYPE_ID_TOKEN
from tests.support import GRANT_SERVICE, ensure_scopes

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "client_registry" / "migrations"
# jwt_bearer's stand-in until its module row exists: the one-process mode may do what any service may.
JWT_BEARER = identity.service("jwt_bearer" if "jwt_bearer" in modules.TABLE else modules.ALL_IN_ONE)


def public_jwks() -> str:
    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    return json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig"}]})


@pytest.fixture(scope="module")
async def owner(stack):
    conn = await asyncpg.connect(stack.database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
def kek(stack) -> KeyEncryptor:
    """The stack's key-encryption keys, as every service reads them."""
    return KeyEncryptor(*key_encryption_keys(Env({"INBOUND_KEY_ENCRYPTION_KEYS_FILE": str(stack.kek_file())})))


@pytest.fixture(scope="module")
async def as_jwt_bearer(stack):
    channel = stack.channel("client_registry", caller=JWT_BEARER)
    yield RegistryClient(channel)
    await channel.close()


async def stored(owner, client_id: str) -> asyncpg.Record:
    return await owner.fetchrow("SELECT secret_hash, sealed_secret, token_endpoint_auth_method, jwks, jwks_uri"
                                " FROM clients WHERE client_id = $1", client_id)


# --- client authentication methods and sealed secrets --------------------------------------------

async def test_a_client_secret_jwt_secret_is_stored_sealed_never_in_clear(registry, owner, kek, as_jwt_bearer):
    client, secret = await registry.create_client(ClientSpec(name="hmac-app", token_endpoint_auth_method="client_secret_jwt",
                                                             token_endpoint_auth_signing_alg="HS256"))
    assert client.token_endpoint_auth_method == "client_secret_jwt" and secret
    row = await stored(owner, client.client_id)
    sealed = bytes(row["sealed_secret"])
    assert secret.encode() not in sealed and secret not in row["secret_hash"]
    assert row["secret_hash"] == hash_client_secret(secret)
    assert kek.decrypt(client_secret_label(client.client_id), sealed) == secret.encode()
    with pytest.raises(InvalidTag):  # bound to its client: moved to another row, it opens for nobody
        kek.decrypt(client_secret_label("someone-else"), sealed)
    # jwt_bearer gets the sealed blob, batched, b"" for other and unknown clients.
    basic, _ = await registry.create_client(ClientSpec(name="basic-app"))
    assert await as_jwt_bearer.get_client_secrets([client.client_id, basic.client_id, "nobody"]) == [sealed, b"", b""]


async def test_only_jwt_bearer_reads_sealed_secrets(stack, registry):
    for caller in (GRANT_SERVICE, identity.operator("dev"), identity.service("token_issuer")):
        async with stack.channel("client_registry", caller=caller) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await registry_pb2_grpc.ClientsStub(channel).GetClientSecrets(
                    pb.GetClientSecretsRequest(client_ids=["x"]), timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, caller


async def test_other_methods_keep_only_the_hash(registry, owner):
    for method in ("client_secret_basic", "client_secret_post"):
        client, secret = await registry.create_client(ClientSpec(name=method, token_endpoint_auth_method=method))
        row = await stored(owner, client.client_id)
        assert row["sealed_secret"] is None and row["secret_hash"] == hash_client_secret(secret)
        assert row["token_endpoint_auth_method"] == method


async def test_the_default_method_is_none_for_public_and_basic_for_confidential(registry):
    public, secret = await registry.create_client(ClientSpec(
        name="spa", public=True, grant_types=["authorization_code"], redirect_uris=["https://spa.example/cb"]))
    assert public.token_endpoint_auth_method == "none" and secret == ""
    confidential, _ = await registry.create_client(ClientSpec(name="svc"))
    assert confidential.token_endpoint_auth_method == "client_secret_basic"


async def test_private_key_jwt_clients_have_keys_and_no_secret(registry, owner):
    jwks = public_jwks()
    client, secret = await registry.create_client(ClientSpec(
        name="pkjwt", token_endpoint_auth_method="private_key_jwt", jwks=jwks, token_endpoint_auth_signing_alg="ES256"))
    assert secret == "" and client.jwks == jwks and client.token_endpoint_auth_signing_alg == "ES256"
    row = await stored(owner, client.client_id)
    assert row["secret_hash"] is None and row["sealed_secret"] is None
    # By URL instead: naming one source replaces the other.
    moved = await registry.update_client(client.client_id, ClientUpdate(jwks_uri="https://keys.example/jwks.json"))
    assert moved.jwks_uri == "https://keys.example/jwks.json" and moved.jwks == ""
    # Back to a secret: only by a rotation, which answers the new secret once and drops the keys.
    with pytest.raises(InvalidArgument, match="rotate"):
        await registry.update_client(client.client_id, ClientUpdate(token_endpoint_auth_method="client_secret_basic"))
    rotated, new_secret = await registry.rotate_client_secret(client.client_id, "client_secret_basic")
    assert new_secret and rotated.token_endpoint_auth_method == "client_secret_basic"
    assert rotated.jwks == rotated.jwks_uri == rotated.token_endpoint_auth_signing_alg == ""
    assert (await stored(owner, client.client_id))["secret_hash"] == hash_client_secret(new_secret)


async def test_method_changes_seal_and_unseal(registry, owner, kek):
    client, secret = await registry.create_client(ClientSpec(name="mover"))
    # To client_secret_jwt: the registry has only a hash to seal, so a new secret is made by rotation.
    with pytest.raises(InvalidArgument, match="rotate"):
        await registry.update_client(client.client_id, ClientUpdate(token_endpoint_auth_method="client_secret_jwt"))
    assert (await stored(owner, client.client_id))["sealed_secret"] is None
    moved, jwt_secret = await registry.rotate_client_secret(client.client_id, "client_secret_jwt")
    assert moved.token_endpoint_auth_method == "client_secret_jwt" and jwt_secret != secret
    row = await stored(owner, client.client_id)
    assert kek.decrypt(client_secret_label(client.client_id), bytes(row["sealed_secret"])) == jwt_secret.encode()
    # A rotation of a client_secret_jwt client seals the new secret in place of the old.
    _, again = await registry.rotate_client_secret(client.client_id)
    row = await stored(owner, client.client_id)
    assert kek.decrypt(client_secret_label(client.client_id), bytes(row["sealed_secret"])) == again.encode()
    # Away from it: the sealed copy goes; the hash stays (the client keeps its secret for post).
    back = await registry.update_client(client.client_id, ClientUpdate(token_endpoint_auth_method="client_secret_post"))
    row = await stored(owner, client.client_id)
    assert back.token_endpoint_auth_method == "client_secret_post"
    assert row["sealed_secret"] is None and row["secret_hash"] == hash_client_secret(again)
    # To private_key_jwt: keys required, and the secret's hash goes too.
    with pytest.raises(InvalidArgument, match="jwks"):
        await registry.update_client(client.client_id, ClientUpdate(token_endpoint_auth_method="private_key_jwt"))
    await registry.update_client(client.client_id, ClientUpdate(token_endpoint_auth_method="private_key_jwt",
                                                                jwks=public_jwks()))
    assert (await stored(owner, client.client_id))["secret_hash"] is None


@pytest.mark.parametrize("spec,why", [
    (dict(token_endpoint_auth_method="none"), "confidential"),
    (dict(public=True, grant_types=["authorization_code"], redirect_uris=["https://a.example/cb"],
          token_endpoint_auth_method="client_secret_basic"), "public"),
    (dict(token_endpoint_auth_method="tls_client_auth"), "one of"),
    (dict(token_endpoint_auth_method="private_key_jwt"), "exactly one"),
    (dict(token_endpoint_auth_method="private_key_jwt", jwks_uri="http://keys.example/jwks"), "https"),
    (dict(token_endpoint_auth_method="client_secret_basic", jwks_uri="https://keys.example/jwks"), "private_key_jwt"),
    (dict(token_endpoint_auth_method="client_secret_jwt", token_endpoint_auth_signing_alg="RS256"), "unsupported"),
    (dict(token_endpoint_auth_method="client_secret_basic", token_endpoint_auth_signing_alg="HS256"), "signing_alg"),
])
async def test_bad_authentication_settings_are_refused(registry, spec, why):
    with pytest.raises(InvalidArgument, match=why):
        await registry.create_client(ClientSpec(name="bad", **spec))


async def test_a_token_exchange_policy_round_trips_and_is_bounded_by_the_clients_scopes(registry):
    await ensure_scopes(registry, ["api.read", "api.write"])
    policy = TokenExchangePolicy(subject_token_types=(TOKEN_TYPE_ID_TOKEN,), providers=("okta",),
                                 scopes=("api.read",), audiences=("https://api.example",), actor_tokens=True)
    client, _ = await registry.create_client(ClientSpec(name="exchanger", scopes=["api.read", "api.write"],
                                                        token_exchange=policy))
    assert client.token_exchange == policy
    assert (await registry.get_client(client.client_id)).token_exchange == policy
    with pytest.raises(InvalidArgument, match="does not have"):
        await registry.update_client(client.client_id, ClientUpdate(scopes=["api.write"]))  # the policy needs api.read
    cleared = await registry.update_client(client.client_id, ClientUpdate(clear_token_exchange=True))
    assert cleared.token_exchange is None


# --- used jtis -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def jtis(stack):
    """The store on the registry's own database role (its grants are tested too)."""
    pool = await asyncpg.create_pool(stack.db_roles.runtime_url, min_size=1, max_size=4)
    yield JtiRepository(pool)
    await pool.close()


def claim(jti: str, expires_in: int = 300, namespace: str = "client:app") -> JtiClaim:
    return JtiClaim(namespace, jti, int(time.time()) + expires_in)


async def test_a_jti_is_claimed_once(stack):
    async with stack.channel("client_registry", caller=GRANT_SERVICE) as channel:
        store = RegistryClient(channel).jtis
        jti = uuid.uuid4().hex
        assert await store.first_use("client:app", jti, int(time.time()) + 300) is True
        assert await store.first_use("client:app", jti, int(time.time()) + 300) is False
        # Another trust's namespace is another jti.
        assert await store.first_use("integration:other", jti, int(time.time()) + 300) is True
        # A jti the store cannot record is not accepted once-only: refused.
        assert await store.first_use("client:app", "bad\x00jti", int(time.time()) + 300) is False


async def test_a_batch_answers_each_claim(jtis):
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    outcomes = await jtis.claim_jtis([claim(a), claim(b), claim(a), JtiClaim("nowhere:x", "j", 10**9), claim(b)])
    assert outcomes[:3] == [True, True, False] and outcomes[4] is False
    assert isinstance(outcomes[3], ItemError)


async def test_an_expired_jti_is_free_again_and_purged(jtis, owner):
    jti = uuid.uuid4().hex
    assert await jtis.claim_jtis([claim(jti, expires_in=-1)]) == [True]
    assert await jtis.claim_jtis([claim(jti)]) == [True]  # the expired row was free: taken over
    assert await jtis.claim_jtis([claim(jti)]) == [False]  # ...and now lives again
    gone, kept = uuid.uuid4().hex, uuid.uuid4().hex
    await jtis.claim_jtis([claim(f"{gone}-{i}", expires_in=-10) for i in range(5)] + [claim(kept)])
    assert await jtis.purge_expired(batch=2) >= 5
    left = await owner.fetch("SELECT jti FROM used_jtis WHERE jti LIKE $1 OR jti = $2", f"{gone}-%", kept)
    assert [r["jti"] for r in left] == [kept]


# --- migration 0008 ------------------------------------------------------------------------------

@pytest.fixture
async def empty_database(stack):
    name = "inbound_mig8_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{stack.database_url.rpartition('/')[0]}/{name}"
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_migration_0008_backfills_the_methods(empty_database, tmp_path):
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if int(path.name.split("_")[0]) < 8:
            shutil.copy(path, before / path.name)
    pool = await db.create_pool(empty_database, min_size=1, max_size=2)
    try:
        await db.migrate(pool, before)
        await pool.execute("INSERT INTO clients (client_id, name, secret_hash, public, grant_types, scopes,"
                           " redirect_uris) VALUES ('pub', 'p', NULL, true, '{}', '{}', '{}'),"
                           " ('conf', 'c', 'sha256$00', false, '{}', '{}', '{}')")
        assert "0008_client_auth_methods_and_used_jtis.sql" in await db.migrate(pool, MIGRATIONS)
        rows = await pool.fetch("SELECT client_id, token_endpoint_auth_method, sealed_secret FROM clients")
        assert {r["client_id"]: r["token_endpoint_auth_method"] for r in rows} == {
            "pub": "none", "conf": "client_secret_basic"}
        assert all(r["sealed_secret"] is None for r in rows)
    finally:
        await pool.close()

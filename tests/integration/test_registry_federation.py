"""The registry's federation data against the real Postgres and the running registry:
client authentication methods (RFC 7591 §2) and the sealing of client_secret_jwt secrets
under the key-encryption key, the used-jti store (RFC 7523 §3 replay refusal) and its
purge, migration 0008's backfill of existing clients, JWT-bearer integrations (HS256
secrets sealed), OpenID providers, and users as foreign identities name them."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm

from inbound.registry.v1 import registry_pb2 as pb
from inbound.registry.v1 import registry_pb2_grpc
from inboundlib import db, identity
from inboundlib.config import Env
from inboundlib.events import INTEGRATION_CHANGED, PROVIDER_CHANGED
from inboundlib.kek import KeyEncryptor, client_secret_label, integration_secret_label, key_encryption_keys
from inboundlib.oauth.client_auth import hash_client_secret
from services.client_registry.api import (
    AlreadyExists,
    ClaimRule,
    ClientSpec,
    ClientUpdate,
    InvalidArgument,
    ItemError,
    JtiClaim,
    JwtBearerIntegration,
    NotFound,
    OidcProvider,
    TokenExchangePolicy,
    UserSpec,
)
from services.client_registry.client import RegistryClient
from services.client_registry.clients import ClientRepository
from services.client_registry.federated_users import FederatedUserRepository
from services.client_registry.integrations import IntegrationRepository
from services.client_registry.jtis import JtiRepository
from services.client_registry.providers import ProviderRepository
from services.client_registry.trust import TOKEN_TYPE_ID_TOKEN
from tests.support import GRANT_SERVICE, ensure_scopes

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "client_registry" / "migrations"
JWT_BEARER = identity.service("jwt_bearer")


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


async def test_a_public_client_is_refused_a_token_exchange_policy_on_create_and_update(registry):
    public = dict(public=True, grant_types=["authorization_code"], redirect_uris=["https://spa.example/cb"])
    with pytest.raises(InvalidArgument, match="public client"):
        await registry.create_client(ClientSpec(name="spa", **public, token_exchange=TokenExchangePolicy()))
    spa, _ = await registry.create_client(ClientSpec(name="spa", **public))
    with pytest.raises(InvalidArgument, match="public client"):
        await registry.update_client(spa.client_id, ClientUpdate(token_exchange=TokenExchangePolicy()))
    assert (await registry.get_client(spa.client_id)).token_exchange is None


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
    async with stack.channel("client_registry", caller=JWT_BEARER) as channel:
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


async def test_sealed_secrets_are_rewrapped_under_the_first_key_encryption_key(empty_database):
    """KEK rotation (README step 2, inboundctl keys rewrap): client_secret_jwt and HS256 integration
    secrets sealed under the old key are re-sealed under the new one, so the old key can go."""
    old, new = os.urandom(32), os.urandom(32)
    pool = await db.create_pool(empty_database, min_size=1, max_size=2)
    try:
        await db.migrate(pool, MIGRATIONS)
        before = ClientRepository(pool, None, KeyEncryptor(old))
        hmac, secret = await before.create_client(ClientSpec(name="hmac", token_endpoint_auth_method="client_secret_jwt"))
        lost, _ = await before.create_client(ClientSpec(name="lost", token_endpoint_auth_method="client_secret_jwt"))
        await before.create_client(ClientSpec(name="basic"))  # a hash only: nothing sealed
        shared = os.urandom(32)
        hs256 = await IntegrationRepository(pool, None, KeyEncryptor(old)).create_integration(
            integration(hmac.client_id, allow_hs256=True), shared)
        await pool.execute("UPDATE clients SET sealed_secret = $2 WHERE client_id = $1", lost.client_id,
                           os.urandom(60))  # sealed under a key no longer listed

        after = ClientRepository(pool, None, KeyEncryptor(new, old))
        done = await after.rewrap_sealed_secrets()
        assert (done.rewrapped, done.current, done.unreadable) == (2, 0, (client_secret_label(lost.client_id),))
        sealed = await after.get_client_secrets([hmac.client_id])
        assert KeyEncryptor(new).decrypt(client_secret_label(hmac.client_id), sealed[0]) == secret.encode()
        [blob] = await IntegrationRepository(pool, None).get_integration_secrets([hs256.id])
        assert KeyEncryptor(new).decrypt(integration_secret_label(hs256.id), blob) == shared
        again = await after.rewrap_sealed_secrets()
        assert (again.rewrapped, again.current) == (0, 2)
    finally:
        await pool.close()


# --- JWT-bearer integrations -----------------------------------------------------------------------

class RecordingBus:
    """What a repository publishes (the subjects and the changed ids), in order."""

    def __init__(self):
        self.published: list[tuple[str, str, str]] = []

    def publish(self, subject, event):
        self.published.append((subject, event.registry_changed.id, event.registry_changed.change))


@pytest.fixture(scope="module")
async def runtime_pool(stack):
    """The registry's own database role: its grants (assembly.RUNTIME_PRIVILEGES) are tested too."""
    pool = await asyncpg.create_pool(stack.db_roles.runtime_url, min_size=1, max_size=6)
    yield pool
    await pool.close()


@pytest.fixture
def bus():
    return RecordingBus()


@pytest.fixture
def integrations(runtime_pool, kek, bus):
    return IntegrationRepository(runtime_pool, bus, kek)


@pytest.fixture(scope="module")
async def partner(registry):
    await ensure_scopes(registry, ["api.read", "api.write"])
    client, _ = await registry.create_client(ClientSpec(name="partner", grant_types=[GRANT_JWT_BEARER],
                                                        scopes=["api.read"]))
    return client


GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def certificate_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "partner")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now.replace(year=now.year + 1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def integration(client_id: str, **fields) -> JwtBearerIntegration:
    fields.setdefault("name", "int-" + uuid.uuid4().hex[:8])
    fields.setdefault("issuer", "https://partner.example")
    if not any(k in fields for k in ("jwks_uri", "jwks", "certificate_pem", "allow_hs256")):
        fields["jwks_uri"] = "https://partner.example/jwks"
    return JwtBearerIntegration(id="", client_id=client_id, **fields)


async def test_an_integration_round_trips_and_is_found_by_client_and_issuer(registry, partner, integrations, bus):
    rules = (ClaimRule("tenant", "equals", "acme"), ClaimRule("groups", "contains", "api"))
    made = await integrations.create_integration(integration(partner.client_id, issuer="https://idp.acme.example",
                                                             claim_rules=rules, scopes=("api.read",), kid="k1",
                                                             algorithms=("ES256",), user_field="email"))
    assert made.id and made.claim_rules == rules and made.kid == "k1" and made.created_at > 0
    assert bus.published == [(INTEGRATION_CHANGED, made.id, "created")]
    # Through the registry's gRPC service too (an operator's view).
    assert await registry.get_integration(made.id) == made
    assert made in await registry.list_integrations()
    assert await integrations.find_integrations(partner.client_id, "https://idp.acme.example") == [made]
    assert await integrations.find_integrations(partner.client_id, "https://other.example") == []
    moved = await integrations.update_integration(replace_fields(made, certificate_pem=certificate_pem(),
                                                                 jwks_uri="", active=False))
    assert moved.certificate_pem and not moved.jwks_uri and not moved.active
    assert await integrations.delete_integration(made.id) and not await integrations.delete_integration(made.id)
    assert [c for _, _, c in bus.published] == ["created", "updated", "deleted"]


def replace_fields(record, **fields):
    from dataclasses import replace

    return replace(record, **fields)


async def test_an_hs256_secret_is_sealed_and_read_by_jwt_bearer_alone(stack, partner, integrations, owner, kek,
                                                                      as_jwt_bearer):
    secret = b"s" * 16 + uuid.uuid4().bytes + uuid.uuid4().bytes
    made = await integrations.create_integration(integration(partner.client_id, allow_hs256=True,
                                                             algorithms=("HS256",)), secret)
    sealed = bytes(await owner.fetchval("SELECT sealed_secret FROM jwt_bearer_integrations WHERE id = $1", made.id))
    assert secret not in sealed
    assert kek.decrypt(integration_secret_label(made.id), sealed) == secret
    with pytest.raises(InvalidTag):
        kek.decrypt(client_secret_label(made.id), sealed)
    assert await as_jwt_bearer.get_integration_secrets([made.id, "nope"]) == [sealed, b""]
    async with stack.channel("client_registry", caller=identity.operator("dev")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry_pb2_grpc.IntegrationsStub(channel).GetIntegrationSecrets(
                pb.GetIntegrationSecretsRequest(ids=[made.id]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The record never carries it; an update without a secret keeps it, a move to keys drops it.
    kept = await integrations.update_integration(replace_fields(made, name=made.name + "-x"))
    assert await integrations.get_integration_secrets([kept.id]) == [sealed]
    await integrations.update_integration(replace_fields(made, allow_hs256=False, algorithms=(), jwks=public_jwks()))
    assert await owner.fetchval("SELECT sealed_secret FROM jwt_bearer_integrations WHERE id = $1", made.id) is None


@pytest.mark.parametrize("fields,secret,why", [
    (dict(jwks_uri="https://a.example/j", jwks='{"keys": []}'), b"", "exactly one"),
    (dict(jwks_uri="http://a.example/j"), b"", "https"),
    (dict(allow_hs256=True), b"", "exactly one"),  # HS256 allowed, but no secret given
    (dict(jwks_uri="", allow_hs256=False), b"x" * 32, "allow_hs256"),
    (dict(allow_hs256=True, jwks_uri=""), b"short", "32 to 512"),
    (dict(allow_hs256=True, jwks_uri="", algorithms=("RS256",)), b"x" * 32, "unsupported"),
    (dict(algorithms=("HS256",)), b"", "unsupported"),  # HMAC over a public key: never
    (dict(certificate_pem="-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----", jwks_uri=""), b"", "PEM"),
    (dict(subject_kind="robot"), b"", "subject_kind"),
    (dict(user_field="phone"), b"", "user_field"),
    (dict(claim_rules=(ClaimRule("tenant", "matches", "x"),)), b"", "operator"),
    (dict(claim_rules=(ClaimRule("ten ant", "equals", "x"),)), b"", "claim name"),
    (dict(scopes=("api.write",)), b"", "does not have"),
    (dict(max_assertion_lifetime=0), b"", "max_assertion_lifetime"),
    (dict(issuer=""), b"", "issuer"),
])
async def test_bad_integrations_are_refused(partner, integrations, fields, secret, why):
    with pytest.raises(InvalidArgument, match=why):
        await integrations.create_integration(integration(partner.client_id, **fields), secret)


async def test_an_integration_needs_an_existing_client_and_a_unique_name(partner, integrations):
    with pytest.raises(InvalidArgument, match="no such client"):
        await integrations.create_integration(integration("no-such-client"))
    made = await integrations.create_integration(integration(partner.client_id))
    with pytest.raises(AlreadyExists):
        await integrations.create_integration(integration(partner.client_id, name=made.name))
    with pytest.raises(NotFound):
        await integrations.update_integration(replace_fields(made, id=str(uuid.uuid4())))


# --- OpenID providers --------------------------------------------------------------------------------

@pytest.fixture
def providers(runtime_pool, bus):
    return ProviderRepository(runtime_pool, bus)


def provider(**fields) -> OidcProvider:
    fields.setdefault("name", "p-" + uuid.uuid4().hex[:8])
    fields.setdefault("issuer", f"https://{fields['name']}.idp.example/")
    fields.setdefault("discovery_url", "")
    fields.setdefault("audiences", ("api://inbound",))
    return OidcProvider(**fields)


async def test_a_provider_round_trips_with_its_defaults(registry, providers, bus):
    made = await providers.create_provider(provider(provision_users=True, provision_roles=("reader",),
                                                    user_field="email", user_claim="email"))
    assert made.discovery_url == made.issuer.rstrip("/") + "/.well-known/openid-configuration"
    assert made.algorithms == ("RS256",) and made.cache_lifespan == 3600 and made.clock_skew == 300
    assert bus.published == [(PROVIDER_CHANGED, made.name, "created")]
    assert await registry.get_provider(made.name) == made and made in await registry.list_providers()
    changed = await providers.update_provider(replace_fields(made, active=False, algorithms=("RS256", "ES256")))
    assert not changed.active and changed.algorithms == ("RS256", "ES256")
    assert await providers.delete_provider(made.name) and await providers.get_provider(made.name) is None
    assert [c for _, _, c in bus.published] == ["created", "updated", "deleted"]


async def test_provider_names_and_issuers_are_unique(providers):
    made = await providers.create_provider(provider())
    with pytest.raises(AlreadyExists, match="name"):
        await providers.create_provider(provider(name=made.name, issuer="https://else.example"))
    with pytest.raises(AlreadyExists, match="issuer"):
        await providers.create_provider(provider(issuer=made.issuer))
    other = await providers.create_provider(provider())
    with pytest.raises(AlreadyExists, match="issuer"):
        await providers.update_provider(replace_fields(other, issuer=made.issuer))
    with pytest.raises(NotFound):
        await providers.update_provider(provider(name="never-made"))


@pytest.mark.parametrize("fields,why", [
    (dict(name="Bad Name"), "name"),
    (dict(issuer="http://idp.example"), "https"),
    (dict(discovery_url="https://idp.example/x#frag"), "fragment"),
    (dict(audiences=()), "audiences"),
    (dict(algorithms=("HS256",)), "unsupported"),
    (dict(algorithms=()), "algorithm"),
    (dict(cache_lifespan=1), "cache_lifespan"),
    (dict(clock_skew=-1), "clock_skew"),
    # The maxima too: a week-long skew would quietly turn off expiry checks.
    (dict(cache_lifespan=7 * 86_400 + 1), "cache_lifespan"),
    (dict(clock_skew=3601), "clock_skew"),
    (dict(user_claim="a b"), "user_claim"),
    (dict(user_field="phone"), "user_field"),
    (dict(provision_users=True, user_field="id"), "not by id"),
    (dict(provision_roles=("Bad Role",)), "roles"),
    (dict(template="keycloak"), "template"),
    (dict(scopes=("no-such-scope-" + uuid.uuid4().hex[:6],)), "catalog|scope"),
])
async def test_bad_providers_are_refused(providers, fields, why):
    with pytest.raises(InvalidArgument, match=why):
        await providers.create_provider(provider(**fields))


# --- users as foreign identities name them -----------------------------------------------------------

@pytest.fixture
def federated(runtime_pool, bus):
    return FederatedUserRepository(runtime_pool, bus)


async def test_find_user_by_each_field_and_never_a_guess_between_two(registry, federated):
    tag = uuid.uuid4().hex[:8]
    ada = await registry.create_user(UserSpec(username=f"Ada-{tag}", email=f"Ada.{tag}@Example.com"))
    assert await federated.find_user("username", f"ada-{tag}") == ada  # usernames: case-insensitive
    assert await federated.find_user("email", f"ada.{tag}@example.COM") == ada  # emails too
    assert await federated.find_user("id", ada.id) == ada
    assert await federated.find_user("username", "nobody-" + tag) is None
    await registry.create_user(UserSpec(username=f"ada2-{tag}", email=f"ADA.{tag}@example.com"))
    assert await federated.find_user("email", f"ada.{tag}@example.com") is None  # two share it: ambiguous
    with pytest.raises(InvalidArgument):
        await federated.find_user("phone", "1")


async def test_find_users_is_batched_over_grpc(stack, registry):
    tag = uuid.uuid4().hex[:8]
    bob = await registry.create_user(UserSpec(username=f"bob-{tag}", email=f"bob-{tag}@example.com"))
    async with stack.channel("client_registry", caller=JWT_BEARER) as channel:
        users = RegistryClient(channel)
        assert await users.find_users([("email", bob.email), ("username", "x" + tag), ("phone", "1")]) == [
            bob, None, None]
    async with stack.channel("client_registry", caller=GRANT_SERVICE) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await RegistryClient(channel).find_user("id", bob.id)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


class CountingPool:
    """The runtime pool, counting the statements sent."""

    def __init__(self, pool):
        self.pool, self.statements = pool, 0

    def __getattr__(self, name):
        async def send(*args, **kwargs):
            self.statements += 1
            return await getattr(self.pool, name)(*args, **kwargs)
        return send


async def test_find_users_answers_a_batch_as_find_user_in_one_query_a_field(registry, runtime_pool, federated):
    tag = uuid.uuid4().hex[:8]
    users = [await registry.create_user(UserSpec(username=f"Batch{i}-{tag}", email=f"batch{i}-{tag}@example.com"))
             for i in range(10)]
    await registry.create_user(UserSpec(username=f"twin-{tag}", email=f"BATCH0-{tag}@example.com"))  # ambiguous
    keys = [key for u in users for key in (("id", u.id), ("username", u.username.upper()), ("email", u.email.upper()))]
    keys += [("username", "nobody-" + tag), ("email", "no-" + tag + "@example.com"), ("id", "x"), ("phone", "1"),
             ("id", users[1].id)]
    counting = CountingPool(runtime_pool)
    answers = await FederatedUserRepository(counting, None).find_users(keys)
    assert answers == [await federated.find_user(f, v) if f != "phone" else None for f, v in keys]
    assert answers[2] is None and answers[5] == users[1] and answers[-1] == users[1]
    assert counting.statements <= 3  # one a field, not one a key


async def test_provisioning_is_idempotent_and_checks_roles(federated, bus):
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    first, second = await asyncio.gather(federated.provision_user("email", email, ["reader"], "okta"),
                                         federated.provision_user("email", email, ["reader"], "okta"))
    assert first == second and first.email == email and first.username == email and first.roles == ("reader",)
    assert first.password_changed_at == 0  # no password: it signs in only through its provider
    assert await federated.provision_user("email", email.upper(), ["reader"], "okta") == first
    assert [c for _, _, c in bus.published] == ["provisioned"]
    name = "user-" + uuid.uuid4().hex[:8]
    assert (await federated.provision_user("username", name, [], "azure")).username == name
    with pytest.raises(InvalidArgument, match="roles"):
        await federated.provision_user("username", "other-" + name, ["Not A Role"], "azure")
    with pytest.raises(InvalidArgument, match="provisioned by"):
        await federated.provision_user("id", str(uuid.uuid4()), [], "azure")

"""client_registry against a real Postgres and NATS: migrations, the client
record and its rules, change events, keys encrypted at rest."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from inbound.events.v1 import events_pb2
from inboundlib import db
from inboundlib.events import CLIENT_CHANGED
from services.client_registry.api import ClientSpec, ClientUpdate, InvalidArgument, NotFound
from services.client_registry.client import RegistryClient
from tests.support import ISSUER_SERVICE, ensure_scopes, eventually, nats_connect

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "client_registry" / "migrations"


@pytest.fixture
async def empty_database(stack):
    name = "inbound_mig_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = stack.database_url.rpartition("/")[0]
    yield f"{base}/{name}"
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_migrations_apply_once_when_replicas_start_together(empty_database):
    pools = [await db.create_pool(empty_database, min_size=1, max_size=2) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(db.migrate(pool, MIGRATIONS) for pool in pools))
        assert sorted(len(a) for a in applied) == [0, 0, 0, len(list(MIGRATIONS.glob("*.sql")))]
        assert await db.migrate(pools[0], MIGRATIONS) == []  # idempotent
        versions = await pools[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == list(range(1, len(versions) + 1))
    finally:
        for pool in pools:
            await pool.close()


async def test_a_new_client_has_the_documented_defaults(stack, registry):
    client, secret = await registry.create_client(ClientSpec(name="defaults"))
    assert len(client.client_id) == 32
    assert len(secret) >= 43  # 256 bits, URL-safe base64
    assert client.secret_hash == ""  # an operator does not verify secrets: it never gets the hash
    async with stack.channel("client_registry", caller=ISSUER_SERVICE) as channel:
        stored = await RegistryClient(channel).get_client(client.client_id)
    assert stored.secret_hash.startswith("sha256$") and secret not in stored.secret_hash
    assert client.grant_types == ("client_credentials",)
    assert client.access_token_lifetime == 1800
    assert client.refresh_token_lifetime == 8_640_000
    assert client.token_format == "jwt"
    assert client.active and not client.public and not client.pkce_required
    assert client.created_at > 0 and client.updated_at >= client.created_at


async def test_public_clients_have_no_secret_and_always_pkce(registry):
    client, secret = await registry.create_client(ClientSpec(
        name="spa", public=True, grant_types=["authorization_code"], redirect_uris=["https://spa.example/cb"]))
    assert secret == "" and client.secret_hash == ""
    assert client.pkce_required
    with pytest.raises(InvalidArgument):
        await registry.rotate_client_secret(client.client_id)


@pytest.mark.parametrize("spec,why", [
    (ClientSpec(name=""), "name"),
    (ClientSpec(name="x\x00y"), "control"),
    (ClientSpec(name="x", grant_types=["bogus"]), "grant"),
    (ClientSpec(name="x", public=True, grant_types=["client_credentials"]), "public"),
    (ClientSpec(name="x", scopes=['bad"scope']), "scope"),
    (ClientSpec(name="x", grant_types=["authorization_code"]), "redirect"),
    (ClientSpec(name="x", grant_types=["authorization_code"], redirect_uris=["https://a.example/cb#frag"]), "fragment"),
    (ClientSpec(name="x", grant_types=["authorization_code"], redirect_uris=["http://evil.example/cb"]), "loopback"),
    (ClientSpec(name="x", grant_types=["authorization_code"], redirect_uris=["/relative"]), "absolute"),
    (ClientSpec(name="x", grant_types=["implicit"], redirect_uris=["javascript:alert(1)"]), "scheme"),
    (ClientSpec(name="x", access_token_lifetime=-5), "lifetime"),
    (ClientSpec(name="x", access_token_lifetime=0), "zero lifetime"),
    (ClientSpec(name="x", refresh_token_lifetime=0), "zero refresh lifetime"),
    (ClientSpec(name="x", access_token_lifetime=2 * 86400), "access lifetime over a day"),
    (ClientSpec(name="x", token_format="paseto"), "format"),
    (ClientSpec(name="x", logo_url="javascript:alert(1)"), "logo"),
])
async def test_invalid_client_specs_are_refused_and_nothing_is_stored(stack, registry, spec, why):
    before = len(await registry.list_clients())
    with pytest.raises(InvalidArgument):
        await registry.create_client(spec)
    assert len(await registry.list_clients()) == before


async def test_update_is_partial_and_checked(registry):
    await ensure_scopes(registry, ["a", "b"])
    client, _ = await registry.create_client(ClientSpec(name="upd", scopes=["a"]))
    updated = await registry.update_client(client.client_id, ClientUpdate(scopes=["a", "b"], comments="note"))
    assert updated.scopes == ("a", "b") and updated.comments == "note" and updated.name == "upd"
    with pytest.raises(InvalidArgument):
        await registry.update_client(client.client_id, ClientUpdate(token_format="nope"))
    with pytest.raises(NotFound):
        await registry.update_client("no-such-client", ClientUpdate(active=False))
    assert (await registry.get_client(client.client_id)).token_format == "jwt"


async def test_every_client_change_is_published_on_nats(stack, registry):
    nc = await nats_connect(stack, "token_issuer")  # a service that listens to client changes
    seen: list[events_pb2.Event] = []

    async def collect(msg):
        event = events_pb2.Event()
        event.ParseFromString(msg.data)
        seen.append(event)

    await nc.subscribe(stack.installation.subject(CLIENT_CHANGED), cb=collect)
    try:
        client, _ = await registry.create_client(ClientSpec(name="events"))
        await registry.update_client(client.client_id, ClientUpdate(active=False))
        await registry.rotate_client_secret(client.client_id)
        await registry.delete_client(client.client_id)
        await eventually(lambda: [e.registry_changed.change for e in seen
                                  if e.registry_changed.id == client.client_id],
                         until=lambda changes: len(changes) >= 4, message="the client's four change events")
    finally:
        await nc.close()
    mine = [e for e in seen if e.registry_changed.id == client.client_id]
    assert [e.registry_changed.change for e in mine] == ["created", "updated", "secret_rotated", "deleted"]
    assert all(e.registry_changed.entity == "client" for e in mine)
    assert len({e.event_id for e in mine}) == 4
    assert all(e.source == "client_registry" for e in mine)


async def test_events_are_stored_on_jetstream_once(stack):
    """An event is published under its own id (Nats-Msg-Id), so a retried publish of
    it is dropped by JetStream: the server's answer to the retry (a duplicate of a
    stored message) is the measure."""
    from inboundlib.events import EventBus

    bus = EventBus(stack.nats_settings("client_registry"), "test-once")
    await bus.start()
    nc = await nats_connect(stack, "client_registry")
    try:
        js = nc.jetstream()
        event = events_pb2.Event(registry_changed=events_pb2.RegistryChanged(entity="client", id="once", change="updated"))
        bus.publish(CLIENT_CHANGED, event)
        await bus.flush(10)
        assert bus.pending == 0
        retry = await js.publish(stack.installation.subject(CLIENT_CHANGED), event.SerializeToString(),
                                 headers={"Nats-Msg-Id": event.event_id})
        assert retry.duplicate is True
        info = await js.stream_info(stack.installation.stream)
        assert stack.installation.subjects in info.config.subjects
        assert info.state.last_seq >= retry.seq
    finally:
        await nc.close()
        await bus.close()


async def test_signing_keys_are_encrypted_at_rest(stack):
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("SELECT kid, encrypted_private_key, public_jwk FROM signing_keys")
    finally:
        await conn.close()
    assert rows
    for row in rows:
        blob = bytes(row["encrypted_private_key"])
        assert b"PRIVATE KEY" not in blob and b"-----BEGIN" not in blob
        assert '"d"' not in row["public_jwk"]


async def test_client_secrets_are_stored_hashed(stack, registry):
    client, secret = await registry.create_client(ClientSpec(name="hashed"))
    conn = await asyncpg.connect(stack.database_url)
    try:
        dump = await conn.fetchval("SELECT string_agg(c::text, ' ') FROM clients c")
    finally:
        await conn.close()
    assert secret not in dump


async def test_expired_tokens_and_revocations_are_purged_a_day_later(stack):
    import time

    from services.client_registry.api import OpaqueTokenRecord, RevocationRecord
    from services.client_registry.registry import Registry

    pool = await db.create_pool(stack.database_url, min_size=1, max_size=2)
    try:
        registry = Registry(pool, events=None)
        client, _ = await registry.create_client(ClientSpec(name="purge"))
        now = int(time.time())
        old, recent = now - 2 * 86400, now - 3600
        await registry.store_opaque_tokens([
            OpaqueTokenRecord(token_hash=bytes([i]) * 32, jti=f"purge-{uuid.uuid4().hex}", client_id=client.client_id,
                              subject="s", username="", scopes=(), audience=(), issued_at=exp - 60, expires_at=exp)
            for i, exp in ((201, old), (202, recent), (203, now + 600))])
        await registry.add_revocations([
            RevocationRecord(kind="jti", value=f"purge-old-{uuid.uuid4().hex}", client_id="c", expires_at=old),
            RevocationRecord(kind="jti", value=f"purge-new-{uuid.uuid4().hex}", client_id="c", expires_at=now + 600)])
        assert await registry.purge_expired() >= 2
        left = await registry.get_opaque_tokens([bytes([i]) * 32 for i in (201, 202, 203)])
        assert [t is not None for t in left] == [False, True, True]
    finally:
        await pool.close()

"""The scope catalog (services/client_registry/scopes.py) against the running registry, as
the operator: clients may only be given catalog scopes, a scope in use cannot be deleted,
post-logout redirect URIs are checked like redirect URIs; migration 0007 seeds the catalog
from the scopes clients had before it."""
from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import asyncpg
import pytest

from inboundlib import db
from services.client_registry.api import (
    AlreadyExists,
    ClientSpec,
    ClientUpdate,
    InUse,
    InvalidArgument,
    NotFound,
    ScopeUpdate,
)
from services.client_registry.assembly import MIGRATIONS
from tests.support import ensure_scopes, eventually


def unique(prefix: str) -> str:
    return f"{prefix}.{secrets.token_hex(4)}"


async def client_count(registry) -> int:
    return len(await registry.list_clients())


async def test_the_catalog_is_seeded_with_the_openid_connect_scopes(registry):
    openid, profile, email = await registry.get_scopes(["openid", "profile", "email"])
    assert openid is not None and not openid.consent_required
    assert profile is not None and profile.consent_required and profile.description
    assert email is not None and email.consent_required and email.description


async def test_scopes_are_created_read_in_batches_listed_and_updated(registry):
    name = unique("calendar.read")
    created = await registry.create_scope(name, "  Read your calendar ", True)
    assert (created.name, created.description, created.consent_required) == (name, "Read your calendar", True)
    found, missing, malformed = await registry.get_scopes([name, unique("nothing"), 'bad"name'])
    assert found == created and missing is None and malformed is None
    assert name in {s.name for s in await registry.list_scopes()}
    updated = await registry.update_scope(name, ScopeUpdate(consent_required=False))
    assert (updated.description, updated.consent_required) == ("Read your calendar", False)
    updated = await registry.update_scope(name, ScopeUpdate(description="See your calendar"))
    assert (updated.description, updated.consent_required) == ("See your calendar", False)
    with pytest.raises(AlreadyExists):
        await registry.create_scope(name, "again", True)
    with pytest.raises(NotFound):
        await registry.update_scope(unique("nothing"), ScopeUpdate(description="x"))


@pytest.mark.parametrize("name, description, why", [
    ("has space", "words", "scope token"),
    ('quote"d', "words", "scope token"),
    ("back\\slash", "words", "scope token"),
    ("", "words", "scope token"),
    ("x" * 201, "words", "scope token"),
    ("fine.name", "", "description"),
    ("fine.name", "   ", "description"),
    ("fine.name", "x" * 501, "at most"),
    ("fine.name", "line\nbreak", "control"),
])
async def test_bad_scopes_are_refused_and_nothing_is_stored(registry, name, description, why):
    before = await registry.list_scopes()
    with pytest.raises(InvalidArgument, match=why):
        await registry.create_scope(name, description, True)
    assert await registry.list_scopes() == before


async def test_a_client_may_only_be_given_catalog_scopes(registry):
    known, unknown = unique("known"), unique("unknown")
    await ensure_scopes(registry, [known])
    before = await client_count(registry)
    with pytest.raises(InvalidArgument, match=f"not in the catalog: {unknown}"):
        await registry.create_client(ClientSpec(name="uncatalogued", scopes=[known, unknown]))
    assert await client_count(registry) == before  # nothing stored

    client, _ = await registry.create_client(ClientSpec(name="catalogued", scopes=[known]))
    with pytest.raises(InvalidArgument, match=f"not in the catalog: {unknown}"):
        await registry.update_client(client.client_id, ClientUpdate(scopes=[known, unknown]))
    assert (await registry.get_client(client.client_id)).scopes == (known,)  # unchanged
    updated = await registry.update_client(client.client_id, ClientUpdate(scopes=[known, "openid"]))
    assert updated.scopes == (known, "openid")


async def test_a_scope_a_client_has_cannot_be_deleted(registry):
    name = unique("in.use")
    await registry.create_scope(name, "Something in use", True)
    client, _ = await registry.create_client(ClientSpec(name="holder", scopes=[name]))
    with pytest.raises(InUse, match=client.client_id):
        await registry.delete_scope(name)
    assert (await registry.get_scopes([name]))[0] is not None  # still there

    await registry.update_client(client.client_id, ClientUpdate(scopes=[]))
    assert await registry.delete_scope(name) is True
    assert (await registry.get_scopes([name]))[0] is None
    assert await registry.delete_scope(name) is False  # gone: not found
    with pytest.raises(InvalidArgument, match="not in the catalog"):
        await registry.update_client(client.client_id, ClientUpdate(scopes=[name]))


async def test_post_logout_redirect_uris_are_checked_stored_and_read_back(registry):
    uris = ["https://app.example/signed-out", "http://127.0.0.1:8080/bye"]
    client, _ = await registry.create_client(ClientSpec(
        name="rp", grant_types=["authorization_code"], redirect_uris=["https://app.example/cb"],
        post_logout_redirect_uris=uris))
    assert client.post_logout_redirect_uris == tuple(uris)
    assert (await registry.get_client(client.client_id)).post_logout_redirect_uris == tuple(uris)
    for bad in ("https://app.example/out#frag", "http://evil.example/out", "javascript:alert(1)", "/relative"):
        with pytest.raises(InvalidArgument, match="post-logout redirect URI"):
            await registry.update_client(client.client_id, ClientUpdate(post_logout_redirect_uris=[bad]))
        with pytest.raises(InvalidArgument, match="post-logout redirect URI"):
            await registry.create_client(ClientSpec(name="rp-bad", post_logout_redirect_uris=[bad]))
    assert (await registry.get_client(client.client_id)).post_logout_redirect_uris == tuple(uris)
    cleared = await registry.update_client(client.client_id, ClientUpdate(post_logout_redirect_uris=[]))
    assert cleared.post_logout_redirect_uris == ()
    await registry.update_client(client.client_id, ClientUpdate(post_logout_redirect_uris=uris[:1]))
    untouched = await registry.update_client(client.client_id, ClientUpdate(name="rp renamed"))
    assert untouched.post_logout_redirect_uris == tuple(uris[:1])


async def test_every_change_to_a_scope_is_an_audited_registry_change_naming_the_operator(stack, registry):
    name = unique("audited")
    await registry.create_scope(name, "Audited", True)
    await registry.update_scope(name, ScopeUpdate(consent_required=False))
    await registry.delete_scope(name)
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await eventually(lambda: conn.fetch(
            "SELECT detail->>'change' AS change, actor_kind, actor_id FROM audit_log"
            " WHERE type = 'registry_changed' AND detail->>'entity' = 'scope' AND detail->>'id' = $1"
            " ORDER BY occurred_at", name),
            until=lambda rows: len(rows) == 3, message="the scope's three changes in the audit log")
    finally:
        await conn.close()
    assert [r["change"] for r in rows] == ["created", "updated", "deleted"]
    assert {(r["actor_kind"], r["actor_id"]) for r in rows} == {("operator", "dev")}


async def test_migration_0007_puts_every_scope_clients_have_into_the_catalog(fresh_database, tmp_path):
    """An installation upgraded from 0006: its clients' scopes become catalog scopes (described
    by their names, consent required) beside the OpenID Connect ones."""
    url = fresh_database()
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(Path(MIGRATIONS).glob("*.sql")):
        if path.name < "0007":
            shutil.copy(path, before / path.name)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        await db.migrate(pool, before)
        await pool.execute("INSERT INTO clients (client_id, name, secret_hash, public, grant_types, scopes,"
                           " redirect_uris) VALUES ('old', 'old', 'x', false, '{client_credentials}',"
                           " '{legacy.read,profile,legacy.write}', '{}')")
        applied = await db.migrate(pool, Path(MIGRATIONS))
        assert applied[0] == "0007_scopes_and_authorizations.sql", applied  # then the later ones
        rows = {r["name"]: (r["description"], r["consent_required"])
                for r in await pool.fetch("SELECT name, description, consent_required FROM scopes")}
        assert rows["legacy.read"] == ("legacy.read", True) and rows["legacy.write"] == ("legacy.write", True)
        assert rows["openid"][1] is False and rows["profile"] == ("Your name and profile details", True)
        assert set(rows) == {"openid", "profile", "email", "legacy.read", "legacy.write"}
        assert await pool.fetchval("SELECT post_logout_redirect_uris FROM clients WHERE client_id = 'old'") == []
    finally:
        await pool.close()

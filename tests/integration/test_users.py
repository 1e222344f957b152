"""The registry's user directory against real Postgres and NATS: records and their
rules through the registry's gRPC API, and subject revocation reaching token_issuer."""
from __future__ import annotations

import uuid

import asyncpg
import pytest

from services.client_registry.api import AlreadyExists, InvalidArgument, NotFound, UserSpec, UserUpdate
from services.token_issuer.api import IssueRequest
from tests.support import eventually


def _name(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_a_new_user_has_an_id_its_fields_and_no_password_hash_anywhere(registry):
    name = _name("Ada")
    user = await registry.create_user(UserSpec(
        username=name, email="ada@example.org", display_name="Ada Lovelace", given_name="Ada",
        family_name="Lovelace", email_verified=True, locale="en-GB", zoneinfo="Europe/London",
        roles=["oauth_admin", "reports.viewer"], password="analytical engine"))
    assert uuid.UUID(user.id)
    assert (user.username, user.email, user.display_name, user.given_name, user.family_name) == (
        name, "ada@example.org", "Ada Lovelace", "Ada", "Lovelace")
    assert user.email_verified and user.active and user.locale == "en-GB" and user.zoneinfo == "Europe/London"
    assert user.roles == ("oauth_admin", "reports.viewer")
    assert user.password_changed_at >= user.created_at > 0 and user.locked_until == 0
    assert "analytical engine" not in repr(user) and "argon2" not in repr(user)
    assert await registry.get_user(id=user.id) == user
    without = await registry.create_user(UserSpec(username=_name()))
    assert without.password_changed_at == 0


async def test_usernames_are_unique_case_insensitively(registry):
    name = _name("Grace")
    user = await registry.create_user(UserSpec(username=name))
    with pytest.raises(AlreadyExists):
        await registry.create_user(UserSpec(username=name.upper()))
    assert (await registry.get_user(username=name.upper())).id == user.id
    other = await registry.create_user(UserSpec(username=_name("Grace")))
    with pytest.raises(AlreadyExists):
        await registry.update_user(other.id, UserUpdate(username=name.lower()))
    renamed = await registry.update_user(user.id, UserUpdate(username=name.upper()))  # its own name, recased
    assert renamed.username == name.upper()


@pytest.mark.parametrize("spec,why", [
    (UserSpec(username=""), "required"),
    (UserSpec(username="x" * 257), "longer"),
    (UserSpec(username="a\x00b"), "control"),
    (UserSpec(username="a\nb"), "control"),
    (UserSpec(username=" padded"), "white space"),
    (UserSpec(username="padded "), "white space"),
    (UserSpec(username="ok-email", email="not-an-address"), "email"),
    (UserSpec(username="ok-email2", email="a@b"), "email"),
    (UserSpec(username="ok-locale", locale="english please"), "locale"),
    (UserSpec(username="ok-zone", zoneinfo="../../etc/passwd"), "zoneinfo"),
    (UserSpec(username="ok-role", roles=["Bad Role"]), "roles"),
    (UserSpec(username="ok-name", display_name="x" * 257), "display name"),
    (UserSpec(username="ok-short", password="short"), "shorter"),
    (UserSpec(username="ok-long", password="p" * 1025), "longer"),
])
async def test_invalid_users_are_refused_and_nothing_is_stored(registry, spec, why):
    with pytest.raises(InvalidArgument, match=why):
        await registry.create_user(spec)
    if spec.username and len(spec.username) <= 256 and "\x00" not in spec.username:
        assert await registry.get_user(username=spec.username) is None


async def test_updates_change_only_what_is_set_and_are_validated(registry):
    user = await registry.create_user(UserSpec(username=_name(), email="a@example.org", display_name="A"))
    updated = await registry.update_user(user.id, UserUpdate(display_name="Alice", locale="fr"))
    assert (updated.display_name, updated.locale, updated.email) == ("Alice", "fr", "a@example.org")
    with pytest.raises(InvalidArgument):
        await registry.update_user(user.id, UserUpdate(email="nope"))
    assert (await registry.get_user(id=user.id)).email == "a@example.org"
    with pytest.raises(NotFound):
        await registry.update_user(str(uuid.uuid4()), UserUpdate(display_name="x"))
    with pytest.raises(InvalidArgument, match="shorter"):
        await registry.set_user_password(user.id, "short")
    assert (await registry.get_user(id=user.id)).password_changed_at == 0


async def test_roles_are_added_and_removed(registry):
    user = await registry.create_user(UserSpec(username=_name(), roles=["mi_admin"]))
    user = await registry.change_user_roles(user.id, add=["admin", "team:payments"], remove=["mi_admin"])
    assert user.roles == ("admin", "team:payments")
    user = await registry.change_user_roles(user.id, add=[], remove=["admin", "never-had"])
    assert user.roles == ("team:payments",)
    with pytest.raises(InvalidArgument):
        await registry.change_user_roles(user.id, add=["NOT A ROLE"], remove=[])
    assert (await registry.get_user(id=user.id)).roles == ("team:payments",)


async def test_users_are_listed_in_pages_by_username_and_filtered(registry):
    tag = uuid.uuid4().hex[:8]
    names = [f"list-{tag}-{c}" for c in "edcba"]
    for i, name in enumerate(names):
        await registry.create_user(UserSpec(username=name.upper() if i % 2 else name))
    first = await registry.list_users(limit=2, query=f"LIST-{tag}")
    assert [u.username.lower() for u in first.users] == [f"list-{tag}-a", f"list-{tag}-b"] and first.next
    rest = await registry.list_users(after=first.next, limit=10, query=f"list-{tag}")
    assert [u.username.lower() for u in rest.users] == [f"list-{tag}-{c}" for c in "cde"] and rest.next == ""


async def test_a_deleted_user_is_gone(registry):
    user = await registry.create_user(UserSpec(username=_name()))
    assert await registry.delete_user(user.id)
    assert not await registry.delete_user(user.id)
    assert await registry.get_user(id=user.id) is None


# --- subject revocation: what the user holds stops working -------------------------------------------

async def _subject_cut_offs(stack, user_id: str) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM revocations WHERE kind = 'subject' AND value = $1",
                                   user_id)
    finally:
        await conn.close()


async def _change_password(registry, user):
    await registry.set_user_password(user.id, "a brand new password")


async def _disable(registry, user):
    await registry.update_user(user.id, UserUpdate(active=False))


async def _delete(registry, user):
    assert await registry.delete_user(user.id)


@pytest.mark.parametrize("change", [_change_password, _disable, _delete])
async def test_a_password_change_disabling_or_deleting_revokes_the_users_tokens(stack, registry, issuer,
                                                                                make_client, change):
    client, _ = await make_client()
    user = await registry.create_user(UserSpec(username=_name(), password="the first password"))
    other = await registry.create_user(UserSpec(username=_name(), password="the first password"))
    issued = {u.id: await issuer.issue(IssueRequest(
        client_id=client.client_id, subject=u.id, username=u.username, scopes=("api.read",), format="jwt",
        lifetime_seconds=600, grant_type="password")) for u in (user, other)}
    for u in (user, other):
        assert (await issuer.introspect(issued[u.id].access_token)).active
    assert await _subject_cut_offs(stack, user.id) == 0

    await change(registry, user)

    assert await _subject_cut_offs(stack, user.id) == 1
    await eventually(lambda: issuer.introspect(issued[user.id].access_token), until=lambda info: not info.active,
                     message="the user's token inactive at token_issuer")
    assert (await issuer.introspect(issued[other.id].access_token)).active  # only that user's


async def test_every_change_to_a_user_is_an_audited_registry_change_naming_the_operator(stack, registry):
    user = await registry.create_user(UserSpec(username=_name(), password="the first password"))
    await registry.update_user(user.id, UserUpdate(display_name="Renamed"))
    await registry.set_user_password(user.id, "the second password")
    await registry.change_user_roles(user.id, add=["admin"], remove=[])
    await registry.delete_user(user.id)
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await eventually(lambda: conn.fetch(
            "SELECT detail->>'change' AS change, actor_kind, actor_id, detail::text AS detail FROM audit_log"
            " WHERE type = 'registry_changed' AND detail->>'entity' = 'user' AND detail->>'id' = $1"
            " ORDER BY occurred_at", user.id),
            until=lambda rows: len(rows) == 5, message="the user's five changes in the audit log")
    finally:
        await conn.close()
    assert [r["change"] for r in rows] == ["created", "updated", "password_set", "roles_changed", "deleted"]
    assert {(r["actor_kind"], r["actor_id"]) for r in rows} == {("operator", "dev")}
    assert not any(secret in r["detail"] for r in rows for secret in ("the first password", "the second password",
                                                                      "$argon2"))


@pytest.mark.parametrize("change", [_change_password, _disable, _delete])
async def test_tokens_of_a_sign_in_that_raced_a_change_are_revoked_by_it(stack, registry, issuer, make_client,
                                                                         change):
    """The sign-in checked the old password, then the password changed (or the user was
    disabled or deleted), then the sign-in's tokens were issued: they are stamped as of the
    check, before the cut-off, and die with the others (the refresh token's family too)."""
    import jwt

    from inboundlib import db
    from inboundlib.passwords import Passwords, PasswordSettings
    from services.client_registry.api import SignIn, UserRecord
    from services.client_registry.users import UserRepository

    client, _ = await make_client()
    user = await registry.create_user(UserSpec(username=_name(), password="the first password"))
    pool = await db.create_pool(stack.database_url, min_size=1, max_size=2)
    passwords = Passwords(PasswordSettings(hash_workers=1))
    try:  # the registry's check, as AuthenticateUsers runs it (the RPC is the password service's alone)
        [outcome] = await UserRepository(pool, None, passwords).authenticate_users(
            [SignIn(username=user.username, password="the first password", client_address="192.0.2.90")])
    finally:
        passwords.shutdown()
        await pool.close()
    assert isinstance(outcome, UserRecord) and outcome.verified_at_ms > 0

    await change(registry, user)  # lands between the check and the issue

    issued = [await issuer.issue(IssueRequest(
        client_id=client.client_id, subject=user.id, username=user.username, scopes=("api.read",), format=fmt,
        lifetime_seconds=600, grant_type="password", refresh_token_lifetime=600,
        authenticated_at_ms=outcome.verified_at_ms)) for fmt in ("jwt", "opaque")]
    claims = jwt.decode(issued[0].access_token, options={"verify_signature": False})
    assert claims["iat"] == outcome.verified_at_ms // 1000
    for token in [t.access_token for t in issued] + [t.refresh_token for t in issued]:
        await eventually(lambda: issuer.introspect(token), until=lambda info: not info.active,  # noqa: B023
                         message="a token of the raced sign-in inactive at token_issuer")

"""inboundctl user ... end to end: the real CLI as a subprocess against the running
system, checked through the registry (as the operator) and, where the password
grant runs, through what an OAuth client sees at the HTTP edge; and `make run`'s
demo user and its printed curl commands."""
from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time

import httpx
import pytest

from tests.integration.test_inboundctl import basic, ctl, ok
from tests.support import counter_key, eventually

TOKEN = "/oauth/token"


def name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def create_user(stack, username: str, password: str, *args: str) -> dict:
    result = await ok(stack, "user", "create", username, "--password-stdin", "--json", *args,
                      stdin=password.encode() + b"\n")
    assert password not in result.out + result.err
    return result.json()


async def password_grant(stack, client_id: str, secret: str, username: str, password: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        return await http.post(TOKEN, data={"grant_type": "password", "username": username, "password": password},
                               headers=basic(client_id, secret))


async def signs_in(stack, client, username: str, password: str, expected: bool, what: str) -> None:
    async def check():
        reply = await password_grant(stack, client[0].client_id, client[1], username, password)
        return reply.status_code == (200 if expected else 400)

    await eventually(check, message=what)


@pytest.fixture
async def password_client(make_client):
    return await make_client(grant_types=["password"])


async def test_user_lifecycle_through_the_cli(stack, registry, password_client):
    username, password, new_password = name("ctl-user"), secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    user = await create_user(stack, username, password, "--email", f"{username}@example.com", "--role", "mi_admin",
                             "--display-name", "Ctl User")
    user_id = user["id"]
    assert (user["username"], user["email"], user["roles"], user["active"]) == (
        username, f"{username}@example.com", ["mi_admin"], True)
    assert user["password_changed_at"] > 0
    stored = await registry.get_user(id=user_id)  # the registry's own record, not the CLI's rendering
    assert stored.username == username and stored.roles == ("mi_admin",)
    await signs_in(stack, password_client, username, password, True, "the created user signs in")

    # show by id, by username (any case); list finds it; the human forms too.
    by_id, by_name, by_upper_name, listed, human_list, human_show = await asyncio.gather(
        *(ok(stack, "user", "show", ref, "--json") for ref in (user_id, username, username.upper())),
        ok(stack, "user", "list", "--json", "--query", username), ok(stack, "user", "list"),
        ok(stack, "user", "show", username))
    assert by_id.json() == by_name.json() == by_upper_name.json() == user
    assert [u["id"] for u in listed.json()] == [user_id]
    assert user_id in human_list.out
    assert "mi_admin" in human_show.out and password not in human_show.out

    updated = (await ok(stack, "user", "update", username, "--json", "--email", f"{username}@corp.example",
                        "--email-verified", "--locale", "fr-FR", "--zoneinfo", "Europe/Paris")).json()
    assert (updated["email"], updated["email_verified"], updated["locale"], updated["zoneinfo"]) == (
        f"{username}@corp.example", True, "fr-FR", "Europe/Paris")
    assert (await registry.get_user(id=user_id)).email == f"{username}@corp.example"

    roles = (await ok(stack, "user", "grant-role", username, "admin", "ops_reader", "--json")).json()["roles"]
    assert set(roles) == {"mi_admin", "admin", "ops_reader"}
    roles = (await ok(stack, "user", "revoke-role", user_id, "mi_admin", "--json")).json()["roles"]
    assert set(roles) == {"admin", "ops_reader"}
    assert set((await registry.get_user(id=user_id)).roles) == {"admin", "ops_reader"}

    before = (await registry.get_user(id=user_id)).password_changed_at
    changed = await ok(stack, "user", "set-password", username, "--password-stdin", "--json",
                       stdin=new_password.encode() + b"\n")
    assert new_password not in changed.out + changed.err and "revoked" in changed.err
    assert (await registry.get_user(id=user_id)).password_changed_at >= before
    await signs_in(stack, password_client, username, new_password, True, "the new password works")
    await signs_in(stack, password_client, username, password, False, "the old password no longer works")

    disabled = (await ok(stack, "user", "disable", username, "--json")).json()
    assert disabled["active"] is False and (await registry.get_user(id=user_id)).active is False
    await signs_in(stack, password_client, username, new_password, False, "a disabled user cannot sign in")
    enabled = (await ok(stack, "user", "enable", username, "--json")).json()
    assert enabled["active"] is True and (await registry.get_user(id=user_id)).active is True

    unlocked = (await ok(stack, "user", "unlock", username, "--json")).json()
    assert unlocked["locked_until"] == 0

    # delete: refused without a terminal or --yes, then done with --yes.
    refused = await ctl(stack, "user", "delete", username)
    assert refused.code == 2 and "--yes" in refused.err
    assert await registry.get_user(id=user_id) is not None
    deleted = (await ok(stack, "user", "delete", username, "--yes", "--json")).json()
    assert deleted == {"id": user_id, "username": username, "deleted": True}
    assert await registry.get_user(id=user_id) is None
    gone = await ctl(stack, "user", "show", user_id)
    assert gone.code == 3 and f"no user with id or username {user_id!r}" in gone.err


async def test_unlock_lifts_a_lock(stack, registry, password_client):
    """A username locked (as AuthenticateUsers leaves it after ten failures from an address:
    here from the test's own, the edge's loopback) is shown locked and its right password
    refused; `user unlock` forgets its failures: nothing in force is left, and it signs in."""
    import asyncpg

    username, password = name("ctl-Locked"), secrets.token_urlsafe(12)
    await create_user(stack, username, password)
    db = await asyncpg.connect(stack.database_url)
    try:
        for address in ("203.0.113.9", "127.0.0.1"):
            await db.execute("INSERT INTO login_failures (username_digest, address, failures, last_failure_at,"
                             " blocked_until, locked_until) VALUES ($1, $2, 10, now(), now() + interval '1 hour',"
                             " now() + interval '1 hour')", counter_key(username), address)
        shown = (await ok(stack, "user", "show", username, "--json")).json()
        assert shown["locked_until"] > time.time() + 3000
        assert "until" in (await ok(stack, "user", "show", username)).out.split("locked:")[1].splitlines()[0]
        # The lock is read in the sign-in's own transaction: no waiting either way.
        client_id, secret = password_client[0].client_id, password_client[1]
        assert (await password_grant(stack, client_id, secret, username, password)).status_code == 400

        unlocked = await ok(stack, "user", "unlock", username, "--json")
        assert unlocked.json()["locked_until"] == 0
        in_force = await db.fetchval("SELECT count(*) FROM login_failures WHERE username_digest = $1 AND"
                                     " greatest(blocked_until, locked_until) > now()", counter_key(username))
        assert in_force == 0
        assert (await registry.get_user(username=username)).locked_until == 0
        reply = await password_grant(stack, client_id, secret, username, password)
        assert reply.status_code == 200, reply.text
    finally:
        await db.close()


async def test_unknown_user_exits_3(stack):
    """Every command's answer to an unknown user is in the unit tests; here, the real registry's."""
    commands = (("show",), ("update", "--email", "x@example.com"), ("grant-role", "admin"), ("delete", "--yes"))
    results = await asyncio.gather(*(ctl(stack, "user", args[0], "no-such-user", *args[1:]) for args in commands),
                                   ctl(stack, "user", "set-password", "no-such-user", "--password-stdin",
                                       stdin=b"whatever123\n"))
    for result in results:
        assert result.code == 3, result
        assert "no user with id or username 'no-such-user'" in result.err
        assert result.out == ""


async def test_duplicate_username_exits_4_and_changes_nothing(stack, registry):
    username = name("ctl-dup")
    first = await create_user(stack, username, secrets.token_urlsafe(12))
    again = await ctl(stack, "user", "create", username.upper(), "--no-password", "--json")
    assert again.code == 4, again
    assert again.out == "" and "exists" in again.err
    assert (await registry.get_user(username=username)).id == first["id"]


async def test_bad_passwords_exit_2_and_are_never_echoed(stack, registry):
    username = name("ctl-short")
    short, two_lines, no_terminal, on_argv = await asyncio.gather(
        ctl(stack, "user", "create", username, "--password-stdin", stdin=b"tiny7\n"),  # under 8 characters
        ctl(stack, "user", "create", username, "--password-stdin", stdin=b"line one\nline two\n"),
        ctl(stack, "user", "create", username),  # stdin is /dev/null: nobody to ask
        ctl(stack, "user", "create", username, "--password", "s3cret-on-argv"))
    assert short.code == 2 and short.out == "" and "tiny7" not in short.err
    assert two_lines.code == 2 and "one line" in two_lines.err and "line two" not in two_lines.err
    assert no_terminal.code == 2 and "--password-stdin" in no_terminal.err
    assert on_argv.code == 2
    assert await registry.get_user(username=username) is None


async def test_user_without_password(stack, registry):
    username = name("ctl-nopw")
    result = await ok(stack, "user", "create", username, "--no-password", "--json")
    assert result.json()["password_changed_at"] == 0 and "set-password" in result.err
    assert (await registry.get_user(username=username)).password_changed_at == 0


# --- make run's demo user ----------------------------------------------------------------------------

async def test_demo_user_and_its_printed_commands(stack, registry):
    """What `make run` does after start: the demo user exists, a second start makes nothing
    new and shows no secret, and the printed curl commands sign the user in and refresh."""
    from services.devstack import DEMO_APP, DEMO_USERNAME, demo_banner, seed_demo

    first = await seed_demo(stack)
    assert first.user_error == ""
    user = await registry.get_user(username=DEMO_USERNAME)
    assert user is not None and user.id == first.user_id and user.active
    app = await registry.get_client(first.app_client_id)
    assert app.name == DEMO_APP and {"password", "refresh_token"} <= set(app.grant_types)
    again = await seed_demo(stack)
    assert (again.client_id, again.app_client_id, again.user_id) == (first.client_id, first.app_client_id,
                                                                       first.user_id)
    assert (again.client_secret, again.app_secret, again.user_password) == ("", "", "")
    banner = demo_banner(first, stack.edge_url)
    assert first.user_password in banner and first.user_password not in demo_banner(again, stack.edge_url)
    reply = await password_grant(stack, first.app_client_id, first.app_secret, DEMO_USERNAME, first.user_password)
    assert reply.status_code == 200, reply.text
    if not (shutil.which("curl") and shutil.which("bash")):
        pytest.skip("the banner's curl commands need curl and bash")
    # The banner's two commands, pasted into a shell as they are.
    commands = "set -e\n" + "\n".join(line.strip() for line in banner.splitlines()[-2:])
    assert "grant_type=password" in commands and "grant_type=refresh_token" in commands
    proc = await asyncio.create_subprocess_exec("bash", "-c", commands, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    signed_in = json.loads(err.decode().strip())  # tee /dev/stderr: the password grant's answer
    refreshed = json.loads(out.decode().strip())
    assert signed_in["refresh_token"] and refreshed["access_token"]
    assert refreshed["refresh_token"] != signed_in["refresh_token"]

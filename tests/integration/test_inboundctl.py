"""inboundctl end to end: the real CLI as a subprocess against the running
system, checked through what an OAuth client sees at the HTTP edge."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from dataclasses import dataclass

import httpx
import jwt
import pytest

from services.devstack import free_port
from tests.support import ISSUER_SERVICE, OPERATOR, ensure_scopes, eventually

TOKEN = "/oauth/token"
CC = {"grant_type": "client_credentials"}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


async def ctl(stack, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Result:
    """inboundctl ARGS as a subprocess; standard input is `stdin` (a pipe), or nothing (/dev/null)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_")}
    environ.update(INBOUND_REGISTRY_ADDR=stack.addr("client_registry"), INBOUND_ISSUER_ADDR=stack.addr("token_issuer"))
    environ.update(stack.tls_env(OPERATOR))  # the operator certificate `make run` prints
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inboundctl", *args, env=environ,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    result = Result(proc.returncode, out.decode(), err.decode())
    assert "Traceback" not in result.err, result.err
    return result


async def ok(stack, *args: str, stdin: bytes | None = None) -> Result:
    result = await ctl(stack, *args, stdin=stdin)
    assert result.code == 0, f"inboundctl {' '.join(args)} -> {result.code}\n{result.err}"
    return result


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def token(stack, client_id: str, secret: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        return await http.post(TOKEN, data=CC, headers=basic(client_id, secret))


async def until(check, what: str) -> None:
    """Until `check()` (async) is true: caches hear of changes over NATS (how fast is the SLO set's)."""
    await eventually(check, message=what)


async def token_status(stack, client_id: str, secret: str, status: int, what: str) -> None:
    async def check():
        reply = await token(stack, client_id, secret)
        if reply.status_code == status:
            if status == 401:
                assert reply.json()["error"] == "invalid_client"
            return True
        return False

    await until(check, what)


@pytest.fixture(scope="module", autouse=True)
async def catalog(registry):
    """The scopes these tests give clients (a client may only be given catalog scopes)."""
    await ensure_scopes(registry, ["api.read", "api.write"])


async def create(stack, *args: str) -> tuple[dict, str]:
    result = await ok(stack, "client", "create", "--json", *args)
    document = result.json()
    return document["client"], document["client_secret"]


@pytest.fixture(scope="module")
async def hashes(stack):
    """`await hashes(client_id)`: the stored secret hash, as a service that verifies
    secrets sees it (the operator's registry replies never carry it)."""
    from services.client_registry.client import RegistryClient

    channel = stack.channel("client_registry", caller=ISSUER_SERVICE)
    registry = RegistryClient(channel)

    async def stored_hash(client_id: str) -> str:
        return (await registry.get_client(client_id)).secret_hash

    yield stored_hash
    await channel.close()


def assert_private(text: str, *private: str) -> None:
    assert "secret_hash" not in text
    for value in private:
        assert value and value not in text


# --- clients ---------------------------------------------------------------------------------------

async def test_client_lifecycle_through_the_cli(stack, hashes):
    client, secret = await create(stack, "--name", "ctl-lifecycle", "--scope", "api.read", "--scope", "api.write",
                                  "--comments", "made by inboundctl")
    client_id = client["client_id"]
    assert client["name"] == "ctl-lifecycle" and client["scopes"] == ["api.read", "api.write"]
    assert client["grant_types"] == ["client_credentials"] and client["active"] and not client["public"]
    assert "secret_hash" not in client
    secret_hash = await hashes(client_id)
    assert secret_hash

    reply = await token(stack, client_id, secret)
    assert reply.status_code == 200, reply.text
    assert reply.json()["scope"] == "api.read api.write"

    # list and show: the client is there; its secret and hash are not.
    for args in (("client", "list"), ("client", "list", "--json"), ("client", "show", client_id),
                 ("client", "show", client_id, "--json"), ("--json", "client", "show", client_id)):
        result = await ok(stack, *args)
        assert client_id in result.out
        assert_private(result.out + result.err, secret, secret_hash)
    listed = (await ok(stack, "client", "list", "--json")).json()
    assert [c for c in listed if c["client_id"] == client_id][0]["comments"] == "made by inboundctl"
    shown = (await ok(stack, "client", "show", client_id, "--json")).json()
    assert shown == {**client, "updated_at": shown["updated_at"]}

    # disable: refused on the edge (the grant service's cache hears of it over NATS).
    disabled = (await ok(stack, "client", "disable", client_id, "--json")).json()
    assert disabled["active"] is False
    await token_status(stack, client_id, secret, 401, "disabled client refused")
    assert "active:" in (await ok(stack, "client", "show", client_id)).out

    await ok(stack, "client", "enable", client_id)
    await token_status(stack, client_id, secret, 200, "enabled client accepted")

    # rotate-secret: the new secret works, the old one stops working.
    rotated = await ok(stack, "client", "rotate-secret", client_id, "--json")
    new_secret = rotated.json()["client_secret"]
    assert new_secret and new_secret != secret
    assert "not be shown again" in rotated.err
    new_hash = await hashes(client_id)
    assert_private(rotated.out, secret_hash, new_hash)
    await token_status(stack, client_id, secret, 401, "old secret refused")
    await token_status(stack, client_id, new_secret, 200, "new secret accepted")

    # delete: gone, and asks nothing.
    deleted = await ok(stack, "client", "delete", client_id)
    assert client_id in deleted.out
    await token_status(stack, client_id, new_secret, 401, "deleted client refused")
    gone = await ctl(stack, "client", "show", client_id)
    assert gone.code == 3 and client_id in gone.err
    assert (await ctl(stack, "client", "delete", client_id)).code == 3


async def test_human_create_prints_the_secret_once_with_a_note(stack, hashes):
    result = await ok(stack, "client", "create", "--name", "ctl-human", "--scope", "api.read api.write",
                      "--token-format", "opaque", "--access-token-lifetime", "120")
    lines = dict(line.split(":", 1) for line in result.out.splitlines() if ":" in line and not line.startswith(" "))
    client_id, secret = lines["client_id"].strip(), lines["client_secret"].strip()
    assert lines["scopes"].strip() == "api.read api.write"
    assert lines["token_format"].strip() == "opaque"
    assert "will not be shown again" in result.out
    assert result.out.count(secret) == 1
    assert_private(result.out, await hashes(client_id))
    reply = await token(stack, client_id, secret)
    assert reply.status_code == 200, reply.text
    assert reply.json()["expires_in"] == 120 and "." not in reply.json()["access_token"]

    shown = await ok(stack, "client", "show", client_id)
    # No secret line (the method's name, client_secret_basic, is not one).
    assert "client_secret:" not in shown.out and secret not in shown.out
    assert "confidential" in shown.out

    public = await ok(stack, "client", "create", "--name", "ctl-public", "--public",
                      "--redirect-uri", "https://app.example/cb")
    assert "client_secret:" not in public.out and "not be shown again" not in public.out
    assert "public" in public.out


async def test_update_replaces_lists_and_takes_effect(stack):
    client, secret = await create(stack, "--name", "ctl-update", "--scope", "api.read", "--scope", "api.write")
    client_id = client["client_id"]
    updated = (await ok(stack, "client", "update", client_id, "--json", "--name", "ctl-updated",
                        "--scope", "api.read", "--access-token-lifetime", "300", "--comments", "narrowed",
                        "--logo-url", "https://app.example/logo.png")).json()
    assert updated["name"] == "ctl-updated" and updated["scopes"] == ["api.read"]
    assert updated["access_token_lifetime"] == 300 and updated["comments"] == "narrowed"
    assert updated["logo_url"] == "https://app.example/logo.png"
    assert updated["grant_types"] == ["client_credentials"]  # untouched

    async def narrowed():
        reply = await token(stack, client_id, secret)
        return reply.status_code == 200 and reply.json()["scope"] == "api.read" and reply.json()["expires_in"] == 300

    await until(narrowed, "update reaches the grant service")

    cleared = (await ok(stack, "client", "update", client_id, "--json", "--clear-scopes")).json()
    assert cleared["scopes"] == []
    nothing = await ctl(stack, "client", "update", client_id)
    assert nothing.code == 2 and "nothing to update" in nothing.err
    refused = await ctl(stack, "client", "update", client_id, "--grant-type", "authorization_code")
    assert refused.code == 2 and "redirect URI" in refused.err


async def test_unknown_client_exits_3(stack):
    for args in (("show",), ("disable",), ("enable",), ("delete",), ("rotate-secret",),
                 ("update", "--name", "x")):
        result = await ctl(stack, "client", args[0], "no-such-client", *args[1:])
        assert result.code == 3, (args, result)
        assert "no client with id 'no-such-client'" in result.err
        assert result.out == ""


@pytest.mark.parametrize("args, message", [
    (("--grant-type", "bogus"), "unknown grant types: bogus"),
    (("--public", "--grant-type", "client_credentials"), "public client cannot use client_credentials"),
    (("--grant-type", "authorization_code"), "redirect URI"),
    (("--redirect-uri", "http://app.example/cb"), "loopback"),
    (("--token-format", "paseto"), "invalid choice"),
    (("--access-token-lifetime", "0"), "at least 1"),
    (("--scope", 'bad"scope'), "malformed scopes"),
    (("--logo-url", "javascript:alert(1)"), "logo URL"),
])
async def test_bad_input_exits_2_with_a_message(stack, args, message):
    result = await ctl(stack, "client", "create", "--name", "ctl-bad", *args)
    assert result.code == 2, result
    assert message in result.err
    assert result.out == ""


async def test_unreachable_services_exit_1_without_a_traceback(stack):
    addr = f"127.0.0.1:{free_port()}"
    result = await ctl(stack, "client", "list", env={"INBOUND_REGISTRY_ADDR": addr})
    assert result.code == 1
    assert f"cannot reach client_registry at {addr}" in result.err
    result = await ctl(stack, "--registry-addr", addr, "client", "create", "--name", "x", "--json")
    assert result.code == 1 and f"cannot reach client_registry at {addr}" in result.err and result.out == ""
    result = await ctl(stack, "keys", "list", "--issuer-addr", addr)
    assert result.code == 1 and f"cannot reach token_issuer at {addr}" in result.err


# --- signing keys: on a system of their own (rotations change what every later test would see) -------

@pytest.fixture(scope="module")
def keys_stack(private_stack):
    with private_stack("ctl-keys") as s:
        yield s


async def keys(stack) -> list[dict]:
    return (await ok(stack, "keys", "list", "--json")).json()


async def next_second_after_newest_key(stack) -> None:
    """Key order has one-second resolution: let a rotation be strictly newer than every key so far."""
    newest = max(max(k["created_at"], k["activates_at"]) for k in await keys(stack) if k["activates_at"] <= time.time())
    await eventually(time.time, until=lambda now: now >= newest + 1, message="the next second")


async def jwks_kids(stack) -> set[str]:
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        reply = await http.get("/oauth/jwks")
    assert reply.status_code == 200, reply.text
    return {k["kid"] for k in reply.json()["keys"]}


async def test_rotate_now_signs_with_the_new_key(keys_stack):
    stack = keys_stack
    client, secret = await create(stack, "--name", "ctl-keys")
    await next_second_after_newest_key(stack)
    rotated = (await ok(stack, "keys", "rotate", "--alg", "ES256", "--activation-delay", "0", "--json")).json()
    kid = rotated["kid"]
    assert rotated["alg"] == "ES256" and rotated["signing"] is True

    listed = await keys(stack)
    assert [k["kid"] for k in listed if k["signing"] and k["alg"] == "ES256"] == [kid]  # one signs per algorithm
    human = (await ok(stack, "keys", "list")).out
    row = [line for line in human.splitlines() if line.startswith(kid)]
    assert row and row[0].split()[-1] == "yes"
    assert human.splitlines()[0].split() == ["KID", "ALG", "CREATED", "ACTIVATES", "SIGNING"]

    reply = await token(stack, client["client_id"], secret)
    assert reply.status_code == 200, reply.text
    assert jwt.get_unverified_header(reply.json()["access_token"])["kid"] == kid

    async def published():
        return kid in await jwks_kids(stack)

    await until(published, "new key in the JWKS")


async def test_rotate_with_delay_publishes_first_and_signs_later(keys_stack):
    stack = keys_stack
    client, secret = await create(stack, "--name", "ctl-keys")
    signing_before = {k["alg"]: k["kid"] for k in await keys(stack) if k["signing"]}  # one per algorithm
    result = await ok(stack, "keys", "rotate", "--activation-delay", "3600")
    kid = [line.split(":", 1)[1].strip() for line in result.out.splitlines() if line.startswith("kid:")][0]
    assert "signing:   no" in result.out or "signing: no" in " ".join(result.out.split())

    listed = {k["kid"]: k for k in await keys(stack)}
    assert listed[kid]["signing"] is False
    assert listed[kid]["activates_at"] >= time.time() + 3500
    assert {v["alg"]: k for k, v in listed.items() if v["signing"]} == signing_before

    async def published():
        return kid in await jwks_kids(stack)

    await until(published, "pending key in the JWKS")
    reply = await token(stack, client["client_id"], secret)
    assert reply.status_code == 200, reply.text
    assert jwt.get_unverified_header(reply.json()["access_token"])["kid"] == signing_before["ES256"]


async def test_rotating_another_algorithms_key_leaves_access_tokens_on_theirs(keys_stack):
    """One key signs per algorithm: access tokens keep INBOUND_SIGNING_ALG (ES256) whatever
    other algorithm's key (RS256 signs ID tokens) is rotated."""
    stack = keys_stack
    client, secret = await create(stack, "--name", "ctl-keys")
    access_kid = next(k["kid"] for k in await keys(stack) if k["signing"] and k["alg"] == "ES256")
    for alg in ("RS256", "EdDSA"):
        await next_second_after_newest_key(stack)
        rotated = (await ok(stack, "keys", "rotate", "--json", "--alg", alg, "--activation-delay", "0")).json()
        assert rotated["signing"] is True
        assert {k["alg"]: k["kid"] for k in await keys(stack) if k["signing"]}[alg] == rotated["kid"]
        reply = await token(stack, client["client_id"], secret)
        assert reply.status_code == 200, reply.text
        header = jwt.get_unverified_header(reply.json()["access_token"])
        assert (header["alg"], header["kid"]) == ("ES256", access_kid)
    bad = await ctl(stack, "keys", "rotate", "--alg", "HS256")
    assert bad.code == 2 and "invalid choice" in bad.err


async def test_revoke_tokens_makes_every_token_of_the_client_inactive(stack, issuer, make_client):
    client, secret = await make_client()
    tokens = [(await token(stack, client.client_id, secret)).json()["access_token"] for _ in range(2)]
    assert all([(await issuer.introspect(t)).active for t in tokens])
    started_ms = int(time.time() * 1000)
    result = await ok(stack, "client", "revoke-tokens", client.client_id, "--json")
    answer = json.loads(result.out)
    assert answer["client_id"] == client.client_id
    # The cut-off to the millisecond (what introspection compares with), and the same in seconds.
    assert started_ms - 5_000 <= answer["revoked_before_ms"] <= int(time.time() * 1000) + 5_000
    assert answer["revoked_before"] == answer["revoked_before_ms"] // 1000
    assert not any([(await issuer.introspect(t)).active for t in tokens])
    assert (await ctl(stack, "client", "revoke-tokens", "no-such-client")).code == 3


async def test_public_password_grant_and_absolute_refresh_lifetime_flags(stack, registry):
    client, secret = await create(stack, "--name", "ctl-mobile", "--public", "--grant-type", "password",
                                  "--grant-type", "refresh_token", "--allow-public-password-grant",
                                  "--refresh-token-absolute-lifetime", "86400")
    assert secret is None
    assert (client["allow_public_password_grant"], client["refresh_token_absolute_lifetime"]) == (True, 86400)
    stored = await registry.get_client(client["client_id"])  # the registry's record, not the CLI's rendering
    assert (stored.allow_public_password_grant, stored.refresh_token_absolute_lifetime) == (True, 86400)
    shown = (await ok(stack, "client", "show", client["client_id"])).out
    assert "allow_public_password_grant:" in shown and "86400 s" in shown

    updated = (await ok(stack, "client", "update", client["client_id"], "--json", "--no-allow-public-password-grant",
                        "--refresh-token-absolute-lifetime", "0")).json()
    assert (updated["allow_public_password_grant"], updated["refresh_token_absolute_lifetime"]) == (False, 0)
    stored = await registry.get_client(client["client_id"])
    assert (stored.allow_public_password_grant, stored.refresh_token_absolute_lifetime) == (False, 0)
    untouched = (await ok(stack, "client", "update", client["client_id"], "--json", "--name", "ctl-mobile-2")).json()
    assert (untouched["allow_public_password_grant"], untouched["refresh_token_absolute_lifetime"]) == (False, 0)

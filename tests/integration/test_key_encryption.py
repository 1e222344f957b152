"""Signing keys at rest: a corrupt stored key does not stop token_issuer, and the
key-encryption key rotates while tokens keep flowing.

These change the stored keys and token_issuer's key-encryption keys, so they run
on a system of their own (`kek_stack`), in file order."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets

import asyncpg
import httpx
import jwt
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.client_registry.keys import SigningKeyRepository
from services.devstack import free_port
from services.token_issuer.api import IssueRequest, RewrapReport
from services.token_issuer.client import IssuerClient
from tests.integration.test_inboundctl import ok
from tests.support import OPERATOR, IssuerAs, eventually, register_client, serving


@pytest.fixture(scope="module")
def kek_stack(private_stack):
    with private_stack("kek") as s:
        yield s


def _verify(token: str, jwks: dict, audience: str) -> dict:
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    key = keys[jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=audience)


async def test_a_garbage_stored_key_is_skipped_and_a_new_replica_still_starts_and_signs(kek_stack):
    stack = kek_stack
    garbage_kid = "garbage-" + os.urandom(4).hex()
    conn = await asyncpg.connect(stack.database_url)
    try:
        # The newest key, active now: before the skip, every new replica refused to start on it.
        await conn.execute(
            "INSERT INTO signing_keys (kid, alg, encrypted_private_key, public_jwk, activates_at)"
            " VALUES ($1, 'ES256', $2, '{}', now())", garbage_kid, os.urandom(200))
    finally:
        await conn.close()
    port, metrics_port = free_port(), free_port()
    replica = stack.start_service("token_issuer", port=port, key="issuer-after-garbage",
                                  extra_env={"INBOUND_METRICS_PORT": str(metrics_port)})
    issuer = IssuerAs(stack, f"127.0.0.1:{port}")
    try:
        await serving(stack, "token_issuer", f"127.0.0.1:{port}")
        issued = await issuer.issue(IssueRequest(client_id="c", subject="s", scopes=(), format="jwt",
                                                 lifetime_seconds=60))
        jwks = await issuer.jwks()
        assert garbage_kid not in {k["kid"] for k in jwks["keys"]}
        assert jwt.get_unverified_header(issued.access_token)["kid"] != garbage_kid
        assert _verify(issued.access_token, jwks, stack.edge_url + "/api")["sub"] == "s"
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert "inbound_signing_keys_unreadable 1.0" in metrics
        skipped = [json.loads(line) for line in replica.lines if "stored signing key skipped" in line]
        assert [(e["level"], e["kid"]) for e in skipped] == [("error", garbage_kid)]
    finally:
        await issuer.close()
        stack.stop_service("issuer-after-garbage")


def _opens_with(kek: bytes, kid: str, blob: bytes) -> bool:
    """Independent of token_issuer's code: AES-256-GCM, 96-bit nonce first, kid as associated data."""
    try:
        AESGCM(kek).decrypt(blob[:12], blob[12:], kid.encode())
        return True
    except InvalidTag:
        return False


async def _stored_keys(stack) -> dict[str, bytes]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return {r["kid"]: bytes(r["encrypted_private_key"])
                for r in await conn.fetch("SELECT kid, encrypted_private_key FROM signing_keys")}
    finally:
        await conn.close()


async def test_the_key_encryption_key_rotates_while_tokens_keep_flowing(kek_stack):
    """New key first on token_issuer (restarted), rewrap (twice at once), old key dropped
    (restarted again): every token answered 200 throughout verifies and is active. With
    one replica each restart answers 503 for a moment (Kubernetes rolls replicas over);
    no token is lost or made invalid by the rotation."""
    stack = kek_stack
    client, secret = await register_client(stack)
    old_b64 = stack.kek_file().read_text().strip()
    old, new = base64.urlsafe_b64decode(old_b64), secrets.token_bytes(32)
    answers: list[tuple[int, str]] = []  # (status, access token or error)
    flowing = True

    async def load() -> None:
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
            while flowing:
                reply = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                        auth=(client.client_id, secret))
                answers.append((reply.status_code, reply.json().get("access_token") or reply.json().get("error")))
                await asyncio.sleep(0.02)  # pacing: a steady trickle, not a load test

    async def more_tokens(n: int = 5) -> None:
        start = sum(1 for status, _ in answers if status == 200)
        await eventually(lambda: sum(1 for status, _ in answers if status == 200), until=lambda c: c >= start + n,
                         message=f"{n} more tokens answered 200")

    def restart_issuer() -> None:
        stack.stop_service("token_issuer")
        stack.start_service("token_issuer")

    runner = asyncio.create_task(load())
    try:
        await more_tokens()
        first_token = next(token for status, token in answers if status == 200)
        before = await _stored_keys(stack)

        # 1. The new key first on every replica (here: the one), the old one still there to decrypt.
        stack.kek_file().write_text(f"{base64.urlsafe_b64encode(new).decode()}\n{old_b64}\n")
        restart_issuer()
        await serving(stack, "token_issuer", stack.addr("token_issuer"))
        await more_tokens()

        # 2. Rewrap, twice at once (inboundctl and a direct call): each key is rewrapped by exactly one.
        channel = stack.channel("token_issuer", caller=OPERATOR)
        try:
            cli, two = await asyncio.gather(ok(stack, "keys", "rewrap", "--json"),
                                            IssuerClient(channel).rewrap_keys())
        finally:
            await channel.close()
        reported = cli.json()
        # client_registry's sealed secrets are rewrapped by the same command (none on this stack).
        assert reported.pop("sealed_secrets") == {"rewrapped": 0, "current": 0, "unreadable": []}
        one = RewrapReport(**{field: tuple(kids) for field, kids in reported.items()})
        readable = {kid for kid, blob in before.items() if _opens_with(old, kid, blob)}
        assert readable and sorted(one.rewrapped + two.rewrapped) == sorted(readable)
        after = await _stored_keys(stack)
        assert after.keys() == before.keys()  # no key lost
        assert all(_opens_with(new, kid, after[kid]) and not _opens_with(old, kid, after[kid]) for kid in readable)
        assert {kid for kid in after if kid not in readable} == set(one.unreadable) == set(two.unreadable)
        # A rewrap that read the key before another replaced it (the stale ciphertext) changes
        # nothing: the registry's compare-and-swap, as the services' runtime role runs it.
        kid = sorted(readable)[0]
        pool = await asyncpg.create_pool(stack.db_roles.runtime_url if stack.db_roles else stack.database_url,
                                         min_size=1, max_size=1)
        try:
            stale = SigningKeyRepository(pool, None).rewrap_signing_key(kid, before[kid], os.urandom(60))
            assert await stale is False
        finally:
            await pool.close()
        assert await _stored_keys(stack) == after
        await more_tokens()

        assert "0 signing key(s) re-encrypted" in (await ok(stack, "keys", "rewrap")).out  # nothing left

        # 3. The old key dropped.
        stack.kek_file().write_text(base64.urlsafe_b64encode(new).decode() + "\n")
        restart_issuer()
        await serving(stack, "token_issuer", stack.addr("token_issuer"))
        await more_tokens()
    finally:
        flowing = False
        await runner

    print(f"answers: {len(answers)}, by status: "
          f"{ {s: sum(1 for a, _ in answers if a == s) for s in {a for a, _ in answers}} }")
    assert {status for status, _ in answers} <= {200, 503}, "only 'temporarily unavailable' while restarting"
    tokens = [token for status, token in answers if status == 200]
    issuer = IssuerAs(stack)
    try:
        jwks = await issuer.jwks()
        for token in tokens:
            assert _verify(token, jwks, stack.edge_url + "/api")["client_id"] == client.client_id
        sample = [first_token, *tokens[:: max(1, len(tokens) // 20)], tokens[-1]]
        assert [(await issuer.introspect(token)).active for token in sample] == [True] * len(sample)
    finally:
        await issuer.close()

"""token_issuer: replicas share encrypted keys through client_registry; rotations.

Tests that rotate keys run on a system of their own (`keys_stack`): a rotation
changes what every later test would see. Replica tests need separate processes."""
from __future__ import annotations

import base64
import secrets
import subprocess
import sys

import httpx
import jwt
import pytest

from services.devstack import ROOT, free_port
from services.token_issuer.api import IssueRequest
from services.token_issuer.client import IssuerClient
from tests.support import OPERATOR, IssuerAs, eventually, introspection_channel, introspection_pass, serving

pytestmark = pytest.mark.both_modes

# Less than the issuer's periodic key reload (60 s): only the keys-rotated event can make it.
BEFORE_THE_RELOAD = 20.0


@pytest.fixture(scope="module")
def keys_stack(private_stack):
    with private_stack("issuer-keys") as s:
        yield s


@pytest.mark.separate_processes
async def test_two_replicas_publish_the_same_keys_and_verify_each_others_tokens(stack):
    port = free_port()
    stack.start_service("token_issuer", port=port, key="issuer-2")
    await serving(stack, "token_issuer", f"127.0.0.1:{port}")
    try:
        one, two = IssuerAs(stack), IssuerAs(stack, f"127.0.0.1:{port}")
        assert await one.jwks() == await two.jwks()
        issued = await two.issue(IssueRequest(client_id="c", subject="c", scopes=("a",), format="jwt",
                                              lifetime_seconds=60))
        keys = jwt.PyJWKSet.from_dict(await one.jwks())
        kid = jwt.get_unverified_header(issued.access_token)["kid"]
        key = next(k for k in keys.keys if k.key_id == kid)
        claims = jwt.decode(issued.access_token, key.key, algorithms=["ES256"], audience=stack.edge_url + "/api")
        assert claims["sub"] == "c"
        await one.close()
        await two.close()
    finally:
        stack.stop_service("issuer-2")


async def test_issue_refuses_out_of_range_lifetimes_per_item(stack):
    issuer = IssuerAs(stack)
    from inboundlib.oauth.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        await issuer.issue(IssueRequest(client_id="c", subject="c", scopes=(), format="jwt", lifetime_seconds=0))
    ok = await issuer.issue(IssueRequest(client_id="c", subject="c", scopes=(), format="jwt", lifetime_seconds=5))
    assert ok.expires_in == 5
    await issuer.close()


@pytest.mark.separate_processes
def test_a_replica_with_the_wrong_key_encryption_key_refuses_to_start(stack):
    env = stack.service_env("token_issuer")
    del env["INBOUND_KEY_ENCRYPTION_KEYS_FILE"]
    env["INBOUND_KEY_ENCRYPTION_KEYS"] = base64.b64encode(secrets.token_bytes(32)).decode()
    env["INBOUND_GRPC_PORT"] = str(free_port())
    result = subprocess.run([sys.executable, "-m", "services.token_issuer"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "configuration error: no active signing key can be read" in result.stderr
    assert "key-encryption keys" in result.stderr


async def test_the_latest_of_two_rotations_in_one_second_signs(keys_stack):
    issuer = IssuerAs(keys_stack)
    try:
        first = await issuer.rotate_key("ES256", 0)
        second = await issuer.rotate_key("ES256", 0)
        signing = [k.kid for k in await issuer.list_keys() if k.signing and k.alg == "ES256"]
        assert signing == [second.kid] != [first.kid]
        token = await issuer.issue(IssueRequest(client_id="c", subject="c", scopes=(), format="jwt",
                                                lifetime_seconds=60))
        assert jwt.get_unverified_header(token.access_token)["kid"] == second.kid
    finally:
        await issuer.close()


@pytest.mark.separate_processes
async def test_the_introspection_port_serves_introspect_and_nothing_else(stack, make_client):
    import grpc

    client, _ = await make_client()
    port, side_port = free_port(), free_port()
    stack.start_service("token_issuer", port=port, key="issuer-rs",
                        extra_env={"INBOUND_INTROSPECTION_PORT": str(side_port)})
    await serving(stack, "token_issuer", f"127.0.0.1:{port}")
    main = IssuerAs(stack, f"127.0.0.1:{port}")
    # An outside resource server: no client certificate there, a token with inbound.introspect.
    side = introspection_channel(stack, await introspection_pass(stack, f"127.0.0.1:{port}"), f"127.0.0.1:{side_port}")
    try:
        issued = await main.issue(IssueRequest(client_id=client.client_id, subject="s", scopes=(),
                                               format="jwt", lifetime_seconds=60))
        resource_server = IssuerClient(side)
        assert (await resource_server.introspect(issued.access_token)).active
        for call in (lambda: resource_server.issue(IssueRequest(client_id=client.client_id, subject="s", scopes=(),
                                                                format="jwt", lifetime_seconds=60)),
                     lambda: resource_server.rotate_key("ES256", 0),
                     lambda: resource_server.revoke_client_tokens(client.client_id),
                     resource_server.list_keys):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call()
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert (await resource_server.introspect(issued.access_token)).active  # nothing was revoked
        assert (await resource_server.jwks())["keys"]
    finally:
        await main.close()
        await side.close()
        stack.stop_service("issuer-rs")


async def test_rotating_one_algorithms_key_leaves_the_other_algorithms_key_signing(keys_stack):
    """Access tokens sign with ES256's active key, ID tokens with RS256's: a rotation of either
    changes that algorithm's signer alone, and the JWKS publishes both."""
    issuer = IssuerAs(keys_stack)

    async def signing() -> dict[str, str]:
        return {k.alg: k.kid for k in await issuer.list_keys() if k.signing}

    async def access_token_kid() -> str:
        token = await issuer.issue(IssueRequest(client_id="c", subject="c", scopes=(), format="jwt",
                                                lifetime_seconds=60))
        assert jwt.get_unverified_header(token.access_token)["alg"] == "ES256"
        return jwt.get_unverified_header(token.access_token)["kid"]

    try:
        before = await signing()
        assert before.keys() == {"ES256", "RS256"}
        rs = await issuer.rotate_key("RS256", 0)
        assert await signing() == {"ES256": before["ES256"], "RS256": rs.kid}
        assert await access_token_kid() == before["ES256"]
        es = await issuer.rotate_key("ES256", 0)
        assert await signing() == {"ES256": es.kid, "RS256": rs.kid}
        assert await access_token_kid() == es.kid
        published = {k["kid"]: k["alg"] for k in (await issuer.jwks())["keys"]}
        assert published[rs.kid] == "RS256" and published[es.kid] == "ES256"
        assert {before["ES256"], before["RS256"]} <= published.keys()  # retired, their tokens still live
    finally:
        await issuer.close()


async def test_a_rotation_on_one_replica_reaches_the_others_over_nats(keys_stack):
    # (How fast: tests/slo/test_propagation.py.)
    stack = keys_stack
    port = free_port()
    stack.start_service("token_issuer", port=port, key="issuer-rot")
    await serving(stack, "token_issuer", f"127.0.0.1:{port}")
    first, other = IssuerAs(stack), IssuerAs(stack, f"127.0.0.1:{port}")
    try:
        new = await first.rotate_key("ES256", 0)

        async def kid_on_other() -> str:
            token = await other.issue(IssueRequest(client_id="c", subject="c", scopes=(), format="jwt",
                                                   lifetime_seconds=60))
            return jwt.get_unverified_header(token.access_token)["kid"]

        await eventually(kid_on_other, until=lambda kid: kid == new.kid, timeout=BEFORE_THE_RELOAD,
                         message="the other replica signing with the new key")
        # The edge's JWKS cache (30 s) is dropped on the event too.
        await eventually(lambda: {k["kid"] for k in httpx.get(stack.edge_url + "/oauth/jwks").json()["keys"]},
                         until=lambda kids: new.kid in kids, timeout=BEFORE_THE_RELOAD,
                         message="the new key in the edge's JWKS")
    finally:
        await first.close()
        await other.close()
        stack.stop_service("issuer-rot")


async def test_a_rotation_without_a_delay_takes_the_configured_one(keys_stack):
    """RotateKeyRequest with no delay set must not mean 'sign now'."""
    import grpc

    from inbound.issuer.v1 import issuer_pb2, issuer_pb2_grpc

    stack = keys_stack
    port = free_port()
    stack.start_service("token_issuer", port=port, key="issuer-delay",
                        extra_env={"INBOUND_KEY_ACTIVATION_DELAY": "3600"})
    await serving(stack, "token_issuer", f"127.0.0.1:{port}")
    channel = stack.channel("token_issuer", addr=f"127.0.0.1:{port}", caller=OPERATOR)
    try:
        stub = issuer_pb2_grpc.TokenIssuerStub(channel)
        reply = await stub.RotateKey(issuer_pb2.RotateKeyRequest(alg="ES256"), timeout=10)
        assert not reply.key.signing and reply.key.activates_at - reply.key.created_at >= 3599
        with pytest.raises(grpc.aio.AioRpcError) as negative:
            await stub.RotateKey(issuer_pb2.RotateKeyRequest(alg="ES256", activation_delay_seconds=-5), timeout=10)
        assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
        stack.stop_service("issuer-delay")


async def test_replicas_starting_together_on_an_empty_database_create_one_key_per_algorithm(separate_stack):
    """Each replica signs ES256 access tokens and RS256 ID tokens; the first start of several
    (each with its own connection pool, all of them past their 'no keys yet' read before any
    adds one) stores one key of each algorithm, not one per replica, and every replica signs
    with the same two (the registry's per-algorithm only_if_none, serialised in Postgres)."""
    import asyncio
    import os
    import uuid
    from pathlib import Path

    import asyncpg

    from inboundlib import db
    from services.client_registry.keys import SigningKeyRepository
    from services.token_issuer.issuer import TokenIssuer
    from services.token_issuer.keys import KeyEncryptor

    migrations = Path(__file__).resolve().parents[2] / "services" / "client_registry" / "migrations"
    name = "inbound_keys_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(separate_stack.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = separate_stack.database_url.rpartition("/")[0] + "/" + name
    replicas = 3
    listed = asyncio.Barrier(replicas)

    class Replica(SigningKeyRepository):
        """The registry as one replica reaches it; its first read waits for every replica's."""
        first = True

        async def list_signing_keys(self):
            keys = await super().list_signing_keys()
            if self.first:
                self.first = False
                await listed.wait()
            return keys

    pools = [await db.create_pool(url, min_size=1, max_size=2) for _ in range(replicas)]
    try:
        await db.migrate(pools[0], migrations)
        encryptor = KeyEncryptor(os.urandom(32))
        issuers = [TokenIssuer(Replica(pool, None), encryptor, issuer="i", default_audience="a") for pool in pools]
        await asyncio.gather(*(issuer.start() for issuer in issuers))
        stored = await pools[0].fetch("SELECT kid, alg FROM signing_keys ORDER BY alg")
        assert [r["alg"] for r in stored] == ["ES256", "RS256"]
        for issuer in issuers:
            await issuer.reload_keys()
            assert {k.alg: k.kid for k in await issuer.list_keys() if k.signing} == {r["alg"]: r["kid"] for r in stored}
    finally:
        for pool in pools:
            await pool.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()

"""Signing keys at rest: a corrupt stored key does not stop token_issuer, and the
key-encryption key rotates while tokens keep flowing.

These change the stored keys and token_issuer's key-encryption keys, so they run
on a system of their own (`kek_stack`), in file order."""
from __future__ import annotations

import json
import os

import asyncpg
import httpx
import jwt
import pytest

from inboundlib import grpcx
from services.devstack import free_port
from services.token_issuer.api import IssueRequest
from services.token_issuer.client import IssuerClient
from tests.support import serving


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
    channel = grpcx.channel(f"127.0.0.1:{port}")
    try:
        await serving(f"127.0.0.1:{port}")
        issuer = IssuerClient(channel)
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
        await channel.close()
        stack.stop_service("issuer-after-garbage")

"""Postgres down for a while: JWT tokens for clients already cached keep being
issued (that path never touches Postgres), opaque tokens answer 503
temporarily_unavailable rather than 500, and everything recovers when Postgres
is back — with the audit events of the outage stored once it is."""
from __future__ import annotations

import asyncpg
import httpx
import jwt
import pytest

from services.client_registry.api import ClientSpec
from services.client_registry.client import RegistryClient
from tests.support import OPERATOR, audit_caught_up, audit_copies, eventually


@pytest.fixture(scope="module")
def pg_stack(private_stack):
    """A Postgres of its own too: the test stops it."""
    with private_stack("pg-outage", own_postgres=True) as s:
        yield s


async def test_jwt_tokens_flow_and_opaque_ones_fail_softly_while_postgres_is_down(pg_stack):
    if pg_stack.postgres is None:
        pytest.skip("needs the private Postgres")
    channel = pg_stack.channel("client_registry", caller=OPERATOR)
    registry = RegistryClient(channel)
    jwt_client, jwt_secret = await registry.create_client(ClientSpec(name="pg-jwt"))
    opaque_client, opaque_secret = await registry.create_client(ClientSpec(name="pg-opaque", token_format="opaque"))
    await channel.close()

    async def token(client, secret) -> httpx.Response:
        async with httpx.AsyncClient(base_url=pg_stack.edge_url, timeout=10) as http:
            return await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                   auth=(client.client_id, secret))

    assert (await token(jwt_client, jwt_secret)).status_code == 200  # both clients now cached
    assert (await token(opaque_client, opaque_secret)).status_code == 200

    pg_stack.postgres.stop()
    jtis = []
    try:
        for _ in range(10):
            reply = await token(jwt_client, jwt_secret)
            assert reply.status_code == 200, reply.text
            jtis.append(jwt.decode(reply.json()["access_token"], options={"verify_signature": False})["jti"])
        opaque = await token(opaque_client, opaque_secret)
        assert opaque.status_code == 503, opaque.text
        assert opaque.json()["error"] == "temporarily_unavailable"
    finally:
        pg_stack.postgres.start()

    await eventually(lambda: token(opaque_client, opaque_secret), until=lambda reply: reply.status_code == 200,
                     message="opaque tokens again once Postgres is back")
    conn = await asyncpg.connect(pg_stack.database_url)
    try:
        await eventually(lambda: audit_copies(conn, jtis), until=lambda copies: len(copies) == len(jtis),
                         message="the audit rows of the tokens issued during the outage")
        await audit_caught_up(pg_stack)
        assert await audit_copies(conn, jtis) == {jti: 1 for jti in jtis}, \
            "the audit events of the outage are stored, each once, when Postgres is back"
    finally:
        await conn.close()
    for sp in pg_stack.services.values():
        assert sp.proc.poll() is None, f"{sp.name} died during the outage"

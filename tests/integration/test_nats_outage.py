"""A NATS outage fails no token request, and the events of that time still reach
the audit log, exactly once, when NATS is back. Runs on a system of its own
(its own NATS, its own database) so stopping NATS disturbs no other test."""
from __future__ import annotations

import asyncpg
import httpx
import jwt
import pytest

from services.client_registry.api import ClientSpec
from services.client_registry.client import RegistryClient
from tests.support import OPERATOR, audit_caught_up, audit_copies, eventually


@pytest.fixture(scope="module")
def own_stack(private_stack):
    with private_stack("nats-outage") as s:
        yield s


async def test_tokens_keep_flowing_while_nats_is_down_and_their_events_arrive_later(own_stack):
    channel = own_stack.channel("client_registry", caller=OPERATOR)
    client, secret = await RegistryClient(channel).create_client(ClientSpec(name="outage"))
    await channel.close()

    own_stack.nats.stop()
    jtis = []
    async with httpx.AsyncClient(base_url=own_stack.edge_url, timeout=10) as http:
        for _ in range(30):
            reply = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                    auth=(client.client_id, secret))
            assert reply.status_code == 200, reply.text
            jtis.append(jwt.decode(reply.json()["access_token"], options={"verify_signature": False})["jti"])
        denied = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                 auth=(client.client_id, "wrong"))
        assert denied.status_code == 401
    # Events wait in the services' buffers while NATS is down.
    # The issuer (which publishes token_issued) has noticed the outage: its events are buffered, not sent.
    await eventually(lambda: own_stack.services["token_issuer"].lines, until=lambda lines: any(
        "nats disconnected" in line for line in lines), message="the token issuer noticing that NATS is gone")
    own_stack.nats.start()

    conn = await asyncpg.connect(own_stack.database_url)
    try:
        await eventually(lambda: audit_copies(conn, jtis), until=lambda copies: len(copies) == len(jtis),
                         message="the audit rows of the tokens issued during the outage")
        await audit_caught_up(own_stack)
        copies = await audit_copies(conn, jtis)
        denials = await conn.fetchval("SELECT count(*) FROM audit_log WHERE type = 'token_denied'"
                                      " AND client_id = $1 AND detail->>'error' = 'invalid_client'",
                                      client.client_id)
    finally:
        await conn.close()
    assert copies == {jti: 1 for jti in jtis}, "every event of the outage arrives, each exactly once"
    assert denials == 1

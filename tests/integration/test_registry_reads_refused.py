"""A client lookup Postgres cancels (here: waiting on a lock a migration would hold,
cancelled as statement_timeout or an operator's pg_cancel_backend would) is answered
UNAVAILABLE by the running registry, never "no such client". Real Postgres, real gRPC."""
from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from inbound.registry.v1 import registry_pb2 as pb
from inbound.registry.v1 import registry_pb2_grpc
from tests.support import GRANT_SERVICE, eventually


@pytest.fixture
async def channel(stack):
    channel = stack.channel("client_registry", caller=GRANT_SERVICE)  # client lookups are a grant service's
    yield channel
    await channel.close()


async def test_a_cancelled_client_lookup_is_unavailable_not_unknown(stack, channel, make_client):
    client, _ = await make_client()
    stub = registry_pb2_grpc.ClientsStub(channel)
    request = pb.GetClientsRequest(client_ids=[client.client_id])
    migration = await asyncpg.connect(stack.database_url)
    try:
        tx = migration.transaction()
        await tx.start()
        await migration.execute("LOCK TABLE clients IN ACCESS EXCLUSIVE MODE")
        lookup = asyncio.ensure_future(stub.GetClients(request, timeout=30))

        async def waiting_lookup() -> int | None:
            # The registry's backend waiting for our lock on `clients` (found by the lock, not
            # by its query text: a statement still being parsed may not show its text yet).
            if lookup.done():
                raise AssertionError(f"the lookup ended before it waited on the lock: {lookup.exception()}")
            return await migration.fetchval(
                "SELECT pid FROM pg_locks WHERE NOT granted AND relation = 'clients'::regclass"
                " AND pid <> pg_backend_pid() LIMIT 1")

        pid = await eventually(waiting_lookup)
        assert await migration.fetchval("SELECT pg_cancel_backend($1)", pid)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await lookup
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await tx.rollback()
    finally:
        await migration.close()
    reply = await stub.GetClients(request, timeout=5)  # the client was there all along
    assert reply.results[0].client.client_id == client.client_id

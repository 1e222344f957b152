"""Shared fixtures: the real system (Postgres, NATS, every service as its own
process) started once per test session through the same code as `make run`.

DATABASE_URL / NATS_URL, when set, are used instead of private servers; the
suite then works in a fresh database of its own so it never touches yours.
"""
from __future__ import annotations

import os
import secrets
import uuid

import pytest

from inboundlib.devstack import Stack


def _fresh_database(url: str) -> str:
    """Create an empty database beside the one in `url` and return its URL."""
    import asyncio

    import asyncpg

    name = "inbound_test_" + uuid.uuid4().hex[:12]

    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("stack")
    database_url = os.environ.get("DATABASE_URL")
    s = Stack(state, fixed_ports=False, echo=False,
              database_url=_fresh_database(database_url) if database_url else "",
              nats_url=os.environ.get("NATS_URL", ""),
              extra_env={"INBOUND_KEY_ACTIVATION_DELAY": "0", "INBOUND_CLIENT_CACHE_TTL": "60"})
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def fresh_database(stack):
    """Make an empty database on the suite's Postgres, for a system of a test's own."""
    return lambda: _fresh_database(stack.database_url)


@pytest.fixture(scope="session")
async def registry(stack):
    from inboundlib import grpcx
    from services.client_registry.client import RegistryClient

    channel = grpcx.channel(stack.addr("client_registry"))
    yield RegistryClient(channel)
    await channel.close()


@pytest.fixture
async def make_client(registry):
    """Register a client and return (record, secret)."""
    from services.client_registry.api import ClientSpec

    async def make(**kwargs):
        kwargs.setdefault("name", "test-" + secrets.token_hex(4))
        kwargs.setdefault("grant_types", ["client_credentials"])
        kwargs.setdefault("scopes", ["api.read", "api.write"])
        return await registry.create_client(ClientSpec(**kwargs))

    return make


@pytest.fixture(scope="session")
def http(stack):
    import httpx

    with httpx.Client(base_url=stack.edge_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
async def issuer(stack):
    from inboundlib import grpcx
    from services.token_issuer.client import IssuerClient

    channel = grpcx.channel(stack.addr("token_issuer"))
    yield IssuerClient(channel)
    await channel.close()

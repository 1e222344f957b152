"""What a process missed while NATS was away is caught up as soon as it reconnects,
not only at the next resync/TTL (fake bus: the hooks are run by hand)."""
from __future__ import annotations

import dataclasses
import time

from services.client_registry.api import ClientRecord, RevocationRecord
from services.client_registry.cache import ClientCache
from services.token_issuer.revocations import RevocationSet, RevocationSync


def record(**overrides) -> ClientRecord:
    base = ClientRecord(client_id="app", name="app", secret_hash="", public=False,
                        grant_types=("client_credentials",), scopes=(), redirect_uris=(), access_token_lifetime=900,
                        refresh_token_lifetime=1, token_format="jwt", pkce_required=False, active=True, logo_url="",
                        comments="", created_at=1, updated_at=1)
    return dataclasses.replace(base, **overrides)


class FakeRegistry:
    def __init__(self):
        self.rows: list[RevocationRecord] = []

    async def add_revocations(self, records):
        for r in records:
            self.rows.append(RevocationRecord(**{**r.__dict__, "id": len(self.rows) + 1}))
        return [r.id for r in self.rows[-len(records):]]

    async def list_revocations(self, after_id=0, limit=10_000):
        return [r for r in self.rows if r.id > after_id][:limit]


class FakeBus:
    def __init__(self):
        self.hooks = []

    async def subscribe(self, subject, handler):
        pass

    def on_reconnect(self, hook):
        self.hooks.append(hook)

    async def reconnect(self):
        for hook in self.hooks:
            await hook()


class Source:
    def __init__(self, client):
        self.client = client

    async def get_client(self, client_id):
        return self.client


async def test_the_client_cache_forgets_everything_on_reconnect():
    source, bus = Source(record()), FakeBus()
    cache = ClientCache(source, ttl=3600)
    await cache.attach(bus)
    assert (await cache.get_client("app")).active
    source.client = dataclasses.replace(source.client, active=False)  # its ClientChanged event was missed
    await bus.reconnect()
    assert not (await cache.get_client("app")).active


async def test_revocations_missed_while_disconnected_apply_on_reconnect():
    registry, bus, revocations = FakeRegistry(), FakeBus(), RevocationSet()
    sync = RevocationSync(revocations, registry, bus, resync_seconds=3600)
    await sync.start()
    try:
        await registry.add_revocations([RevocationRecord(kind="jti", value="missed", client_id="c",
                                                         expires_at=int(time.time()) + 600)])
        await bus.reconnect()
        assert revocations.is_revoked(jti="missed", grant_id="", client_id="c", issued_at=0)
    finally:
        await sync.stop()

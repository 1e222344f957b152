"""What a process missed while NATS was away is caught up as soon as it reconnects,
not only at the next resync/TTL (fake bus: the hooks are run by hand)."""
from __future__ import annotations

import dataclasses
import time

from services.client_registry.api import RevocationRecord
from services.client_registry.cache import CLIENT_CACHE, ClientCache
from services.token_issuer.revocations import RevocationSet, RevocationSync
from tests.fakes import FakeBus, FakeClients, FakeRevocations, client_record


async def test_the_client_cache_forgets_everything_on_reconnect():
    source, bus = FakeClients(client_record()), FakeBus()
    cache = ClientCache(source, dataclasses.replace(CLIENT_CACHE, ttl=3600))
    await cache.attach(bus)
    assert (await cache.get_client("app")).active
    source.put(dataclasses.replace(source.clients["app"], active=False))  # its RegistryChanged event was missed
    await bus.reconnect()
    assert not (await cache.get_client("app")).active


async def test_revocations_missed_while_disconnected_apply_on_reconnect():
    registry, bus, revocations = FakeRevocations(), FakeBus(), RevocationSet()
    sync = RevocationSync(revocations, registry, bus, resync_seconds=3600)
    await sync.start()
    try:
        await registry.add_revocations([RevocationRecord(kind="jti", value="missed", client_id="c",
                                                         expires_at=int(time.time()) + 600)])
        await bus.reconnect()
        assert revocations.is_revoked(jti="missed", grant_id="", client_id="c", issued_at=0)
    finally:
        await sync.stop()

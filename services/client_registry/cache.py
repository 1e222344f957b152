"""A read-through cache of client records for the services on the hot path
(inboundlib.cache: TTL, LRU, unknown ids apart, single-flight, serve-stale).

Entries drop when a `RegistryChanged` event names the client (any replica of
client_registry publishes one), and everything drops when NATS reconnects.
While the registry is unavailable, a client's expired record is served for
up to INBOUND_CLIENT_CACHE_MAX_STALE seconds: a disabled, deleted or changed
client's event still removes it, so what is served stale is only a record
nobody has changed.
"""
from __future__ import annotations

from typing import Protocol

from inboundlib.cache import CacheSettings, ReadThroughCache, registry_changes
from inboundlib.config import Env
from inboundlib.events import ENTITY_CLIENT, EventBus
from services.client_registry.api import ClientRecord

# A Postgres failover or restart takes seconds to a few minutes: 15 minutes of
# serve-stale rides it out, and bounds how long a change whose event was lost
# can go unseen while the registry is down.
CLIENT_CACHE = CacheSettings(ttl=60.0, negative_ttl=5.0, max_entries=100_000, max_negative_entries=10_000,
                             max_stale=900.0)

# Which events drop a client, and which client they name.
CLIENT_CHANGES = registry_changes(ENTITY_CLIENT)


def client_cache_settings(env: Env) -> CacheSettings:
    """INBOUND_CLIENT_CACHE_{TTL, NEGATIVE_TTL, MAX_ENTRIES, MAX_NEGATIVE_ENTRIES, MAX_STALE}."""
    return CacheSettings.from_env(env, "client", CLIENT_CACHE)


class ClientSource(Protocol):
    async def get_client(self, client_id: str) -> ClientRecord | None: ...


class ClientCache:
    def __init__(self, source: ClientSource, settings: CacheSettings = CLIENT_CACHE):
        self.source = source
        self.cache: ReadThroughCache[str, ClientRecord] = ReadThroughCache(
            "clients", settings, load=source.get_client)
        self.get_client = self.cache.get  # the hot path, without a coroutine of our own around it

    async def attach(self, events: EventBus) -> None:
        await self.cache.attach(events, CLIENT_CHANGES)

    def invalidate(self, client_id: str) -> None:
        self.cache.invalidate(client_id)

    async def invalidate_all(self) -> None:
        self.cache.invalidate_all()

"""A read-through cache of client records for the services on the hot path.

Entries drop when a `RegistryChanged` event names the client (any replica of
client_registry publishes it), and expire after `ttl` seconds anyway, so a
lost event costs at most `ttl` of staleness. Unknown ids are cached briefly
too, so that a flood of requests with made-up client ids cannot reach Postgres.
Concurrent misses for one id share one lookup.
"""
from __future__ import annotations

import asyncio
import time
from typing import Protocol

from inbound.events.v1 import events_pb2
from inboundlib.events import CLIENT_CHANGED, ENTITY_CLIENT, EventBus
from services.client_registry.api import ClientRecord

MAX_UNKNOWN = 10_000


class ClientSource(Protocol):
    async def get_client(self, client_id: str) -> ClientRecord | None: ...


class ClientCache:
    def __init__(self, source: ClientSource, *, ttl: float = 60.0, negative_ttl: float = 5.0,
                 max_entries: int = 100_000):
        self.source = source
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, ClientRecord]] = {}
        self._unknown: dict[str, float] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._generation = 0

    async def attach(self, events: EventBus) -> None:
        await events.subscribe(CLIENT_CHANGED, self._on_event)
        events.on_reconnect(self.invalidate_all)  # changes made while we were disconnected were missed

    async def invalidate_all(self) -> None:
        self._entries.clear()
        self._unknown.clear()
        self._generation += 1

    async def _on_event(self, event: events_pb2.Event) -> None:
        if event.HasField("registry_changed") and event.registry_changed.entity == ENTITY_CLIENT:
            self.invalidate(event.registry_changed.id)

    def invalidate(self, client_id: str) -> None:
        self._entries.pop(client_id, None)
        self._unknown.pop(client_id, None)
        # A lookup in flight may return the old record: make it not stick.
        self._generation += 1

    async def get_client(self, client_id: str) -> ClientRecord | None:
        entry = self._entries.get(client_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        unknown_until = self._unknown.get(client_id)
        if unknown_until is not None and unknown_until > time.monotonic():
            return None
        loading = self._loading.get(client_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future = asyncio.get_running_loop().create_future()
        self._loading[client_id] = future
        generation = self._generation
        try:
            client = await self.source.get_client(client_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody logs it as lost
            raise
        finally:
            self._loading.pop(client_id, None)
        future.set_result(client)
        if generation == self._generation:
            if client is None:
                # Made-up ids are kept apart, in a small table of their own: a flood of
                # them cannot push real clients out of the cache.
                if len(self._unknown) >= MAX_UNKNOWN:
                    self._unknown.clear()
                self._unknown[client_id] = time.monotonic() + self.negative_ttl
            else:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[client_id] = (time.monotonic() + self.ttl, client)
        return client

"""The edge's copy of token_issuer's JWKS (RFC 7517), through inboundlib.cache.

Dropped when a key is rotated (and when NATS reconnects); while the issuer is
unreachable the last document is served for up to INBOUND_JWKS_CACHE_MAX_STALE
seconds. It is public and holds only verification keys: a stale copy can at
worst lack a key the issuer, being unreachable, is not signing with yet.
"""
from __future__ import annotations

from inboundlib.cache import CacheSettings, Invalidation, ReadThroughCache
from inboundlib.config import Env
from inboundlib.events import KEYS_ROTATED, EventBus
from services.token_issuer.client import IssuerClient

JWKS = "jwks"  # the one key: the whole document
ROTATIONS = Invalidation(KEYS_ROTATED, lambda event: (JWKS,))  # any rotation drops the document
JWKS_CACHE = CacheSettings(ttl=30.0, negative_ttl=1.0, max_entries=1, max_negative_entries=1, max_stale=3600.0)


def jwks_cache_settings(env: Env) -> CacheSettings:
    """INBOUND_JWKS_CACHE_TTL and INBOUND_JWKS_CACHE_MAX_STALE (the other bounds do not matter here)."""
    return CacheSettings.from_env(env, "jwks", JWKS_CACHE)


class JwksCache:
    def __init__(self, issuer: IssuerClient, settings: CacheSettings = JWKS_CACHE):
        self.cache: ReadThroughCache[str, dict] = ReadThroughCache("jwks", settings, load=lambda _: issuer.jwks())

    async def attach(self, events: EventBus) -> None:
        await self.cache.attach(events, ROTATIONS)

    async def get(self) -> dict:
        return await self.cache.get(JWKS)

"""Stored opaque tokens by SHA-256, for introspection and revocation (inboundlib.cache).

A stored access-token record never changes (revocation lives in the revocation set
and a client's state in its record, both checked on every call), so no event
invalidates it, and a cached one may be served stale for long while the
registry is unavailable: its own `expires_at` is still checked on every call.
A refresh token's record does change (consumed by a rotation, revoked with its
family), so it is never answered from the cache: always read fresh from the
registry, and never kept.
A token that is not cached needs the registry: during an outage its
introspection answers temporarily_unavailable (503), never a guess.
Unknown hashes are cached briefly, apart, so guesses neither reach Postgres
nor evict real tokens.
"""
from __future__ import annotations

from inboundlib.cache import CacheSettings, ReadThroughCache
from inboundlib.config import Env
from services.client_registry.api import OpaqueTokenRecord, TokenStore

# An hour of serve-stale: longer than the default access-token lifetime (1800 s).
OPAQUE_TOKEN_CACHE = CacheSettings(ttl=300.0, negative_ttl=5.0, max_entries=200_000, max_negative_entries=10_000,
                                   max_stale=3600.0)


def opaque_token_cache_settings(env: Env) -> CacheSettings:
    """INBOUND_OPAQUE_TOKEN_CACHE_{TTL, NEGATIVE_TTL, MAX_ENTRIES, MAX_NEGATIVE_ENTRIES, MAX_STALE}."""
    return CacheSettings.from_env(env, "opaque_token", OPAQUE_TOKEN_CACHE)


class OpaqueTokenCache:
    def __init__(self, registry: TokenStore, settings: CacheSettings = OPAQUE_TOKEN_CACHE):
        self.registry = registry
        self.cache: ReadThroughCache[bytes, OpaqueTokenRecord] = ReadThroughCache(
            "opaque_tokens", settings, load_many=lambda hashes: registry.get_opaque_tokens(hashes))

    async def get(self, token_hash: bytes, *, refresh: bool = False) -> OpaqueTokenRecord | None:
        """`refresh`: the token looks like a refresh token (its prefix): straight to the
        registry. Whatever the caller guessed, a refresh record is never kept nor served
        from the cache."""
        if not refresh:
            record = await self.cache.get(token_hash)
            if record is None or record.kind != "refresh":
                return record
            # Cached a moment ago by this very load, or by one racing it: drop it and read fresh.
            self.cache.invalidate(token_hash)
        return (await self.registry.get_opaque_tokens([token_hash]))[0]

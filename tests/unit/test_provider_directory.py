"""third_party_token's provider directory and mapped-user cache: a registry change event
reaches them (a disabled provider, a disabled user), the keys of active providers are
prefetched, a registry that cannot answer leaves the last list standing, and a
discovery document naming another issuer vouches for nothing."""
from __future__ import annotations

import dataclasses

import jwt
import pytest

from inboundlib.events import ENTITY_PROVIDER, PROVIDER_CHANGED, USER_CHANGED, registry_changed
from inboundlib.jose.validator import InvalidJwt, JwtValidator
from inboundlib.oauth.errors import KeysPending
from services.client_registry.api import OidcProvider, UserRecord
from services.third_party_token.providers import (
    FederatedUserCache,
    ForeignTokenVerifier,
    ProviderDirectory,
    Refused,
)
from tests.fakes import FakeBus

P = OidcProvider(name="p", issuer="https://idp.example", discovery_url="https://idp.example/.well-known/openid-configuration",
                 audiences=("app",))
ALICE = UserRecord(id="u1", username="alice", email="a@x", display_name="", active=True, roles=())


class Store:
    def __init__(self, *providers: OidcProvider):
        self.providers = list(providers)
        self.loads = 0
        self.down: BaseException | None = None

    async def list_providers(self):
        self.loads += 1
        if self.down is not None:
            raise self.down
        return list(self.providers)


class Fetcher:
    """The fetcher's cache: `documents` by URL (a miss: KeysPending); records what is warmed."""

    def __init__(self, documents: dict | None = None):
        self.documents = documents or {}
        self.warmed: list[tuple[str, str]] = []

    def warm(self, url, kind, max_cache=None):
        self.warmed.append((kind, url))

    def key_set(self, url, *, max_cache=None):
        raise AssertionError(f"keys fetched from {url}")

    def discovery(self, url, *, max_cache=None):
        if url not in self.documents:
            raise KeysPending()
        return self.documents[url]


async def started(store, fetcher=None, bus=None) -> ProviderDirectory:
    directory = ProviderDirectory(store, fetcher or Fetcher(), reload_seconds=3600)
    await directory.start(bus or FakeBus())
    return directory


async def test_a_provider_change_event_reloads_the_list():
    store, bus = Store(P), FakeBus()
    directory = await started(store, bus=bus)
    assert (await directory.provider(P.issuer))[0].active
    store.providers = [dataclasses.replace(P, active=False)]
    assert (await directory.provider(P.issuer))[0].active  # no event yet: the list held
    bus.publish(PROVIDER_CHANGED, registry_changed(ENTITY_PROVIDER, "p", "updated"))
    await bus.deliver()
    assert not (await directory.provider(P.issuer))[0].active
    await directory.stop()


async def test_a_reconnect_reloads_and_an_unreachable_registry_leaves_the_last_list():
    store, bus = Store(P), FakeBus()
    directory = await started(store, bus=bus)
    store.down = ConnectionError("registry away")
    await bus.reconnect()
    assert (await directory.provider(P.issuer))[0] == P  # stale but standing
    loads = store.loads
    for _ in range(5):
        assert (await directory.provider(P.issuer))[0] == P
    assert store.loads == loads  # not every token asks a registry that is away
    store.down = None
    store.providers = []
    await bus.reconnect()
    assert await directory.provider(P.issuer) is None
    await directory.stop()


async def test_active_providers_keys_are_prefetched():
    doc = {"issuer": P.issuer, "jwks_uri": "https://idp.example/jwks"}
    off = dataclasses.replace(P, name="off", issuer="https://off.example", discovery_url="https://off.example/d",
                              active=False)
    fetcher = Fetcher({P.discovery_url: doc})
    directory = await started(Store(P, off), fetcher)
    assert ("discovery", P.discovery_url) in fetcher.warmed and ("jwks", doc["jwks_uri"]) in fetcher.warmed
    assert not [url for _, url in fetcher.warmed if "off.example" in url]
    await directory.stop()


async def test_a_discovery_document_of_another_issuer_vouches_for_nothing():
    fetcher = Fetcher({P.discovery_url: {"issuer": "https://evil.example", "jwks_uri": "https://evil.example/jwks"}})
    directory = await started(Store(P), fetcher)
    _, keys = await directory.provider(P.issuer)
    with pytest.raises(InvalidJwt):
        keys.keys()
    await directory.stop()


class Users:
    def __init__(self, *users):
        self.users = {u.id: u for u in users}
        self.lookups = 0

    async def find_user(self, field, value):
        self.lookups += 1
        return next((u for u in self.users.values() if getattr(u, field) == value), None)


async def test_a_user_change_event_drops_the_cached_user():
    users, bus = Users(ALICE), FakeBus()
    cache = FederatedUserCache(users)
    await cache.attach(bus)
    assert (await cache.find("email", "a@x")).active
    users.users["u1"] = dataclasses.replace(ALICE, active=False)
    assert (await cache.find("email", "a@x")).active and users.lookups == 1  # cached
    bus.publish(USER_CHANGED, registry_changed("user", "u1", "updated"))
    await bus.deliver()
    assert not (await cache.find("email", "a@x")).active


async def test_an_unknown_issuer_and_a_disabled_provider_are_refused():
    directory = await started(Store(dataclasses.replace(P, active=False)))
    verifier = ForeignTokenVerifier(directory, FederatedUserCache(Users(ALICE)), JwtValidator())
    for iss in (P.issuer, "https://unknown.example"):
        with pytest.raises(Refused):
            await verifier.provider_of(jwt.encode({"iss": iss}, "k" * 32))
    await directory.stop()

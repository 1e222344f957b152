"""inboundlib.cache, tested once for every cache built on it (clients, opaque tokens,
JWKS, ...). Time is a fake clock moved by hand; loads are counted by the fake source,
so every assertion rests on what reached the source, not on the cache's own word."""
from __future__ import annotations

import asyncio
import dataclasses
import uuid

import grpc
import pytest
from prometheus_client import REGISTRY

from inbound.events.v1 import events_pb2
from inboundlib.cache import CacheSettings, ReadThroughCache
from inboundlib.config import ConfigError, Env
from inboundlib.events import CLIENT_CHANGED, ENTITY_SIGNING_KEY, SIGNING_KEY_CHANGED, registry_changed
from services.client_registry.cache import CLIENT_CACHE, CLIENT_CHANGES, ClientCache, client_cache_settings
from tests.fakes import FakeBus, FakeClients, client_record
from tests.support import eventually

SETTINGS = CacheSettings(ttl=60.0, negative_ttl=5.0, max_entries=100, max_negative_entries=10, max_stale=300.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")


class Source:
    """A key-value source that counts loads per key; `known` keys answer `value-<key>-<version>`."""

    def __init__(self, known=()):
        self.known = set(known)
        self.version = 1
        self.loads: list[object] = []
        self.batches: list[list[object]] = []
        self.failure: BaseException | None = None
        self.gate: asyncio.Event | None = None

    async def load(self, key):
        self.loads.append(key)
        value = f"value-{key}-{self.version}" if key in self.known else None  # read when the load begins
        if self.gate is not None:
            await self.gate.wait()  # ... and answered when the gate opens
        if self.failure is not None:
            raise self.failure
        return value

    async def load_many(self, keys):
        self.batches.append(list(keys))
        return [await self.load(key) for key in keys]


async def loads_begun(source: Source, count: int = 1) -> None:
    """Let the event loop run until the source has seen `count` loads (no clock involved)."""
    for _ in range(100):
        if len(source.loads) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"expected {count} loads, saw {source.loads}")


def make(source: Source, settings: CacheSettings = SETTINGS, *, batch: bool = False):
    clock = Clock()
    name = "test-" + uuid.uuid4().hex[:8]
    cache = ReadThroughCache(name, settings, clock=clock,
                             **({"load_many": source.load_many} if batch else {"load": source.load}))
    return cache, clock


def metric(name: str, cache: ReadThroughCache, **labels) -> float:
    return REGISTRY.get_sample_value(name, {"cache": cache.name, **labels}) or 0.0


# --- TTL ------------------------------------------------------------------------------------------

async def test_an_entry_is_served_until_its_ttl_then_loaded_again():
    source = Source(known={"a"})
    cache, clock = make(source)
    assert await cache.get("a") == "value-a-1"
    source.version = 2
    clock.now += SETTINGS.ttl - 0.1
    assert await cache.get("a") == "value-a-1"
    assert source.loads == ["a"]
    clock.now += 0.2
    assert await cache.get("a") == "value-a-2"
    assert source.loads == ["a", "a"]


# --- bounded LRU ----------------------------------------------------------------------------------

async def test_a_full_cache_evicts_the_least_recently_used_entry_only():
    source = Source(known={"a", "b", "c", "d"})
    cache, _ = make(source, dataclasses.replace(SETTINGS, max_entries=3, max_negative_entries=1))
    for key in ("a", "b", "c"):
        await cache.get(key)
    await cache.get("a")  # a is now the most recently used; b the least
    await cache.get("d")
    assert len(source.loads) == 4
    for key in ("a", "c", "d"):
        await cache.get(key)
    assert len(source.loads) == 4, "the other entries stayed (nothing cleared wholesale)"
    await cache.get("b")
    assert source.loads[-1] == "b", "b was the one evicted"
    assert metric("inbound_cache_evictions_total", cache, table="positive") == 2  # d evicted b, then b evicted a


# --- negative entries apart -----------------------------------------------------------------------

async def test_a_flood_of_unknown_keys_evicts_no_known_entry():
    source = Source(known={"a", "b", "c"})
    cache, _ = make(source, dataclasses.replace(SETTINGS, max_entries=3, max_negative_entries=2))
    for key in ("a", "b", "c"):
        assert await cache.get(key) is not None
    for i in range(100):
        assert await cache.get(f"made-up-{i}") is None
    loads = len(source.loads)
    for key in ("a", "b", "c"):
        assert await cache.get(key) == f"value-{key}-1"
    assert len(source.loads) == loads, "every known entry survived the flood"
    assert len(cache) == 3 + 2, "unknown keys are bounded by their own, smaller bound"
    assert metric("inbound_cache_evictions_total", cache, table="negative") == 98


async def test_unknown_keys_are_cached_for_the_shorter_negative_ttl():
    source = Source(known={"a"})
    cache, clock = make(source)
    assert await cache.get("nobody") is None
    assert await cache.get("a") is not None
    clock.now += SETTINGS.negative_ttl - 0.1
    assert await cache.get("nobody") is None
    assert source.loads == ["nobody", "a"], "a guess repeated within the negative TTL does not reach the source"
    clock.now += 0.2
    source.known.add("nobody")  # created meanwhile (its event lost): seen after the negative TTL
    assert await cache.get("nobody") == "value-nobody-1"
    assert await cache.get("a") == "value-a-1"
    assert source.loads == ["nobody", "a", "nobody"], "the known entry still lives on its longer TTL"


# --- single flight --------------------------------------------------------------------------------

async def test_concurrent_misses_for_one_key_share_one_load():
    source = Source(known={"a"})
    source.gate = asyncio.Event()
    cache, _ = make(source)
    waiters = [asyncio.create_task(cache.get("a")) for _ in range(50)]
    await loads_begun(source)
    source.gate.set()
    assert await asyncio.gather(*waiters) == ["value-a-1"] * 50
    assert source.loads == ["a"]


async def test_a_caller_that_gives_up_does_not_fail_the_others_waiting_on_its_load():
    source = Source(known={"a"})
    source.gate = asyncio.Event()
    cache, _ = make(source)
    first = asyncio.create_task(cache.get("a"))
    await loads_begun(source)
    second = asyncio.create_task(cache.get("a"))
    await asyncio.sleep(0)  # second is now waiting on the same load
    first.cancel()
    source.gate.set()
    assert await second == "value-a-1"
    assert source.loads == ["a"]


async def test_a_failed_load_fails_every_waiter_and_is_not_cached():
    source = Source(known={"a"})
    source.gate, source.failure = asyncio.Event(), ValueError("bug")
    cache, _ = make(source)
    waiters = [asyncio.create_task(cache.get("a")) for _ in range(3)]
    await loads_begun(source)
    source.gate.set()
    for outcome in await asyncio.gather(*waiters, return_exceptions=True):
        assert isinstance(outcome, ValueError)
    source.failure = None
    assert await cache.get("a") == "value-a-1"
    assert source.loads == ["a", "a"]


async def test_get_many_loads_every_missing_key_in_one_call_and_joins_loads_in_flight():
    source = Source(known={"a", "b", "c"})
    cache, _ = make(source, batch=True)
    assert await cache.get("a") == "value-a-1"
    source.gate = asyncio.Event()
    pending = asyncio.create_task(cache.get("b"))
    await loads_begun(source, 2)
    many = asyncio.create_task(cache.get_many(["a", "b", "c", "x", "c"]))
    await loads_begun(source, 3)
    source.gate.set()
    assert await many == ["value-a-1", "value-b-1", "value-c-1", None, "value-c-1"]
    assert await pending == "value-b-1"
    assert source.batches == [["a"], ["b"], ["c", "x"]], "a hit, a joined flight, one call for the rest"


# --- generation guard -----------------------------------------------------------------------------

async def test_a_caller_after_an_invalidation_does_not_join_the_load_that_began_before_it():
    source = Source(known={"a"})
    source.gate = asyncio.Event()
    cache, _ = make(source)
    before = asyncio.create_task(cache.get("a"))
    await loads_begun(source)
    source.version = 2
    cache.invalidate("a")  # the change happened after the read began: its result is old
    after = asyncio.create_task(cache.get("a"))
    await loads_begun(source, 2)
    source.gate.set()
    assert await before == "value-a-1"
    assert await after == "value-a-2"
    source.gate = None
    assert await cache.get("a") == "value-a-2"
    assert source.loads == ["a", "a"], "the second load's result is the one cached"


async def test_the_first_loads_result_is_not_stored_when_invalidated_meanwhile():
    source = Source(known={"a"})
    source.gate = asyncio.Event()
    cache, _ = make(source)
    before = asyncio.create_task(cache.get("a"))
    await loads_begun(source)  # the source has read version 1 ...
    source.version = 2
    cache.invalidate("a")  # ... and the change event arrives before that answer lands
    source.gate.set()
    assert await before == "value-a-1"
    source.gate = None
    assert await cache.get("a") == "value-a-2"
    assert source.loads == ["a", "a"]


async def test_invalidate_all_while_loads_are_in_flight_stores_none_of_them():
    source = Source(known={"a", "b"})
    source.gate = asyncio.Event()
    cache, _ = make(source)
    loads = [asyncio.create_task(cache.get(key)) for key in ("a", "b")]
    await loads_begun(source, 2)
    source.gate.set()
    cache.invalidate_all()
    await asyncio.gather(*loads)
    assert len(cache) == 0
    source.gate = None
    await cache.get("a")
    assert source.loads.count("a") == 2


# --- invalidation from events and on reconnect ----------------------------------------------------

def changed(bus: FakeBus, client_id: str) -> None:
    """A client changed in the registry: its change event, as the registry publishes it."""
    bus.publish(CLIENT_CHANGED, registry_changed("client", client_id, "updated"))


async def test_a_change_event_drops_that_client_only():
    source, bus = FakeClients(client_record(client_id="a"), client_record(client_id="b")), FakeBus()
    cache = ClientCache(source)
    await cache.attach(bus)
    await cache.get_client("a")
    await cache.get_client("b")
    source.put(client_record(client_id="a", active=False))
    changed(bus, "a")
    await bus.deliver()
    assert not (await cache.get_client("a")).active
    await cache.get_client("b")
    assert source.lookups == ["a", "b", "a"]


async def test_a_change_of_another_entity_with_the_same_id_drops_nothing():
    source, bus = FakeClients(client_record(client_id="a")), FakeBus()
    cache = ClientCache(source)
    await cache.attach(bus)
    await cache.get_client("a")
    bus.publish(SIGNING_KEY_CHANGED, registry_changed(ENTITY_SIGNING_KEY, "a", "created"))
    bus.publish(CLIENT_CHANGED, registry_changed(ENTITY_SIGNING_KEY, "a", "created"))  # even if misrouted
    await bus.deliver()
    await cache.get_client("a")
    assert source.lookups == ["a"]


async def test_a_change_event_drops_an_unknown_entry_too():
    source, bus = FakeClients(), FakeBus()
    cache = ClientCache(source)
    await cache.attach(bus)
    assert await cache.get_client("new") is None
    source.put(client_record(client_id="new"))
    changed(bus, "new")
    await bus.deliver()
    assert (await cache.get_client("new")) is not None


async def test_a_reconnect_drops_everything():
    source, bus = FakeClients(client_record(client_id="a")), FakeBus()
    cache = ClientCache(source)
    await cache.attach(bus)
    await cache.get_client("a")
    await cache.get_client("nobody")
    await bus.reconnect()
    assert len(cache.cache) == 0
    await cache.get_client("a")
    await cache.get_client("nobody")
    assert source.lookups == ["a", "nobody", "a", "nobody"]


# --- serve-stale ----------------------------------------------------------------------------------

async def expired_entry(settings: CacheSettings = SETTINGS, *, failure: BaseException | None = None,
                        bus: FakeBus | None = None):
    source = Source(known={"a"})
    cache, clock = make(source, settings)
    if bus is not None:
        await cache.attach(bus, CLIENT_CHANGES)
    assert await cache.get("a") == "value-a-1"
    clock.now += settings.ttl + 1
    source.failure = failure if failure is not None else unavailable()
    source.version = 2
    return source, cache, clock


async def test_an_expired_entry_is_served_stale_while_the_source_is_unavailable_and_counted():
    source, cache, clock = await expired_entry()
    assert await cache.get("a") == "value-a-1"
    assert len(source.loads) == 2, "the source was asked first"
    assert metric("inbound_cache_served_stale_total", cache) == 1
    assert metric("inbound_cache_staleness_seconds_count", cache) == 1
    assert metric("inbound_cache_staleness_seconds_sum", cache) == pytest.approx(1.0)
    assert metric("inbound_cache_loads_total", cache, outcome="unavailable") == 1
    source.failure = None
    clock.now += 5  # past the retry interval: the source is asked again, in the background
    assert await cache.get("a") == "value-a-1"
    assert await eventually(lambda: cache.get("a"), until=lambda value: value == "value-a-2",
                            message="fresh again once the source is back")
    assert len(source.loads) == 3


async def test_database_errors_count_as_unavailable_too():
    """In one process the cache reads the registry directly: Postgres unreachable is an OSError."""
    source, cache, _ = await expired_entry(failure=ConnectionRefusedError())
    assert await cache.get("a") == "value-a-1"


async def test_past_the_maximum_staleness_the_error_propagates():
    source, cache, clock = await expired_entry()
    clock.now += SETTINGS.max_stale - 1 - 0.5  # 0.5 s short of the bound
    assert await cache.get("a") == "value-a-1"
    clock.now += 1  # 0.5 s past it
    with pytest.raises(grpc.aio.AioRpcError):
        await cache.get("a")


async def test_the_maximum_staleness_counts_when_a_slow_load_fails_not_when_it_began():
    source, cache, clock = await expired_entry()
    clock.now += SETTINGS.max_stale - 1 - 0.5  # 0.5 s short of the bound when the load begins
    source.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.get("a"))
    await loads_begun(source, 2)
    clock.now += 3  # the source times out 3 s later: past the bound by then
    source.gate.set()
    with pytest.raises(grpc.aio.AioRpcError):
        await waiter


async def test_max_stale_zero_turns_serve_stale_off():
    source, cache, _ = await expired_entry(dataclasses.replace(SETTINGS, max_stale=0))
    with pytest.raises(grpc.aio.AioRpcError):
        await cache.get("a")


async def test_an_error_that_is_not_an_outage_is_never_answered_stale():
    source, cache, _ = await expired_entry(failure=ValueError("bug"))
    with pytest.raises(ValueError):
        await cache.get("a")


async def test_an_invalidated_entry_is_never_served_stale():
    """A disabled client's event removes it: it cannot come back as a stale answer."""
    source, cache, _ = await expired_entry()
    cache.invalidate("a")
    with pytest.raises(grpc.aio.AioRpcError):
        await cache.get("a")


async def test_nothing_is_served_stale_while_the_event_bus_is_disconnected():
    """Invalidations may be being missed: a stale answer could be a disabled client."""
    bus = FakeBus()
    source, cache, clock = await expired_entry(bus=bus)
    assert await cache.get("a") == "value-a-1"  # control: connected, served stale
    bus.connected.clear()
    with pytest.raises(grpc.aio.AioRpcError):
        await cache.get("a")  # within the retry interval: not even the entry kept for it
    clock.now += 1.1
    with pytest.raises(grpc.aio.AioRpcError):
        await cache.get("a")


async def test_an_entry_from_before_a_reconnect_is_not_served_stale_before_the_hooks_drop_it():
    """Connected again, but the reconnect hook that drops what may have missed an
    invalidation has not run yet: the old entry must not be served stale meanwhile."""
    bus = FakeBus()
    source, cache, clock = await expired_entry(bus=bus)
    assert await cache.get("a") == "value-a-1"  # control: same connection, served stale
    await bus.reconnect(run_hooks=False)
    clock.now += 1.1  # past the retry interval: the source is asked again, and fails
    with pytest.raises(grpc.aio.AioRpcError):
        await cache.get("a")


async def test_unknown_keys_are_served_stale_as_unknown():
    source = Source()
    cache, clock = make(source)
    assert await cache.get("nobody") is None
    clock.now += SETTINGS.negative_ttl + 1
    source.failure = unavailable()
    assert await cache.get("nobody") is None
    assert metric("inbound_cache_served_stale_total", cache) == 1


async def test_while_serving_stale_the_source_is_asked_at_most_once_a_retry_interval():
    source, cache, clock = await expired_entry()
    for _ in range(20):
        assert await cache.get("a") == "value-a-1"
    assert len(source.loads) == 2, "one load for twenty requests in the same second"
    assert metric("inbound_cache_served_stale_total", cache) == 20
    clock.now += 1.1
    assert await cache.get("a") == "value-a-1"
    await loads_begun(source, 3)


async def test_while_serving_stale_a_retry_that_hangs_holds_no_request():
    """A database that hangs (rather than refusing connections) costs its timeout once
    per key and retry interval, in the background, not on every request."""
    source, cache, clock = await expired_entry()
    assert await cache.get("a") == "value-a-1"  # the failed load that starts serving stale
    clock.now += 1.1
    source.gate = asyncio.Event()  # the retry hangs
    answers = [asyncio.create_task(cache.get("a")) for _ in range(5)]
    await loads_begun(source, 3)
    for _ in range(5):
        await asyncio.sleep(0)
    assert all(task.done() for task in answers), "answered while the retry is still in flight"
    assert [task.result() for task in answers] == ["value-a-1"] * 5
    assert len(source.loads) == 3, "one retry for them all"
    source.gate.set()


async def test_concurrent_misses_during_an_outage_share_one_load_and_all_get_the_stale_value():
    source, cache, _ = await expired_entry()
    source.gate = asyncio.Event()
    waiters = [asyncio.create_task(cache.get("a")) for _ in range(10)]
    await loads_begun(source, 2)
    source.gate.set()
    assert await asyncio.gather(*waiters) == ["value-a-1"] * 10
    assert len(source.loads) == 2
    assert metric("inbound_cache_served_stale_total", cache) == 10


# --- metrics --------------------------------------------------------------------------------------

async def test_hits_misses_and_loads_are_counted_per_cache():
    source = Source(known={"a"})
    cache, _ = make(source)
    other, _ = make(Source(known={"a"}))
    await cache.get("a")
    await cache.get("a")
    await cache.get("a")
    await cache.get("nobody")
    await cache.get("nobody")
    assert metric("inbound_cache_misses_total", cache) == 2
    assert metric("inbound_cache_hits_total", cache, table="positive") == 2
    assert metric("inbound_cache_hits_total", cache, table="negative") == 1
    assert metric("inbound_cache_loads_total", cache, outcome="found") == 1
    assert metric("inbound_cache_loads_total", cache, outcome="unknown") == 1
    assert metric("inbound_cache_entries", cache, table="positive") == 1
    assert metric("inbound_cache_entries", cache, table="negative") == 1
    assert metric("inbound_cache_misses_total", other) == 0


# --- settings -------------------------------------------------------------------------------------

def test_settings_default_and_override_per_cache():
    assert client_cache_settings(Env({})) == CLIENT_CACHE
    settings = client_cache_settings(Env({"INBOUND_CLIENT_CACHE_TTL": "2", "INBOUND_CLIENT_CACHE_MAX_STALE": "0",
                                          "INBOUND_CLIENT_CACHE_MAX_ENTRIES": "50",
                                          "INBOUND_OPAQUE_TOKEN_CACHE_TTL": "1"}))
    assert (settings.ttl, settings.max_stale, settings.max_entries) == (2.0, 0.0, 50)
    # Defaults that would break the rules follow the overrides: unknown keys stay shorter-lived and fewer.
    short = client_cache_settings(Env({"INBOUND_CLIENT_CACHE_TTL": "1", "INBOUND_CLIENT_CACHE_MAX_ENTRIES": "5"}))
    assert (short.negative_ttl, short.max_negative_entries) == (1.0, 5)


@pytest.mark.parametrize("env", [
    {"INBOUND_CLIENT_CACHE_TTL": "soon"},
    {"INBOUND_CLIENT_CACHE_TTL": "0"},
    {"INBOUND_CLIENT_CACHE_MAX_STALE": "-1"},
    {"INBOUND_CLIENT_CACHE_MAX_ENTRIES": "0"},
    {"INBOUND_CLIENT_CACHE_NEGATIVE_TTL": "120"},
    {"INBOUND_CLIENT_CACHE_MAX_NEGATIVE_ENTRIES": "200000"},
])
def test_bad_settings_are_configuration_errors(env):
    with pytest.raises(ConfigError) as raised:
        client_cache_settings(Env(env))
    assert next(iter(env)) in str(raised.value)


# --- the caches built on it -----------------------------------------------------------------------

async def test_the_edge_jwks_is_dropped_when_a_key_is_rotated_and_served_stale_while_the_issuer_is_away():
    from inboundlib.events import KEYS_ROTATED
    from services.edge.jwks import JWKS_CACHE, JwksCache

    class Issuer:
        def __init__(self):
            self.calls, self.failure = 0, None

        async def jwks(self):
            self.calls += 1
            if self.failure:
                raise self.failure
            return {"keys": [{"kid": f"k{self.calls}"}]}

    issuer, bus = Issuer(), FakeBus()
    jwks = JwksCache(issuer, dataclasses.replace(JWKS_CACHE, ttl=0.001, negative_ttl=0.001))
    await jwks.attach(bus)
    assert (await jwks.get())["keys"][0]["kid"] == "k1"
    bus.publish(KEYS_ROTATED, events_pb2.Event(keys_rotated=events_pb2.KeysRotated(kid="k2")))
    await bus.deliver()
    issuer.failure = unavailable()
    # The rotation dropped the document: nothing to serve stale, the error shows.
    with pytest.raises(grpc.aio.AioRpcError):
        await jwks.get()
    issuer.failure = None
    assert (await jwks.get())["keys"][0]["kid"] == "k3"
    issuer.failure = unavailable()
    served_stale = metric("inbound_cache_served_stale_total", jwks.cache)  # every JWKS cache counts as "jwks"

    async def kid_and_stale_count():  # once the 1 ms TTL has passed on the real clock, answers are stale
        return (await jwks.get())["keys"][0]["kid"], metric("inbound_cache_served_stale_total", jwks.cache)
    assert await eventually(kid_and_stale_count, until=lambda seen: seen[1] > served_stale) == \
        ("k3", served_stale + 1)


async def test_a_shared_load_is_not_bounded_by_the_budget_of_the_request_that_started_it():
    """Several requests wait on one load: it must not give up (or log) as the first one."""
    from inboundlib import budget
    from inboundlib.logs import request_id_var

    seen = []

    class BudgetProbe(Source):
        async def load(self, key):
            seen.append((budget.remaining(999.0), request_id_var.get()))
            return await super().load(key)

    source = BudgetProbe(known={"a"})
    cache, _ = make(source)
    token = request_id_var.set("req-first")
    try:
        with budget.within(0.05):
            assert await cache.get("a") == "value-a-1"
    finally:
        request_id_var.reset(token)
    assert seen == [(999.0, "")]

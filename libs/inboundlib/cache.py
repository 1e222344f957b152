"""One read-through cache for every service: client records, opaque tokens and the
JWKS today; users, identity providers and auth rules later.

What every cache gets, and why:
- A TTL per entry: a change whose event was lost costs at most `ttl` of staleness.
- A bounded LRU per table: when full, the least recently used entry goes (never
  the whole table, which would send every key to the source at once).
- Unknown keys ("negative" entries: the source answered None) live in a table of
  their own, with a smaller bound and a shorter TTL, so a flood of made-up keys
  cannot push real entries out, and cannot reach the source either.
- Single-flight loading: concurrent misses for one key share one load, which runs
  in a task of its own (a caller that gives up does not fail the others waiting).
  `get_many` loads every missing key with one `load_many` call when the source has one.
- A generation guard: a key invalidated while its load is in flight does not get
  that (possibly stale) result stored; callers arriving after the invalidation
  start a fresh load.
- Invalidation by key (from events, through an `Invalidation`: a subject and the
  keys an event names; `registry_changes(entity)` for registry entities) and of
  everything when the event bus reconnects (events were missed).
- Serve-stale: when a load fails because the source is unavailable (the registry
  or Postgres down), an expired entry is served for up to `max_stale` seconds past
  its expiry, counted in `inbound_cache_served_stale_total` and
  `inbound_cache_staleness_seconds`; past that, the error propagates. While
  serving stale, the source is asked again at most every `STALE_RETRY_SECONDS`
  per key, in the background: an outage that times out costs one request per key
  a timeout, not every request.
  Invalidation still removes entries, and nothing is served stale while the event
  bus is disconnected (invalidations may be being missed).
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from inbound.events.v1 import events_pb2
from inboundlib import budget, grpcx
from inboundlib.config import ConfigError, Env
from inboundlib.events import registry_subject

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# While a source is failing, each key's load is retried at most this often; requests
# in between are answered from the stale entry at once.
STALE_RETRY_SECONDS = 1.0

POSITIVE = "positive"
NEGATIVE = "negative"

STALENESS = Histogram("inbound_cache_staleness_seconds", "How long past its expiry an entry was when served stale",
                      ["cache"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400))

# Counters every cache keeps as plain ints (a prometheus_client Counter takes a lock on
# each inc(), several times the cost of a hit), read when /metrics is scraped and summed
# per cache name: (family, help, label name, [(attribute of _Counts, label value)]).
_COUNTERS = (
    ("inbound_cache_hits", "Cache lookups answered from a fresh entry", "table",
     (("hits_positive", POSITIVE), ("hits_negative", NEGATIVE))),
    ("inbound_cache_misses", "Cache lookups with no fresh entry", None, (("misses", None),)),
    ("inbound_cache_loads", "Keys loaded from the source, by outcome", "outcome",
     (("loads_found", "found"), ("loads_unknown", "unknown"), ("loads_unavailable", "unavailable"),
      ("loads_error", "error"))),
    ("inbound_cache_evictions", "Entries evicted because a table was full (least recently used first)", "table",
     (("evictions_positive", POSITIVE), ("evictions_negative", NEGATIVE))),
    ("inbound_cache_invalidations", "Invalidations, by reason (one key, or everything)", "reason",
     (("invalidations_key", "key"), ("invalidations_all", "all"))),
    ("inbound_cache_served_stale", "Lookups answered from an expired entry because the source was unavailable",
     None, (("served_stale", None),)),
)


class _Counts:
    __slots__ = tuple(attribute for *_, pairs in _COUNTERS for attribute, _ in pairs)

    def __init__(self) -> None:
        for attribute in self.__slots__:
            setattr(self, attribute, 0)


_LIVE: weakref.WeakSet = weakref.WeakSet()  # every ReadThroughCache, for the collector


class _Collector(Collector):
    def collect(self):
        caches = list(_LIVE)
        for family_name, text, label, pairs in _COUNTERS:
            family = CounterMetricFamily(family_name, text, labels=("cache", label) if label else ("cache",))
            totals: dict[tuple[str, ...], int] = {}
            for cache in caches:
                for attribute, value in pairs:
                    labels = (cache.name, value) if label else (cache.name,)
                    totals[labels] = totals.get(labels, 0) + getattr(cache.counts, attribute)
            for labels, total in totals.items():
                family.add_metric(labels, total)
            yield family
        entries = GaugeMetricFamily("inbound_cache_entries", "Entries held (fresh, or expired and kept to be "
                                    "served stale)", labels=("cache", "table"))
        sizes: dict[tuple[str, str], int] = {}
        for cache in caches:
            for table, size in ((POSITIVE, len(cache._positive)), (NEGATIVE, len(cache._negative))):
                sizes[(cache.name, table)] = sizes.get((cache.name, table), 0) + size
        for labels, size in sizes.items():
            entries.add_metric(labels, size)
        yield entries


REGISTRY.register(_Collector())


@dataclass(frozen=True)
class CacheSettings:
    """How long and how many. `max_stale` 0 turns serve-stale off."""
    ttl: float
    negative_ttl: float
    max_entries: int
    max_negative_entries: int
    max_stale: float

    def __post_init__(self) -> None:
        if self.ttl <= 0 or self.negative_ttl <= 0:
            raise ValueError("cache TTLs must be positive")
        if self.max_entries < 1 or self.max_negative_entries < 1:
            raise ValueError("cache bounds must be at least 1")
        if self.max_stale < 0:
            raise ValueError("max_stale must be >= 0")

    @classmethod
    def from_env(cls, env: Env, name: str, defaults: CacheSettings) -> CacheSettings:
        """INBOUND_<NAME>_CACHE_{TTL, NEGATIVE_TTL, MAX_ENTRIES, MAX_NEGATIVE_ENTRIES, MAX_STALE};
        unknown keys must expire no later and be bounded no higher than known ones."""
        prefix = f"INBOUND_{name.upper()}_CACHE_"
        ttl = env.float(prefix + "TTL", defaults.ttl, minimum=0.001)
        negative_ttl = env.float(prefix + "NEGATIVE_TTL", min(defaults.negative_ttl, ttl), minimum=0.001)
        max_entries = env.int(prefix + "MAX_ENTRIES", defaults.max_entries, minimum=1, maximum=100_000_000)
        max_negative = env.int(prefix + "MAX_NEGATIVE_ENTRIES", min(defaults.max_negative_entries, max_entries),
                               minimum=1, maximum=100_000_000)
        max_stale = env.float(prefix + "MAX_STALE", defaults.max_stale, minimum=0.0)
        if negative_ttl > ttl:
            raise ConfigError(f"{prefix}NEGATIVE_TTL ({negative_ttl}) must not exceed {prefix}TTL ({ttl})")
        if max_negative > max_entries:
            raise ConfigError(f"{prefix}MAX_NEGATIVE_ENTRIES ({max_negative}) must not exceed "
                              f"{prefix}MAX_ENTRIES ({max_entries})")
        return cls(ttl=ttl, negative_ttl=negative_ttl, max_entries=max_entries,
                   max_negative_entries=max_negative, max_stale=max_stale)


@dataclass(frozen=True)
class Invalidation:
    """The adapter between an event and a cache: the subject to listen on, and the
    keys an event on it invalidates (none, for events about something else)."""
    subject: str
    keys_of: Callable[[events_pb2.Event], Iterable[Hashable]]


def registry_changes(entity: str) -> Invalidation:
    """`RegistryChanged` events about `entity` (client, user, provider, ...): the changed id is the key."""
    def changed_ids(event: events_pb2.Event) -> tuple[str, ...]:
        if event.HasField("registry_changed") and event.registry_changed.entity == entity:
            return (event.registry_changed.id,)
        return ()

    return Invalidation(registry_subject(entity), changed_ids)


class _Entry(Generic[V]):
    __slots__ = ("value", "expires_at", "retry_at", "connection")

    def __init__(self, value: V | None, expires_at: float, connection: int = 0):
        self.value = value
        self.expires_at = expires_at
        self.retry_at = 0.0  # set when a load failed as unavailable: no new load before it
        self.connection = connection  # the event bus's connection count when it was stored


class _Flight:
    """One load in progress for one key; `discarded` once the key is invalidated meanwhile."""
    __slots__ = ("future", "discarded")

    def __init__(self, future: asyncio.Future):
        self.future = future
        self.discarded = False


# A flight's outcome: the value, and how long past expiry it was when served stale (None: fresh).
_Outcome = tuple[object, float | None]


class ReadThroughCache(Generic[K, V]):
    """A read-through cache of `name`, loading through `load` (one key) and/or
    `load_many` (a list of keys, answering a value or None per key, in order).
    A loader answers None for a key the source does not know."""

    def __init__(self, name: str, settings: CacheSettings, *,
                 load: Callable[[K], Awaitable[V | None]] | None = None,
                 load_many: Callable[[list[K]], Awaitable[Sequence[V | None]]] | None = None,
                 unavailable: Callable[[BaseException], bool] = grpcx.is_unavailable,
                 clock: Callable[[], float] = time.monotonic,
                 stale_retry: float = STALE_RETRY_SECONDS):
        if load is None and load_many is None:
            raise ValueError("a cache needs load or load_many")
        self.name = name
        self.settings = settings
        self._load = load
        self._load_many = load_many
        self._unavailable = unavailable
        self._clock = clock
        self._stale_retry = stale_retry
        self._positive: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._negative: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._loading: dict[K, _Flight] = {}
        self._tasks: set[asyncio.Task] = set()
        self._events = None  # the bus invalidations come from, once attached
        self.counts = _Counts()
        self._staleness = STALENESS.labels(name)
        _LIVE.add(self)

    # --- reading ----------------------------------------------------------------------------------

    async def get(self, key: K) -> V | None:
        """The value for `key` (None: the source does not know it)."""
        now = self._clock()
        found = self._fresh(key, now)
        if found is not None:
            return found[0]
        self.counts.misses += 1
        flight = self._loading.get(key)
        if flight is None:
            flight = self._start([key], now)[0]
        return self._answer(await asyncio.shield(flight.future))

    async def get_many(self, keys: Sequence[K]) -> list[V | None]:
        """Values for `keys`, in order; every missing key not already loading goes to the
        source in one `load_many` call. Raises if a key can be had neither fresh nor stale."""
        now = self._clock()
        answers: dict[K, V | None] = {}
        waiting: dict[K, _Flight] = {}
        to_load: list[K] = []
        for key in dict.fromkeys(keys):
            found = self._fresh(key, now)
            if found is not None:
                answers[key] = found[0]
                continue
            self.counts.misses += 1
            flight = self._loading.get(key)
            if flight is None:
                to_load.append(key)
            else:
                waiting[key] = flight
        if to_load:
            waiting.update(zip(to_load, self._start(to_load, now)))
        for key, flight in waiting.items():
            answers[key] = self._answer(await asyncio.shield(flight.future))
        return [answers[key] for key in keys]

    def _fresh(self, key: K, now: float) -> tuple[V | None] | None:
        """(value,) when an entry may answer without a load: fresh, or stale while the
        source is known to be failing and retried meanwhile. None otherwise."""
        table = self._positive
        entry = table.get(key)
        if entry is None:
            table = self._negative
            entry = table.get(key)
            if entry is None:
                return None
        if now < entry.expires_at:
            table.move_to_end(key)
            if table is self._positive:
                self.counts.hits_positive += 1
            else:
                self.counts.hits_negative += 1
            return (entry.value,)
        if entry.retry_at and self._may_serve_stale(entry, now):
            # The source failed on this key's last load: answer stale at once, and ask the
            # source again in the background once the retry interval has passed. (A source
            # that hangs would otherwise hold every request for its whole timeout.)
            if now >= entry.retry_at and key not in self._loading:
                entry.retry_at = now + self._stale_retry
                self._start([key], now)
            table.move_to_end(key)
            return (self._answer((entry.value, now - entry.expires_at)),)
        if now - entry.expires_at > self.settings.max_stale:
            del table[key]  # dead: too old even to be served stale
        return None

    def _answer(self, outcome: _Outcome) -> V | None:
        value, staleness = outcome
        if staleness is not None:
            self.counts.served_stale += 1
            self._staleness.observe(staleness)
        return value  # type: ignore[return-value]

    # --- loading ----------------------------------------------------------------------------------

    def _start(self, keys: list[K], now: float) -> list[_Flight]:
        loop = asyncio.get_running_loop()
        flights = [_Flight(loop.create_future()) for _ in keys]
        self._loading.update(zip(keys, flights))
        # A task of its own: a caller cancelled mid-load must not cancel it for the others.
        # ... and not bounded by the budget of whichever request started it: others wait on it too.
        task = loop.create_task(self._run(keys, flights, now), name=f"cache-load-{self.name}",
                                context=budget.shared_context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flights

    async def _run(self, keys: list[K], flights: list[_Flight], started: float) -> None:
        try:
            if self._load_many is not None:
                values = list(await self._load_many(keys))
                if len(values) != len(keys):
                    raise RuntimeError(f"{self.name}: load_many answered {len(values)} values for {len(keys)} keys")
                outcomes: list[object] = values
            else:
                outcomes = list(await asyncio.gather(*(self._load(key) for key in keys), return_exceptions=True))
        except Exception as exc:
            outcomes = [exc] * len(keys)
        except BaseException as exc:  # cancelled (shutting down): waiters see it, nothing is stored
            for key, flight in zip(keys, flights):
                self._land(key, flight)
                if not flight.future.done():
                    flight.future.set_exception(exc)
                    flight.future.exception()
            raise
        for key, flight, outcome in zip(keys, flights, outcomes):
            self._land(key, flight)
            if isinstance(outcome, BaseException):
                self._failed(key, flight, outcome)
            else:
                self._loaded(key, flight, outcome, started)

    def _land(self, key: K, flight: _Flight) -> None:
        if self._loading.get(key) is flight:
            del self._loading[key]

    def _loaded(self, key: K, flight: _Flight, value, started: float) -> None:
        if value is None:
            self.counts.loads_unknown += 1
        else:
            self.counts.loads_found += 1
        if not flight.discarded:
            # The TTL counts from when the read began: the value is at least that old.
            self._store(key, value, started)
        flight.future.set_result((value, None))

    def _failed(self, key: K, flight: _Flight, exc: BaseException) -> None:
        unavailable = self._unavailable(exc)
        if unavailable:
            self.counts.loads_unavailable += 1
        else:
            self.counts.loads_error += 1
        if unavailable and not flight.discarded:
            now = self._clock()
            entry = self._positive.get(key) or self._negative.get(key)
            if entry is not None and self._may_serve_stale(entry, now):
                entry.retry_at = now + self._stale_retry
                flight.future.set_result((entry.value, max(0.0, now - entry.expires_at)))
                return
        flight.future.set_exception(exc)
        flight.future.exception()  # retrieved: the waiters get it; nobody logs it as lost

    def _may_serve_stale(self, entry: _Entry, now: float) -> bool:
        if now - entry.expires_at > self.settings.max_stale:
            return False
        # While the bus is away, invalidations (a client disabled, say) may be being missed;
        # an entry stored during an earlier connection may have missed some even after a
        # reconnect, until the reconnect hook drops it.
        if self._events is None:
            return True
        return self._events.connected.is_set() and entry.connection == self._bus_connection()

    def _bus_connection(self) -> int:
        return getattr(self._events, "connections", 0) if self._events is not None else 0

    def _store(self, key: K, value: V | None, loaded_at: float) -> None:
        if value is None:
            table, other = self._negative, self._positive
            ttl, bound = self.settings.negative_ttl, self.settings.max_negative_entries
        else:
            table, other = self._positive, self._negative
            ttl, bound = self.settings.ttl, self.settings.max_entries
        other.pop(key, None)
        table[key] = _Entry(value, loaded_at + ttl, self._bus_connection())
        table.move_to_end(key)
        while len(table) > bound:
            table.popitem(last=False)
            if value is None:
                self.counts.evictions_negative += 1
            else:
                self.counts.evictions_positive += 1

    # --- invalidation -----------------------------------------------------------------------------

    def invalidate(self, key: K) -> None:
        """Forget `key`, and keep a load of it that is in flight from being stored."""
        self.counts.invalidations_key += 1
        self._positive.pop(key, None)
        self._negative.pop(key, None)
        flight = self._loading.pop(key, None)
        if flight is not None:
            flight.discarded = True

    def invalidate_all(self) -> None:
        self.counts.invalidations_all += 1
        self._positive.clear()
        self._negative.clear()
        for flight in self._loading.values():
            flight.discarded = True
        self._loading.clear()

    async def attach(self, events, invalidation: Invalidation) -> None:
        """Invalidate the keys each event on `invalidation.subject` names, and everything
        whenever `events` (re)connects: what was published meanwhile was missed."""
        self._events = events
        keys_of = invalidation.keys_of

        async def on_event(event) -> None:
            for key in keys_of(event):
                self.invalidate(key)

        async def on_reconnect() -> None:
            self.invalidate_all()

        events.on_reconnect(on_reconnect)
        await events.subscribe(invalidation.subject, on_event)

    def __len__(self) -> int:
        return len(self._positive) + len(self._negative)

"""Failed client authentication, throttled at the edge.

Two limits, each a burst of failures and then exponential back-off:
- per client id and client address together (`burst`): someone guessing one
  client's secret from one address is slowed down, while the same client with
  its right secret from another address is not (someone else's failures on its
  id never lock it out). A success clears its entry.
- per client address across client ids (`address_burst`, looser: many clients
  may share a NAT): one address cannot walk through client ids. Successes do not
  clear it (one valid client would otherwise launder guesses at others); it
  lapses after a quiet period.
After `burst` failures the next attempt must wait `backoff` seconds, then twice
that after another failure, and so on up to `max_backoff`. An entry is forgotten
once it has seen no failure for `max_backoff` seconds after its last wait ended.

While an entry waits, a request is answered 429 with Retry-After (RFC 6585 §4)
before its secret is checked: a throttled guess costs nothing and learns nothing.

An IPv6 address counts by its /64 (one host commonly holds a whole /64).

The table lives in this process: it is per edge replica (N replicas behind a
load balancer allow up to N times the burst). Its memory is bounded: entries
are charged an estimated size (ENTRY_OVERHEAD_BYTES plus the bytes of their key's
characters: up to 4 a character, as CPython stores a string of emoji) and the least recently failed ones are dropped beyond `max_bytes`.
"""
from __future__ import annotations

import math
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from inboundlib.config import Env

# Measured with tracemalloc for an OrderedDict item with a two-string tuple key and
# a slotted entry: about 320 bytes besides the key's characters.
ENTRY_OVERHEAD_BYTES = 320
_EMPTY_STR_BYTES = sys.getsizeof("")

CLIENT_AND_ADDRESS = "client_and_address"
ADDRESS = "address"

THROTTLED = Counter("inbound_http_auth_throttled_total",
                    "Requests answered 429 for earlier failed client authentications, unchecked",
                    ["route", "limit"])
AUTH_FAILURES = Counter("inbound_http_auth_failures_total", "Failed client authentications seen by the edge",
                        ["route"])
TABLE_BYTES = Gauge("inbound_http_auth_throttle_bytes", "Estimated size of the failed-authentication table")
TABLE_ENTRIES = Gauge("inbound_http_auth_throttle_entries", "Entries of the failed-authentication table")


@dataclass(frozen=True)
class ThrottleSettings:
    # Failures per (client id, address) before back-off starts.
    burst: int = 5
    # Failures per address, whatever the client ids, before back-off starts.
    address_burst: int = 100
    # The first wait, in seconds; it doubles with each further failure.
    backoff: float = 1.0
    max_backoff: float = 300.0
    # The table's estimated size (ENTRY_OVERHEAD_BYTES and the key's characters per entry).
    max_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_env(cls, env: Env) -> ThrottleSettings:
        backoff = env.float("INBOUND_AUTH_FAILURE_BACKOFF", cls.backoff, minimum=0.001)
        return cls(
            burst=env.int("INBOUND_AUTH_FAILURE_BURST", cls.burst, minimum=1),
            address_burst=env.int("INBOUND_AUTH_FAILURE_ADDRESS_BURST", cls.address_burst, minimum=1),
            backoff=backoff,
            max_backoff=env.float("INBOUND_AUTH_FAILURE_MAX_BACKOFF", max(cls.max_backoff, backoff),
                                  minimum=backoff),
            max_bytes=env.int("INBOUND_AUTH_THROTTLE_MAX_BYTES", cls.max_bytes, minimum=64 * 1024))


class _Entry:
    __slots__ = ("failures", "blocked_until", "size")

    def __init__(self, size: int):
        self.failures = 0
        self.blocked_until = 0.0
        self.size = size


@dataclass(frozen=True)
class Refusal:
    """A throttled request: which limit, and the whole seconds until it may try again."""
    limit: str
    retry_after: int


_IPV4_MAPPED = bytes(10) + b"\xff\xff"


def address_key(address: str) -> str:
    """What an address counts as: itself, or its /64 for IPv6 (the first 8 bytes, in
    hex). socket.inet_pton parses in C: ipaddress took 30 times as long, on every request."""
    if ":" not in address:
        return address
    try:
        packed = socket.inet_pton(socket.AF_INET6, address)
    except OSError:
        return address
    if packed.startswith(_IPV4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return packed[:8].hex() + "/64"


def _characters_bytes(text: str) -> int:
    """What a string's characters take in memory: 1, 2 or 4 bytes each (PEP 393), so a
    client id of 255 emoji is charged its 1 KiB, not 255 bytes."""
    return sys.getsizeof(text) - _EMPTY_STR_BYTES


class FailedAuthThrottle:
    def __init__(self, settings: ThrottleSettings | None = None, clock: Callable[[], float] = time.monotonic):
        self.settings = settings or ThrottleSettings()
        self._clock = clock
        # Key: (client id, address) or (None, address); least recently failed first.
        self._entries: OrderedDict[tuple[str | None, str], _Entry] = OrderedDict()
        self._bytes = 0

    def refusal(self, client_id: str, address: str) -> Refusal | None:
        """Whether a request from `address` naming `client_id` must wait, checked before its secret."""
        if not self._entries:
            return None
        now = self._clock()
        where = address_key(address)
        for key, limit in (((client_id, where), CLIENT_AND_ADDRESS), ((None, where), ADDRESS)):
            entry = self._entries.get(key)
            if entry is not None and entry.blocked_until > now:
                return Refusal(limit, max(1, math.ceil(entry.blocked_until - now)))
        return None

    def failed(self, client_id: str, address: str) -> None:
        """A failed client authentication: count it against both limits."""
        now = self._clock()
        where = address_key(address)
        self._fail((client_id, where), self.settings.burst, now)
        self._fail((None, where), self.settings.address_burst, now)
        self._trim(now)

    def succeeded(self, client_id: str, address: str) -> None:
        """A successful authentication clears its (client id, address) entry, never the address's."""
        if self._entries:
            entry = self._entries.pop((client_id, address_key(address)), None)
            if entry is not None:
                self._bytes -= entry.size
                self._measure()

    def _fail(self, key: tuple[str | None, str], burst: int, now: float) -> None:
        entry = self._entries.get(key)
        if entry is None or self._forgotten(entry, now):
            if entry is not None:
                self._bytes -= entry.size
            entry = _Entry(ENTRY_OVERHEAD_BYTES + _characters_bytes(key[0] or "") + _characters_bytes(key[1]))
            self._bytes += entry.size
            self._entries[key] = entry
        else:
            self._entries.move_to_end(key)
        entry.failures += 1
        if entry.failures >= burst:
            wait = min(self.settings.backoff * 2 ** min(entry.failures - burst, 62), self.settings.max_backoff)
            entry.blocked_until = now + wait
        else:
            entry.blocked_until = now  # (the quiet period counts from the last failure)

    def _forgotten(self, entry: _Entry, now: float) -> bool:
        return now >= entry.blocked_until + self.settings.max_backoff

    def _trim(self, now: float) -> None:
        """Drop the least recently failed entries beyond the size bound, and any forgotten ones at the front."""
        entries = self._entries
        while entries:
            key, oldest = next(iter(entries.items()))
            if self._bytes <= self.settings.max_bytes and not self._forgotten(oldest, now):
                break
            del entries[key]
            self._bytes -= oldest.size
        self._measure()

    def _measure(self) -> None:
        TABLE_BYTES.set(self._bytes)
        TABLE_ENTRIES.set(len(self._entries))

    @property
    def estimated_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

"""The JWKS and OpenID discovery fetcher: outgoing HTTPS that never blocks a token request.

Callers only ever read the cache (`key_set`, `discovery`): a miss starts a fetch in the
background and raises `KeysPending`, so no batched RPC item waits for another host
(docs/ARCHITECTURE.md, "No HTTP in a batch"). Concurrent misses of one URL share one fetch.

What a fetch may do (server-side request forgery, RFC 8725 §3.10, OWASP SSRF):
- HTTPS only, to a public address: the resolver refuses private, loopback, link-local,
  multicast, reserved and unspecified addresses unless allow-listed
  (INBOUND_FEDERATION_ALLOWED_NETWORKS; loopback with INBOUND_FEDERATION_ALLOW_LOOPBACK), and
  the connection goes to the address it checked (no second lookup: no DNS rebinding). An IP
  literal in the URL is checked before any connection (aiohttp does not resolve those), read
  with yarl as aiohttp reads it (`https://１２７.０.０.１/` is 127.0.0.1 to yarl's IDNA, a name to
  urllib); and every socket is checked once more against the policy before it connects;
- redirects are not followed; no cookies, no proxies from the environment;
- a total timeout, a byte limit while reading (decompressed), JSON only.

Caching: per URL, fresh for Cache-Control max-age clamped to [min_cache, max_cache] (the
configured maximum, or a provider's cache_lifespan); refreshed in the background once 3/4 of
that passed; stale-if-error (RFC 5861 §4): when a refresh fails the last good document is still
served for up to max_cache beyond its freshness, then refused with a clear reason. An unknown
kid may refetch a URL once per refetch_interval: a flood of forged kids shares that one fetch.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
import re
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from prometheus_client import Counter, Gauge
from yarl import URL

from inboundlib.config import ConfigError, Env
from inboundlib.jose.keys import KeySet
from inboundlib.jose.validator import InvalidJwt
from inboundlib.oauth.errors import KeysPending

log = logging.getLogger(__name__)

Kind = Literal["jwks", "discovery"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_FRESHNESS = 3600  # no Cache-Control max-age: an hour (then clamped like any max-age)
REFRESH_AHEAD = 0.75  # refresh in the background once this share of the freshness has passed
RETRY_AFTER_ERROR = 10.0  # at most one attempt per URL this often while it fails (capped by refetch_interval)
MAX_URLS = 10_000  # URLs come from the registry, not from tokens; the bound is a safety net
USER_AGENT = "Inbound-federation/1 (JWKS and OpenID discovery fetcher)"
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-maxage|max-age)\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_MAX_AGE_DIGITS = 10  # more digits than that: "longer than any maximum" (int() of 5000 digits raises)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|=|$)", re.IGNORECASE)

FETCHES = Counter(
    "inbound_federation_fetches_total",
    "JWKS and OpenID discovery fetches by kind and outcome (ok, refused, redirect, http_error, not_json, "
    "too_large, invalid, timeout, tls_error, error)", ["kind", "outcome"],
)
STALE_SERVED = Counter(
    "inbound_federation_stale_served_total",
    "Answers from a cached document past its freshness (its refresh failed or is under way)", ["kind"],
)
REFETCH_LIMITED = Counter(
    "inbound_federation_refetch_limited_total",
    "Unknown-kid refetches refused because the URL was fetched within the refetch interval",
)
CACHE_AGE = Gauge(
    "inbound_federation_cache_age_seconds",
    "Age of the cached document last served, by kind and host (the first MAX_HOST_LABELS hosts; then 'other')",
    ["kind", "host"],
)
# Hosts come from the registry, and from discovery documents (an IdP names its jwks_uri, and may
# name a new host at every refresh): the label's values are bounded, the rest share "other".
MAX_HOST_LABELS = 100
_host_labels: set[str] = set()


def _host_label(host: str) -> str:
    if host in _host_labels:
        return host
    if len(_host_labels) < MAX_HOST_LABELS:
        _host_labels.add(host)
        return host
    return "other"


def _parse_networks(value) -> tuple[IPNetwork, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                 else ipaddress.ip_network(item.strip(), strict=False)
                 for item in items if not isinstance(item, str) or item.strip())


@dataclass(frozen=True)
class FetchPolicy:
    """Where and how the fetcher may fetch; INBOUND_FEDERATION_* settings."""
    allow_loopback: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()  # CIDRs (strings are parsed)
    ca_file: str = ""  # an extra CA bundle, beside the system's (tests and devstack: the private CA)
    timeout: float = 5.0
    max_bytes: int = 262144
    max_cache: int = 86400
    refetch_interval: float = 60.0
    min_cache: int = 60

    def __post_init__(self):
        object.__setattr__(self, "allowed_networks", _parse_networks(self.allowed_networks))

    @classmethod
    def from_env(cls, env: Env) -> FetchPolicy:
        name = env.name("INBOUND_FEDERATION_ALLOWED_NETWORKS")
        try:
            networks = _parse_networks(env.str("INBOUND_FEDERATION_ALLOWED_NETWORKS", ""))
        except ValueError:
            raise ConfigError(f"{name} must be a comma-separated list of CIDRs") from None
        ca_file = env.str("INBOUND_FEDERATION_CA_FILE", "")
        if ca_file and not os.path.isfile(ca_file):
            raise ConfigError(f"{env.name('INBOUND_FEDERATION_CA_FILE')} names no file: {ca_file!r}")
        return cls(
            allow_loopback=env.bool("INBOUND_FEDERATION_ALLOW_LOOPBACK", False),
            allowed_networks=networks,
            ca_file=ca_file,
            timeout=env.float("INBOUND_FEDERATION_FETCH_TIMEOUT", 5.0, minimum=0.1),
            max_bytes=env.int("INBOUND_FEDERATION_MAX_DOCUMENT_BYTES", 262144, minimum=1024),
            max_cache=env.int("INBOUND_FEDERATION_MAX_CACHE", 86400, minimum=0),
            refetch_interval=env.float("INBOUND_FEDERATION_REFETCH_INTERVAL", 60.0),
            min_cache=env.int("INBOUND_FEDERATION_MIN_CACHE", 60, minimum=0),
        )

    def address_allowed(self, address: str) -> bool:
        """May a connection go to this IP address?"""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
            elif ip.sixtofour is not None:
                ip = ip.sixtofour  # 2002:a9fe:a9fe::/48 reaches 169.254.169.254 via a 6to4 relay (RFC 3056)
        if any(ip in network for network in self.allowed_networks):
            return True
        if ip.is_loopback:
            return self.allow_loopback
        # is_site_local: fec0::/10, deprecated (RFC 3879) but still routed inside some sites.
        return ip.is_global and not (ip.is_private or ip.is_multicast or ip.is_reserved or ip.is_link_local
                                     or ip.is_unspecified or getattr(ip, "is_site_local", False))


class AddressRefused(OSError):
    """The host resolved to an address the policy refuses."""


class _GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses the whole host when any address is not
    allowed; aiohttp connects to exactly the addresses returned here."""

    def __init__(self, policy: FetchPolicy):
        self._inner = ThreadedResolver()
        self._policy = policy

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not results or not all(self._policy.address_allowed(r["host"]) for r in results):
            raise AddressRefused(f"{host} resolves to an address that is not allowed")
        return results

    async def close(self) -> None:
        await self._inner.close()


def _guarded_socket_factory(policy: FetchPolicy):
    """aiohttp's socket_factory: the last check before any connect, on the very address the
    socket is about to reach, whatever produced it (the resolver, or an IP literal aiohttp
    never resolves). The checks before it refuse earlier with a clearer reason; this one holds
    if a parser difference ever lets an address past them."""
    def factory(addr_info) -> socket.socket:
        family, type_, proto, _, address = addr_info
        if not policy.address_allowed(str(address[0])):
            raise AddressRefused(f"connection to {address[0]} refused by the fetch policy")
        return socket.socket(family=family, type=type_, proto=proto)
    return factory


def _refused(exc: BaseException) -> bool:
    return any(isinstance(e, AddressRefused) for e in (exc.__cause__, getattr(exc, "os_error", None)))


class _FetchFailed(Exception):
    def __init__(self, outcome: str, reason: str):
        self.outcome = outcome
        self.reason = reason
        super().__init__(reason)


@dataclass
class _Entry:
    value: object  # KeySet (jwks) or dict (discovery)
    fetched_at: float  # time.monotonic()
    fresh_for: float
    stale_for: float


@dataclass
class _UrlState:
    kind: Kind
    url: str
    host: str
    max_cache: int
    entry: _Entry | None = None
    task: asyncio.Task | None = field(default=None, repr=False)
    last_started: float = -math.inf
    error: str = ""
    error_at: float = -math.inf


def _freshness(cache_control: list[str], minimum: int, maximum: int) -> float:
    """Cache-Control max-age (RFC 9111 §5.2.2.1) clamped to [minimum, maximum]; the minimum wins
    (a lifespan of 0 would refetch on every read: the IdP hammered, the keys never served)."""
    joined = ",".join(cache_control)
    if _NO_CACHE.search(joined):
        seconds = 0
    else:
        match = _MAX_AGE.search(joined)
        digits = match.group(1) if match else ""
        seconds = (DEFAULT_FRESHNESS if not digits else maximum if len(digits) > _MAX_AGE_DIGITS
                   else int(digits))
    return float(max(min(seconds, maximum), minimum))


def _check_document(kind: Kind, document: object) -> object:
    if kind == "jwks":
        try:
            return KeySet.from_jwks(document)
        except ValueError as exc:
            raise _FetchFailed("invalid", str(exc)) from None
    if not isinstance(document, dict):
        raise _FetchFailed("invalid", "discovery document is not an object")
    for name in ("issuer", "jwks_uri"):
        if not isinstance(document.get(name), str):
            raise _FetchFailed("invalid", f"discovery document has no {name}")
    return document


class Fetcher:
    """Cached, guarded JWKS and discovery documents, one per URL; fetched in the background."""

    def __init__(self, policy: FetchPolicy, clock=time.monotonic):
        self.policy = policy
        self._clock = clock
        self._states: OrderedDict[tuple[str, str], _UrlState] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # ---- what callers use (cache reads; never awaits the network)

    def key_set(self, jwks_uri: str, *, max_cache: int | None = None) -> KeySet:
        """The cached keys (stale-if-error included); a miss starts a fetch and raises
        KeysPending; a URL the policy refuses raises InvalidJwt."""
        return self._read("jwks", jwks_uri, max_cache)

    def discovery(self, url: str, *, max_cache: int | None = None) -> dict:
        """The OpenID discovery document (OpenID Connect Discovery §4), cached like a JWKS."""
        return self._read("discovery", url, max_cache)

    def refetch_for_unknown_kid(self, jwks_uri: str, *, max_cache: int | None = None) -> bool:
        """A token named a kid the cached set lacks: start one refetch unless the URL was
        fetched within refetch_interval. True when a fetch is under way (the caller raises
        KeysPending), False when rate-limited (the caller refuses: unknown kid)."""
        state = self._state("jwks", jwks_uri, max_cache)
        if state.task is not None:
            return True  # a flood shares the fetch under way
        if self._clock() - state.last_started < self.policy.refetch_interval:
            REFETCH_LIMITED.inc()
            return False
        self._start(state)
        return True

    def warm(self, url: str, kind: Kind, max_cache: int | None = None) -> None:
        """Prefetch in the background (at start, on registry change events); never raises."""
        try:
            state = self._state(kind, url, max_cache)
        except InvalidJwt as exc:
            log.warning("not prefetching a %s URL the policy refuses: %s", kind, exc.reason)
            return
        entry = state.entry
        if entry is None or self._clock() - entry.fetched_at >= entry.fresh_for * REFRESH_AHEAD:
            self._maybe_start(state)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- the cache

    def check_url(self, url: str) -> str:
        """The URL's host when the policy lets it be fetched, else InvalidJwt. Parsed by yarl,
        the parser aiohttp connects with: the host checked is the host reached."""
        try:
            parts = URL(url)
            host = parts.host
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except (ValueError, TypeError, AttributeError, UnicodeError):
            raise InvalidJwt("not a URL") from None
        if parts.scheme != "https":
            raise InvalidJwt(f"only https URLs are fetched ({parts.scheme or 'no'} scheme)")
        if not host:
            raise InvalidJwt("URL without a host")
        if parts.user is not None or parts.password is not None:
            raise InvalidJwt("URL with user information")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host  # a name: checked by the resolver, address by address
        if not self.policy.address_allowed(host):
            raise InvalidJwt(f"address {host} is not allowed (private, loopback or reserved)")
        return host

    def _state(self, kind: Kind, url: str, max_cache: int | None) -> _UrlState:
        key = (kind, url)
        state = self._states.get(key)
        if state is None:
            host = self.check_url(url)
            state = _UrlState(kind, url, host, self.policy.max_cache)
            self._states[key] = state
            while len(self._states) > MAX_URLS:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
            if max_cache is None:
                return state  # keep the lifespan its owner gave (refetch_for_unknown_kid passes none)
        wanted = self.policy.max_cache if max_cache is None else min(max_cache, self.policy.max_cache)
        state.max_cache = max(wanted, self.policy.min_cache, 0)  # stale-if-error never below the floor
        return state

    def _read(self, kind: Kind, url: str, max_cache: int | None):
        state = self._state(kind, url, max_cache)
        now = self._clock()
        entry = state.entry
        if entry is not None:
            age = now - entry.fetched_at
            if age < entry.fresh_for:
                if age >= entry.fresh_for * REFRESH_AHEAD:
                    self._maybe_start(state)
                CACHE_AGE.labels(kind, _host_label(state.host)).set(age)
                return entry.value
            self._maybe_start(state)
            if age < entry.fresh_for + entry.stale_for:
                STALE_SERVED.labels(kind).inc()
                CACHE_AGE.labels(kind, _host_label(state.host)).set(age)
                return entry.value
            state.entry = None  # past stale-if-error too: refused from now on until a fetch succeeds
        if state.task is None and state.error and now - state.error_at < self._retry_after_error():
            raise InvalidJwt(f"{kind} unavailable: {state.error}")
        self._maybe_start(state)
        raise KeysPending(detail=f"{kind} being fetched")

    def _retry_after_error(self) -> float:
        return min(RETRY_AFTER_ERROR, self.policy.refetch_interval)

    def _maybe_start(self, state: _UrlState) -> None:
        if state.task is not None or self._closed:
            return
        if state.error and self._clock() - state.error_at < self._retry_after_error():
            return
        self._start(state)

    def _start(self, state: _UrlState) -> None:
        state.last_started = self._clock()
        task = asyncio.get_running_loop().create_task(self._refresh(state))
        state.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, state: _UrlState) -> None:
        try:
            value, fresh_for = await self._fetch(state.kind, state.url, state.max_cache)
        except _FetchFailed as exc:
            state.error, state.error_at = exc.reason, self._clock()
            FETCHES.labels(state.kind, exc.outcome).inc()
            log.warning("federation fetch failed: %s %s: %s", state.kind, state.host, exc.reason,
                        extra={"kind": state.kind, "host": state.host, "outcome": exc.outcome})
        except Exception as exc:  # never let a background task die unobserved
            state.error, state.error_at = f"unexpected {type(exc).__name__}", self._clock()
            FETCHES.labels(state.kind, "error").inc()
            log.exception("federation fetch failed unexpectedly", extra={"kind": state.kind, "host": state.host})
        else:
            state.entry = _Entry(value, self._clock(), fresh_for, float(state.max_cache))
            state.error, state.error_at = "", -math.inf
            FETCHES.labels(state.kind, "ok").inc()
            if state.kind == "discovery":
                self.warm(value["jwks_uri"], "jwks", state.max_cache)  # the keys are wanted next
        finally:
            state.task = None

    # ---- HTTP

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = ssl.create_default_context()
            if self.policy.ca_file:
                context.load_verify_locations(self.policy.ca_file)
            connector = aiohttp.TCPConnector(resolver=_GuardedResolver(self.policy), ssl=context,
                                             use_dns_cache=False, limit=64, limit_per_host=4,
                                             socket_factory=_guarded_socket_factory(self.policy))
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
        return self._session

    async def _fetch(self, kind: Kind, url: str, max_cache: int) -> tuple[object, float]:
        limit = self.policy.max_bytes
        try:
            async with self._client().get(url, allow_redirects=False) as response:
                if 300 <= response.status < 400:
                    raise _FetchFailed("redirect", f"HTTP {response.status} redirect not followed")
                if response.status != 200:
                    raise _FetchFailed("http_error", f"HTTP {response.status}")
                content_type = response.content_type
                if content_type != "application/json" and not content_type.endswith("+json"):
                    raise _FetchFailed("not_json", "the answer is not application/json")
                if response.content_length is not None and response.content_length > limit:
                    raise _FetchFailed("too_large", f"document larger than {limit} bytes")
                body = bytearray()
                async for chunk in response.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > limit:
                        raise _FetchFailed("too_large", f"document larger than {limit} bytes")
                cache_control = response.headers.getall("Cache-Control", [])
        except _FetchFailed:
            raise
        except asyncio.TimeoutError:
            raise _FetchFailed("timeout", f"no answer within {self.policy.timeout:g} s") from None
        except aiohttp.ClientConnectorDNSError as exc:
            if _refused(exc):
                raise _FetchFailed("refused", "the host resolves to an address that is not allowed") from None
            raise _FetchFailed("error", "the host name does not resolve") from None
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError):
            raise _FetchFailed("tls_error", "TLS handshake or certificate verification failed") from None
        except (aiohttp.ClientError, OSError) as exc:
            if _refused(exc) or isinstance(exc, AddressRefused):
                raise _FetchFailed("refused", "the address connected to is not allowed") from None
            raise _FetchFailed("error", f"connection failed ({type(exc).__name__})") from None
        try:
            document = json.loads(bytes(body))
        except ValueError:
            raise _FetchFailed("not_json", "the answer is not valid JSON") from None
        value = _check_document(kind, document)
        return value, _freshness(cache_control, self.policy.min_cache, max_cache)


class RemoteKeys:
    """A KeySource (inboundlib.jose.validator) over a JWKS URI: a client's or an
    integration's `jwks_uri`, optionally pinned to one kid."""

    def __init__(self, fetcher: Fetcher, jwks_uri: str, *, max_cache: int | None = None, kid: str = ""):
        self.fetcher, self.jwks_uri, self.max_cache, self.kid = fetcher, jwks_uri, max_cache, kid

    def keys(self) -> KeySet:
        key_set = self.fetcher.key_set(self.jwks_uri, max_cache=self.max_cache)
        return key_set.pinned(self.kid) if self.kid else key_set

    def refetch(self) -> bool:
        if self.kid:
            return False  # pinned: another kid is never trusted, whatever the URL now serves
        return self.fetcher.refetch_for_unknown_kid(self.jwks_uri, max_cache=self.max_cache)


class DiscoveredKeys:
    """A KeySource for an OpenID provider: its discovery document names its `jwks_uri`; the
    document's `issuer` must be the one registered (OpenID Connect Discovery §4.3)."""

    def __init__(self, fetcher: Fetcher, discovery_url: str, issuer: str, *, max_cache: int | None = None):
        self.fetcher, self.discovery_url, self.issuer, self.max_cache = fetcher, discovery_url, issuer, max_cache

    def jwks_uri(self) -> str:
        document = self.fetcher.discovery(self.discovery_url, max_cache=self.max_cache)
        if document["issuer"] != self.issuer:
            raise InvalidJwt("the discovery document names another issuer")
        return document["jwks_uri"]

    def keys(self) -> KeySet:
        return self.fetcher.key_set(self.jwks_uri(), max_cache=self.max_cache)

    def refetch(self) -> bool:
        return self.fetcher.refetch_for_unknown_kid(self.jwks_uri(), max_cache=self.max_cache)

    def warm(self) -> None:
        """Prefetch the discovery document (its jwks_uri follows once it is in)."""
        self.fetcher.warm(self.discovery_url, "discovery", self.max_cache)

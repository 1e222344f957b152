"""Events on NATS JetStream (DESIGN.md: events are protobuf with a unique id).

`EventBus.publish` never blocks and never fails the caller: events go into a
bounded in-memory buffer that a background task sends to JetStream, each with
`Nats-Msg-Id` = event id so a retried publish is stored once. What happens
while NATS cannot take them depends on the delivery (INBOUND_EVENTS_DELIVERY):

- durable (the default; the bus has a spool, inboundlib.spool): events go to a
  local append-only spool, fsync'ed, and are replayed in order when NATS is
  back (or at the next start). A message NATS refuses for good (a subject these
  credentials may not publish, services/nats_access.py) is logged, counted
  (EVENTS_REJECTED) and set aside (spooled ones, in the spool's `rejected`) or
  dropped, so that it cannot hold up the spool behind it.
  A caller that must not answer before its event
  is durable (the token path: a token is answered only once its audit event
  is) publishes with `awaited=True` and then `await bus.durable(event_id)`:
  that returns once JetStream acknowledged the event or the spool holds it, and
  raises AuditUnavailable (temporarily_unavailable) when the spool is full.
  Concurrent callers share one publish round and one fsync.
- buffered (no spool; chosen explicitly): the buffer holds them in memory (past
  its bound, new events are dropped, counted and logged) and `durable` returns
  at once; what a crash would lose is reported in metrics (EVENTS_IN_MEMORY and
  the age of the oldest).

Cache invalidation listens with plain core subscriptions on the same subjects.

Names: the subject constants below are relative to an installation
(`Installation`): `token.issued` is sent as `<installation>.events.token.issued`
into the stream `<INSTALLATION>_EVENTS`, so several installations can share one
NATS (INBOUND_INSTALLATION, default `inbound`: the names of earlier versions).
How a process reaches NATS (URL, credentials, TLS) is `NatsSettings`; which
subjects each service's credentials may use is services/nats_access.py.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import nats
from nats.errors import MaxPayloadError
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError

from inbound.events.v1 import events_pb2
from inboundlib import actors
from inboundlib.config import ConfigError, Env
from inboundlib.logs import request_id_var
from inboundlib.metrics import (
    EVENTS_BUFFERED,
    EVENTS_DROPPED,
    EVENTS_IN_MEMORY,
    EVENTS_IN_MEMORY_OLDEST_SECONDS,
    EVENTS_REFUSED,
    EVENTS_REJECTED,
    EVENTS_SPOOL_BYTES,
)
from inboundlib.oauth.errors import TemporarilyUnavailable
from inboundlib.spool import REJECTED_NAME, Spool, SpoolFull

log = logging.getLogger(__name__)

# Subjects, relative to an installation's `<installation>.events.` (Installation.subject).
# RegistryChanged events go to registry.<entity>; subscribe to one entity's subject,
# or to REGISTRY_CHANGED_ALL for every entity.
REGISTRY_CHANGED_PREFIX = "registry."
REGISTRY_CHANGED_ALL = REGISTRY_CHANGED_PREFIX + ">"
ENTITY_CLIENT = "client"
ENTITY_SIGNING_KEY = "signing_key"
ENTITY_USER = "user"
ENTITY_SCOPE = "scope"
# Issue 10: JWT-bearer integrations (jwt_bearer follows them) and OpenID providers
# (third_party_token and token_issuer follow them).
ENTITY_INTEGRATION = "integration"
ENTITY_PROVIDER = "provider"


def registry_subject(entity: str) -> str:
    return REGISTRY_CHANGED_PREFIX + entity


CLIENT_CHANGED = registry_subject(ENTITY_CLIENT)
SIGNING_KEY_CHANGED = registry_subject(ENTITY_SIGNING_KEY)
KEYS_ROTATED = "keys.rotated"
TOKEN_ISSUED = "token.issued"
TOKEN_DENIED = "token.denied"
TOKEN_REVOKED = "token.revoked"
REVOKED_TOKEN_INTROSPECTED = "token.introspected_revoked"
ACCESS_DENIED = "access.denied"
USER_CHANGED = registry_subject(ENTITY_USER)
SCOPE_CHANGED = registry_subject(ENTITY_SCOPE)
INTEGRATION_CHANGED = registry_subject(ENTITY_INTEGRATION)
PROVIDER_CHANGED = registry_subject(ENTITY_PROVIDER)
USER_LOCKED = "user.locked"
USER_LOCK_ENDED = "user.lock_ended"
REFRESH_TOKEN_REUSED = "token.refresh_reused"
# The browser (the authorization_code service).
USER_SIGNED_IN = "user.signed_in"
USER_SIGN_IN_FAILED = "user.sign_in_failed"
CONSENT_GRANTED = "consent.granted"
CONSENT_WITHDRAWN = "consent.withdrawn"
SESSION_ENDED = "session.ended"
CODE_ISSUED = "code.issued"

# The one payload each subject carries. NATS decides who may send on a subject
# (services/nats_access.py), not what the message says: the audit log refuses a
# message whose events are not its subject's, so a service allowed to send
# token.denied cannot write a token_issued or a registry change into the trail.
PAYLOADS: dict[str, tuple[str, str]] = {  # subject -> (payload field, registry entity or "")
    CLIENT_CHANGED: ("registry_changed", ENTITY_CLIENT),
    SIGNING_KEY_CHANGED: ("registry_changed", ENTITY_SIGNING_KEY),
    KEYS_ROTATED: ("keys_rotated", ""),
    TOKEN_ISSUED: ("token_issued", ""),
    TOKEN_DENIED: ("token_denied", ""),
    TOKEN_REVOKED: ("token_revoked", ""),
    REVOKED_TOKEN_INTROSPECTED: ("revoked_token_introspected", ""),
    ACCESS_DENIED: ("access_denied", ""),
    USER_CHANGED: ("registry_changed", ENTITY_USER),
    SCOPE_CHANGED: ("registry_changed", ENTITY_SCOPE),
    INTEGRATION_CHANGED: ("registry_changed", ENTITY_INTEGRATION),
    PROVIDER_CHANGED: ("registry_changed", ENTITY_PROVIDER),
    USER_LOCKED: ("user_locked", ""),
    USER_LOCK_ENDED: ("user_lock_ended", ""),
    REFRESH_TOKEN_REUSED: ("refresh_token_reused", ""),
    USER_SIGNED_IN: ("user_signed_in", ""),
    USER_SIGN_IN_FAILED: ("user_sign_in_failed", ""),
    CONSENT_GRANTED: ("consent_granted", ""),
    CONSENT_WITHDRAWN: ("consent_withdrawn", ""),
    SESSION_ENDED: ("browser_session_ended", ""),
    CODE_ISSUED: ("authorization_code_issued", ""),
}

DEFAULT_INSTALLATION = "inbound"
_INSTALLATION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Installation:
    """The NATS names of one installation of Inbound. Lower case letters, digits,
    `-` and `_` only: the name is a subject token and, upper-cased, part of a
    stream name, so it can carry no `.`, `*`, `>` or space."""
    name: str = DEFAULT_INSTALLATION

    def __post_init__(self) -> None:
        if not _INSTALLATION_NAME.match(self.name):
            raise ConfigError(f"INBOUND_INSTALLATION must be 1-32 of a-z 0-9 - _ (starting with a letter or "
                              f"digit), got {self.name!r}")

    @property
    def subjects(self) -> str:
        """Every event subject of this installation (the stream's subjects)."""
        return f"{self.name}.events.>"

    def subject(self, relative: str) -> str:
        """The subject an event constant (TOKEN_ISSUED, ...) is sent on."""
        return f"{self.name}.events.{relative}"

    def relative(self, subject: str) -> str:
        """The event constant of a subject of this installation ("" if it is not one)."""
        prefix = f"{self.name}.events."
        return subject[len(prefix):] if subject.startswith(prefix) else ""

    @property
    def stream(self) -> str:
        return f"{self.name.upper()}_EVENTS"

    def inbox_prefix(self, identity: str) -> str:
        """Where replies to `identity`'s requests arrive (JetStream acks, API answers):
        its own subtree of _INBOX, so no other service may listen to them."""
        return f"_INBOX.{self.name}.{identity}"


def installation_from_env(env: Env) -> Installation:
    return Installation(env.str("INBOUND_INSTALLATION", DEFAULT_INSTALLATION))


@dataclass(frozen=True)
class NatsSettings:
    """How one process reaches NATS: the URL (`tls://` for TLS, the server verified
    against `ca_file`, or the system's CAs without one), its credentials (a user and
    password, or a creds file: a user JWT with its NKEY seed, or an NKEY seed alone,
    as nats-server's decentralised or nkey auth issues them) and its installation.
    `identity` is the service (or `all_in_one`) the credentials belong to: it names
    the connection and its reply inbox. The password never appears in a repr."""
    url: str = "nats://127.0.0.1:4222"
    installation: Installation = Installation()
    user: str = ""
    password: str = field(default="", repr=False)
    creds_file: str = ""
    ca_file: str = ""
    identity: str = ""

    @classmethod
    def from_env(cls, env: Env) -> NatsSettings:
        """NATS_URL, INBOUND_NATS_USER + INBOUND_NATS_PASSWORD_FILE or INBOUND_NATS_CREDS_FILE,
        INBOUND_NATS_CA_FILE, INBOUND_INSTALLATION. Files are read (and checked) now."""
        url = env.url("NATS_URL", "nats://127.0.0.1:4222", schemes=("nats", "tls"))
        user = env.str("INBOUND_NATS_USER", "")
        password_file = env.str("INBOUND_NATS_PASSWORD_FILE", "")
        creds_file = env.str("INBOUND_NATS_CREDS_FILE", "")
        ca_file = env.str("INBOUND_NATS_CA_FILE", "")
        if creds_file and (user or password_file):
            raise ConfigError("set INBOUND_NATS_CREDS_FILE or INBOUND_NATS_USER + INBOUND_NATS_PASSWORD_FILE, not both")
        if bool(user) != bool(password_file):
            raise ConfigError("INBOUND_NATS_USER and INBOUND_NATS_PASSWORD_FILE go together")
        password = _read_secret("INBOUND_NATS_PASSWORD_FILE", password_file) if password_file else ""
        if creds_file:
            _read_secret("INBOUND_NATS_CREDS_FILE", creds_file)
        if ca_file:
            _read_secret("INBOUND_NATS_CA_FILE", ca_file)
            if urlsplit(url).scheme != "tls":
                raise ConfigError("INBOUND_NATS_CA_FILE is set but NATS_URL is not tls://: the connection would "
                                  "not be encrypted")
        return cls(url=url, installation=installation_from_env(env), user=user, password=password,
                   creds_file=creds_file, ca_file=ca_file)

    def for_identity(self, identity: str) -> NatsSettings:
        return replace(self, identity=identity)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "tls"

    def connect_options(self, name: str = "") -> dict:
        """Keyword arguments of nats.connect for these settings (servers, auth, TLS, inbox)."""
        options: dict = {"servers": [self.url], "name": name or self.identity or "inbound"}
        if self.user:
            options.update(user=self.user, password=self.password)
        if self.creds_file:
            # A .creds file holds a user JWT and its seed; a bare seed file is NKEY auth.
            if "BEGIN NATS USER JWT" in Path(self.creds_file).read_text():
                options["user_credentials"] = self.creds_file
            else:
                options["nkeys_seed"] = self.creds_file
        if self.tls:
            options["tls"] = ssl.create_default_context(cafile=self.ca_file or None)
        if self.identity:
            options["inbox_prefix"] = self.installation.inbox_prefix(self.identity)
        return options


def _read_secret(setting: str, path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path} ({exc.strerror})") from None


_CREDENTIALS_REFUSED_LOG_SECONDS = 10.0
_credentials_refused_logged_at = [float("-inf")]


def _refused_credentials(text: str) -> bool:
    return "authorization violation" in text.lower() or "authentication" in text.lower()


def log_nats_error(exc: BaseException) -> None:
    """The error callback of a NATS connection. nats-py keeps retrying a connection the
    server refused, calling this each time: a refused login or a subject this service's
    credentials may not use (services/nats_access.py) is a deployment error, said loudly
    (a refused login or TLS handshake once every few seconds), in the server's or the TLS
    library's words, never with the password."""
    text = str(exc).strip()
    if "permissions violation" in text.lower():
        log.error("nats refused a subject to this service's credentials", extra={"error": text})
    elif _refused_credentials(text) or isinstance(exc, ssl.SSLError):
        now = time.monotonic()
        if now - _credentials_refused_logged_at[0] >= _CREDENTIALS_REFUSED_LOG_SECONDS:
            _credentials_refused_logged_at[0] = now
            log.error("nats connect failed, retrying", extra={"error": describe_connect_error(exc)})
    else:
        log.debug("nats error", extra={"error": repr(exc)})


class _NoSslEofNoise(logging.Filter):
    """asyncio warns on every TLS connection the peer closes (nats-py's protocol returns
    True from eof_received); a NATS over TLS that refuses a login would flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_NoSslEofNoise())


def as_settings(nats: NatsSettings | str) -> NatsSettings:
    """A bare URL is a NATS without credentials, for the default installation."""
    return nats if isinstance(nats, NatsSettings) else NatsSettings(url=nats)


def describe_connect_error(exc: BaseException) -> str:
    """What a failed connection says in a log line: the error's type, and for the
    server's refusal its own words (`Authorization Violation`), never our password."""
    text = str(exc)
    if _refused_credentials(text):
        return f"{type(exc).__name__}: the NATS server refused our credentials ({text.strip()})"
    if isinstance(exc, ssl.SSLError):  # e.g. its certificate is not from INBOUND_NATS_CA_FILE's CA
        return f"{type(exc).__name__}: TLS with the NATS server failed ({text.strip()})"
    return type(exc).__name__

ROUND_EVENTS = 1024
MESSAGE_EVENTS = 256
MESSAGE_BYTES = 256 << 10
REPLAY_MESSAGES = 64  # spooled messages replayed per round
RETRY_SECONDS = 0.5  # after a failed publish, events go to the spool (or wait, buffered) this long
BATCH_HEADER = "Inbound-Event-Batch"
# The server's word that this connection may not publish on a subject (nats_access.py): no retry helps.
_PUBLISH_REFUSED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)

Handler = Callable[[events_pb2.Event], Awaitable[None]]
# An event waiting to be sent: its subject, itself, and the future of a caller awaiting its durability.
Entry = tuple[str, events_pb2.Event, "asyncio.Future | None"]


class AuditUnavailable(TemporarilyUnavailable):
    """An event could not be made durable (NATS unreachable and the spool full, or
    the spool failed): the request that caused it is refused rather than answered
    unaudited."""


def registry_changed(entity: str, id: str, change: str) -> events_pb2.Event:
    """The one change event of every registry entity (publish names its actor)."""
    return events_pb2.Event(registry_changed=events_pb2.RegistryChanged(entity=entity, id=id, change=change))


def actor_to_pb(who: actors.Actor) -> events_pb2.Actor:
    return events_pb2.Actor(kind=who.kind, id=who.id)


async def ensure_stream(js, installation: Installation) -> None:
    """Create the installation's events stream if it does not exist; publishers and the
    audit consumer both call it. An existing stream is left as it is (an operator may
    have given it replicas or limits of their own)."""
    try:
        await js.stream_info(installation.stream)
        return
    except NotFoundError:
        pass
    try:
        await js.add_stream(StreamConfig(name=installation.stream, subjects=[installation.subjects],
                                         duplicate_window=120, max_age=14 * 24 * 3600))
    except BadRequestError:
        pass  # created meanwhile by another process


class EventBus:
    def __init__(self, nats: NatsSettings | str, source: str, *, buffer_limit: int = 100_000,
                 spool: Spool | None = None):
        self.nats = as_settings(nats)
        self.installation = self.nats.installation
        self.source = source
        self.buffer_limit = buffer_limit
        self.spool = spool  # durable delivery when set (see the module docstring)
        self._buffer: deque[Entry] = deque()
        self._low: deque[Entry] = deque()
        self._inflight: list[Entry] = []  # taken from the buffers by the round in progress
        self._waiters: dict[str, asyncio.Future] = {}  # event id -> durable, for `durable()`
        self._retry_at = 0.0  # until then, publish to JetStream is not tried (durable: spool instead)
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="event-spool") if spool else None
        self._wake = asyncio.Event()
        self._nc: nats.NATS | None = None
        self._js = None
        self._handlers: list[tuple[str, Handler]] = []
        self._subscribed: set[str] = set()
        self._reconnect_hooks: list[Callable[[], Awaitable[None]]] = []
        self._hook_tasks: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._drop_logged_at = 0.0
        self._full_logged_at = 0.0
        self._loop_failed_logged_at = 0.0
        self._refused_subjects: dict[str, float] = {}  # full subject -> when the server last refused it
        self.connected = asyncio.Event()
        # Counts (re)connections, raised before `connected` is set: what a cache stored
        # during an earlier connection may have missed invalidations, even though the
        # reconnect hooks that drop it have not run yet.
        self.connections = 0
        EVENTS_IN_MEMORY.labels(source).set_function(lambda: self.pending)
        EVENTS_IN_MEMORY_OLDEST_SECONDS.labels(source).set_function(self._oldest_in_memory_age)
        EVENTS_SPOOL_BYTES.labels(source).set_function(lambda: self.spool.bytes if self.spool else 0)

    async def start(self) -> None:
        """Connect in the background; the service starts even while NATS is down.
        Durable: the spool is opened first (what it holds is replayed once connected)."""
        if self.spool is not None:
            await self._on_disk(self.spool.open)
        self._tasks.append(asyncio.create_task(self._connect_loop(), name="nats-connect"))
        self._tasks.append(asyncio.create_task(self._send_loop(), name="nats-send"))

    async def _connect_loop(self) -> None:
        delay = 0.2
        while not self._closing:
            try:
                self._nc = await nats.connect(
                    **self.nats.connect_options(self.source), max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                    connect_timeout=2, allow_reconnect=True,
                    disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect,
                    error_cb=self._on_error,
                )
                self._js = self._nc.jetstream(timeout=3)
                self._subscribed = set()  # subscriptions belong to a connection
                for subject, handler in list(self._handlers):
                    await self._subscribe(subject, handler)
                await self._nc.flush(timeout=2)  # the server has them before we rely on them
                await self._ensure_stream()
                self.connections += 1
                self.connected.set()
                self._wake.set()
                log.info("nats connected")
                self._run_reconnect_hooks()
                return
            except Exception as exc:  # keep trying: NATS may come up later
                log.warning("nats connect failed, retrying", extra={"error": describe_connect_error(exc)})
                if self._nc is not None:
                    try:
                        await self._nc.close()
                    except Exception:
                        pass
                    self._nc = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _ensure_stream(self) -> None:
        await ensure_stream(self._js, self.installation)

    async def _on_disconnect(self) -> None:
        self.connected.clear()
        log.warning("nats disconnected")

    async def _on_reconnect(self) -> None:
        self.connections += 1
        self.connected.set()
        self._wake.set()
        log.info("nats reconnected")
        self._run_reconnect_hooks()

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` whenever a connection to NATS is (re)made: events published
        while disconnected were missed by this process's subscriptions, so caches
        kept current by them must catch up (drop, or re-read their source)."""
        self._reconnect_hooks.append(hook)

    def _run_reconnect_hooks(self) -> None:
        for hook in self._reconnect_hooks:
            task = asyncio.get_running_loop().create_task(self._run_hook(hook))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    async def _run_hook(self, hook) -> None:
        try:
            await hook()
        except Exception as exc:
            log.warning("reconnect hook failed", extra={"hook": getattr(hook, "__qualname__", "?"),
                                                        "error": type(exc).__name__})

    async def _on_error(self, exc: Exception) -> None:
        refused = _PUBLISH_REFUSED.search(str(exc))
        if refused:
            self._refused_subjects[refused.group(1)] = time.monotonic()
        log_nats_error(exc)

    def _refused_for_good(self, subject: str, outcome: object, since: float) -> bool:
        """A publish that failed in a way no retry can mend: the server refused the subject
        to our credentials (its -ERR arrives long before the ack would have), or the message
        is larger than the server takes. Retrying it would block every event behind it."""
        if isinstance(outcome, MaxPayloadError):
            return True
        return (isinstance(outcome, BaseException)
                and self._refused_subjects.get(self.installation.subject(subject), float("-inf")) >= since)

    def _reject(self, subject: str, events: list[events_pb2.Event], outcome: BaseException, *,
                kept: Path | None = None) -> None:
        """Events NATS will never take from this process: logged (their ids, never their
        contents) and counted, then set aside (`kept`, spooled ones) or dropped, so that they
        do not hold up the others."""
        EVENTS_REJECTED.labels(self.source).inc(len(events))
        log.error("nats refused events for good (a subject this service may not publish, or too large); "
                  + (f"set aside in {kept}" if kept else "dropped"),
                  extra={"subject": self.installation.subject(subject), "events": len(events),
                         "event_ids": [e.event_id for e in events[:20]], "error": type(outcome).__name__})

    def publish(self, subject: str, event: events_pb2.Event, *, low_priority: bool = False,
                awaited: bool = False) -> str:
        """Queue an event; returns its id. Never blocks, never raises for NATS trouble.

        `low_priority` marks events a caller can cause at will (refused requests,
        revoked tokens presented again): when the buffer is full they go first, so
        a flood of them during a NATS outage cannot push out issued or revoked tokens
        (and in the spool they may fill only half of it).
        `awaited`: the caller will `await durable(id)` (and must)."""
        if not event.event_id:
            event.event_id = uuid.uuid4().hex
        if not event.occurred_at_unix_ms:
            event.occurred_at_unix_ms = int(time.time() * 1000)
        event.source = event.source or self.source
        if not event.HasField("actor"):
            # Whoever is in context (an operator through inboundctl, ...), else the service itself.
            event.actor.CopyFrom(actor_to_pb(actors.current() or actors.Actor(actors.SERVICE, self.source)))
        if event.HasField("registry_changed") and not event.registry_changed.HasField("actor"):
            event.registry_changed.actor.CopyFrom(event.actor)  # the change keeps who made it
        event.request_id = event.request_id or request_id_var.get()
        waiter = None
        if awaited and self.spool is not None:
            waiter = self._waiters[event.event_id] = asyncio.get_running_loop().create_future()
        if len(self._buffer) + len(self._low) >= self.buffer_limit:
            if low_priority or not self._low:
                self._dropped()
                _resolve(waiter, AuditUnavailable(detail="event buffer full"))
                return event.event_id
            _resolve(self._low.popleft()[2], AuditUnavailable(detail="event buffer full"))
            self._dropped()
        (self._low if low_priority else self._buffer).append((subject, event, waiter))
        self._wake.set()
        return event.event_id

    async def durable(self, *event_ids: str) -> None:
        """Return once these events (published with `awaited=True`) are durable:
        acknowledged by JetStream, or in the spool. Raises AuditUnavailable if one
        cannot be (the spool is full). Buffered delivery: returns at once."""
        waiters = [self._waiters[i] for i in event_ids if i in self._waiters]
        try:
            for outcome in await asyncio.gather(*waiters, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
        finally:
            for i in event_ids:
                self._waiters.pop(i, None)

    def _dropped(self) -> None:
        EVENTS_DROPPED.labels(self.source).inc()
        now = time.monotonic()
        if now - self._drop_logged_at > 5:
            self._drop_logged_at = now
            log.error("event buffer full, dropping events", extra={"limit": self.buffer_limit})

    @property
    def pending(self) -> int:
        """Events held only in this process's memory (buffered or in flight): a crash loses them."""
        return len(self._buffer) + len(self._low) + len(self._inflight)

    def _oldest_in_memory_age(self) -> float:
        heads = [q[0][1].occurred_at_unix_ms for q in (self._inflight, self._buffer, self._low) if q]
        return max(0.0, time.time() - min(heads) / 1000) if heads else 0.0

    async def _on_disk(self, fn, *args, **kwargs):
        """Spool work in the bus's one disk thread: in order, and never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._disk, lambda: fn(*args, **kwargs))

    async def _send_loop(self) -> None:
        """Adaptive batches, as on the hot-path RPCs: whatever gathered while the
        previous round was in flight goes out now, one message per subject
        (EventBatch, up to MESSAGE_EVENTS events), each awaiting its ack.

        Buffered: what fails stays at the front of the buffer and is sent again
        with the same message id, so JetStream stores it once. Durable: while NATS
        is unreachable (or a publish failed a moment ago), or older events still
        wait in the spool, events go to the spool behind them, so order is kept;
        once connected, the spool is replayed from its oldest record."""
        while True:
            pause = self._retry_at - time.monotonic() if self._retry_at > time.monotonic() else 0.2
            try:
                # Waiting for NATS (or a retry): look again shortly, or at once when events arrive.
                await asyncio.wait_for(self._wake.wait(), pause) if self._waiting() else await self._wake.wait()
            except (asyncio.TimeoutError, TimeoutError):
                pass
            self._wake.clear()
            if self._buffer or self._low:
                EVENTS_BUFFERED.labels(self.source).observe(len(self._buffer) + len(self._low))
            try:
                await self._rounds()
            except Exception as exc:
                # Never end the loop (every caller awaiting `durable` would wait for good): say
                # so, and try again after a pause (a spool that cannot be read, say).
                self._retry_at = time.monotonic() + RETRY_SECONDS
                now = time.monotonic()
                if now - self._loop_failed_logged_at > 5:
                    self._loop_failed_logged_at = now
                    log.error("event send round failed, will retry", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _rounds(self) -> None:
        """Send (or spool, or replay) until nothing more can be done now."""
        while True:
            can_publish = (self._js is not None and self.connected.is_set()
                           and time.monotonic() >= self._retry_at)
            if self.spool is not None and not (can_publish and self.spool.empty):
                replayed = can_publish and await self._replay_round()
                spooled = bool(self._buffer or self._low) and await self._spool_round()
                if not (replayed or spooled):
                    break
            elif can_publish and (self._buffer or self._low):
                await self._send_round()
            else:
                break

    def _waiting(self) -> bool:
        """Something is left to do that NATS (or a retry, or spool space) must allow first."""
        return bool(self._buffer or self._low or (self.spool is not None and not self.spool.empty))

    def _take(self) -> tuple[list[Entry], list[Entry]]:
        """The next round: up to ROUND_EVENTS events, high priority first."""
        high = [self._buffer.popleft() for _ in range(min(ROUND_EVENTS, len(self._buffer)))]
        low = [self._low.popleft() for _ in range(min(ROUND_EVENTS - len(high), len(self._low)))]
        self._inflight = high + low
        return high, low

    def _put_back(self, high: list[Entry], low: list[Entry]) -> None:
        """In front, in order: the next round takes them first."""
        self._buffer.extendleft(reversed(high))
        self._low.extendleft(reversed(low))

    async def _send_round(self) -> None:
        high, low = self._take()
        messages = _group(high) + _group(low)
        started = time.monotonic()
        try:
            outcomes = await asyncio.gather(*(self._publish(subject, [e for _, e, _ in entries])
                                              for subject, entries in messages), return_exceptions=True)
        except asyncio.CancelledError:  # closing: `close` spools or reports what is left
            self._put_back(high, low)
            raise
        finally:
            self._inflight = []
        failed: set[int] = set()
        for (subject, entries), outcome in zip(messages, outcomes):
            if self._refused_for_good(subject, outcome, started):
                self._reject(subject, [e for _, e, _ in entries], outcome)
                for entry in entries:
                    _resolve(entry[2], AuditUnavailable(detail="event refused by NATS"))
            elif isinstance(outcome, BaseException):
                failed.update(id(entry) for entry in entries)
            else:
                for entry in entries:
                    _resolve(entry[2])
        if failed:
            # Buffered: the next round sends them again. Durable: they go to the spool now.
            self._put_back([e for e in high if id(e) in failed], [e for e in low if id(e) in failed])
            error = next(o for (_, entries), o in zip(messages, outcomes) if id(entries[0]) in failed)
            log.warning("event publish failed, will retry",
                        extra={"events": len(failed), "error": type(error).__name__})
            self._retry_at = time.monotonic() + RETRY_SECONDS
            if isinstance(error, (NoStreamResponseError, NotFoundError)):
                await self._recreate_stream()

    async def _spool_round(self) -> bool:
        """Durable, NATS not available now: the events gathered go to the spool (one
        write and one fsync per priority). False if the spool cannot take them: then
        every caller waiting is refused, and the events stay in memory (sent if NATS
        comes back)."""
        high, low = self._take()
        try:
            for entries, low_priority in ((high, False), (low, True)):
                if not entries:
                    continue
                await self._on_disk(self.spool.append, [(subject, [e for _, e, _ in group])
                                                        for subject, group in _group(entries)],
                                    low_priority=low_priority)
                for entry in entries:
                    _resolve(entry[2])
                entries.clear()  # spooled: not put back below
        except Exception as exc:
            self._refuse_waiters(exc)
            self._put_back(high, low)
            return False
        except asyncio.CancelledError:
            self._put_back(high, low)
            raise
        finally:
            self._inflight = []
        return True

    def _refuse_waiters(self, exc: Exception) -> None:
        """The spool cannot take events: every request still waiting for one is refused
        (temporarily_unavailable), now rather than when its turn comes."""
        refused = [f for f in self._waiters.values() if not f.done()]
        for future in refused:
            _resolve(future, AuditUnavailable(detail="event spool full" if isinstance(exc, SpoolFull)
                                              else "event spool failed"))
        EVENTS_REFUSED.labels(self.source).inc(len(refused))
        now = time.monotonic()
        if now - self._full_logged_at > 5:
            self._full_logged_at = now
            if isinstance(exc, SpoolFull):
                log.error("event spool full: requests that need an audit event are refused",
                          extra={"limit_bytes": self.spool.limit_bytes})
            else:
                log.error("event spool failed: requests that need an audit event are refused",
                          extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _replay_round(self) -> bool:
        """Send the oldest spooled messages again, and move past those JetStream took.
        Each is sent as it was grouped, with the same message id. False if nothing was
        left or a publish failed (then not again before RETRY_SECONDS)."""
        records = await self._on_disk(self.spool.read, REPLAY_MESSAGES)
        if not records:
            return False
        started = time.monotonic()
        outcomes = await asyncio.gather(*(self._publish(r.subject, r.events) for r in records),
                                        return_exceptions=True)
        # Moved past: those JetStream took, and those it will never take (set aside, or they would
        # block the spool for good: every later event behind them, and at last 503s for everyone).
        done = 0
        refused: list = []
        for record, outcome in zip(records, outcomes):
            if self._refused_for_good(record.subject, outcome, started):
                refused.append((record, outcome))
            elif isinstance(outcome, BaseException):
                break
            done += 1
        if refused:
            kept = await self._on_disk(self.spool.set_aside, [record for record, _ in refused])
            for record, outcome in refused:
                self._reject(record.subject, record.events, outcome,
                             kept=self.spool.directory / REJECTED_NAME if kept else None)
        await self._on_disk(self.spool.consume, records[:done])
        if done < len(records):
            error = outcomes[done]
            log.warning("event replay failed, will retry", extra={"error": type(error).__name__})
            self._retry_at = time.monotonic() + RETRY_SECONDS
            if isinstance(error, (NoStreamResponseError, NotFoundError)):
                await self._recreate_stream()
            return False
        if self.spool.empty:
            log.info("event spool replayed")
        return True

    async def _publish(self, subject: str, events: list[events_pb2.Event]) -> None:
        if len(events) == 1:
            data, headers = events[0].SerializeToString(), {"Nats-Msg-Id": events[0].event_id}
        else:
            # A stable id for this exact group, so a retry of it is de-duplicated.
            data = events_pb2.EventBatch(events=events).SerializeToString()
            headers = {"Nats-Msg-Id": f"{events[0].event_id}+{len(events)}", BATCH_HEADER: "1"}
        await self._js.publish(self.installation.subject(subject), data, headers=headers, timeout=2)

    async def _recreate_stream(self) -> None:
        """NATS came back without its data (a new server, a wiped volume): make the stream again."""
        try:
            await self._ensure_stream()
        except Exception as exc:
            log.warning("stream re-create failed", extra={"error": type(exc).__name__})

    async def subscribe(self, subject: str, handler: Handler) -> None:
        """Deliver every event on `subject` to `handler` (now, or once connected)."""
        self._handlers.append((subject, handler))
        if self._nc is not None and not self._nc.is_closed:
            # Connected or reconnecting: nats-py replays subscriptions on reconnect.
            await self._subscribe(subject, handler)
            if self._nc.is_connected:
                try:
                    await self._nc.flush(timeout=2)
                except Exception:
                    pass

    async def _subscribe(self, subject: str, handler: Handler) -> None:
        key = f"{subject}#{id(handler)}"
        if key in self._subscribed:
            return
        self._subscribed.add(key)

        async def on_message(msg) -> None:
            try:
                events = decode_message(msg.data, msg.headers)
            except Exception:
                log.warning("undecodable event", extra={"subject": msg.subject})
                return
            for event in events:
                try:
                    await handler(event)
                except Exception:
                    log.exception("event handler failed", extra={"subject": msg.subject})

        await self._nc.subscribe(self.installation.subject(subject), cb=on_message)

    async def flush(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Send what is buffered (durable: or spool it), then disconnect. Durable: what
        could not be sent by `flush_timeout` is spooled, for the next start to replay."""
        await self.flush(flush_timeout)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except BaseException:
                pass
        if self.spool is not None:
            left = list(self._buffer) + list(self._low)
            try:
                if left:
                    await self._on_disk(self.spool.append, [(subject, [e for _, e, _ in entries])
                                                            for subject, entries in _group(left)])
                    self._buffer.clear()
                    self._low.clear()
            except Exception as exc:
                log.error("events not spooled at shutdown", extra={"count": len(left), "error": type(exc).__name__})
            await self._on_disk(self.spool.close)
            self._disk.shutdown(wait=True)
        if self.pending:
            log.warning("events not sent at shutdown", extra={"count": self.pending})
        if self._nc is not None:
            try:
                await self._nc.drain()
            except Exception:
                pass


def _group(taken: list[Entry]) -> list[tuple[str, list[Entry]]]:
    """Events by subject, in order, cut into messages of at most MESSAGE_EVENTS and about
    MESSAGE_BYTES (well under NATS's 1 MiB max_payload, which would refuse a message for good)."""
    by_subject: dict[str, list[Entry]] = {}
    for entry in taken:
        by_subject.setdefault(entry[0], []).append(entry)
    messages: list[tuple[str, list[Entry]]] = []
    for subject, entries in by_subject.items():
        current: list[Entry] = []
        size = 0
        for entry in entries:
            event_bytes = entry[1].ByteSize() + 8  # and its field tag and length in the batch
            if current and (len(current) >= MESSAGE_EVENTS or size + event_bytes > MESSAGE_BYTES):
                messages.append((subject, current))
                current, size = [], 0
            current.append(entry)
            size += event_bytes
        messages.append((subject, current))
    return messages


def _resolve(waiter: asyncio.Future | None, error: Exception | None = None) -> None:
    """Tell a caller awaiting `durable` that its event is durable (or, with `error`, cannot be)."""
    if waiter is None or waiter.done():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


def decode_message(data: bytes, headers: dict | None) -> list[events_pb2.Event]:
    """The events one JetStream message carries (one Event, or an EventBatch)."""
    if headers and headers.get(BATCH_HEADER):
        batch = events_pb2.EventBatch()
        batch.ParseFromString(data)
        return list(batch.events)
    event = events_pb2.Event()
    event.ParseFromString(data)
    return [event]

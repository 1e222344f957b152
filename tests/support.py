"""The one way a test waits: poll a probe until its value satisfies a condition,
or fail, after a generous deadline, with the last value seen.

Nothing in the suite sleeps a fixed time hoping something has happened; a wait
ends as soon as the condition holds, and a wait that times out says what it saw.
Deadlines are generous on purpose (the suite shares 2 cores with other work):
how fast something happens is the SLO set's business (`make slo`), not a test's.

    rows = await eventually(lambda: audit_rows(jti), until=lambda rows: len(rows) == 1,
                            message="the issued token's audit row")
    eventually_sync(lambda: http.get("/readyz").status_code, until=lambda s: s == 200)

`probe` may be sync or async. Exceptions of the types in `ignore` count as "not
yet" (and are shown if the deadline passes); any other exception fails at once.
"""
from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable
from typing import Any

from inboundlib import identity

DEFAULT_TIMEOUT = 30.0
_FIRST_INTERVAL = 0.01
_MAX_INTERVAL = 0.2


class _Nothing:
    def __repr__(self) -> str:
        return "<no value: the probe never returned>"


_NOTHING = _Nothing()


def _truthy(value: Any) -> bool:
    return bool(value)


def _failure(message: str, timeout: float, polls: int, last: Any, error: BaseException | None) -> AssertionError:
    what = message or "condition"
    text = f"{what}: not met within {timeout:g} s ({polls} polls); last value: {last!r}"
    if error is not None:
        text += f"; last error: {type(error).__name__}: {error}"
    return AssertionError(text)


async def eventually(probe: Callable[[], Any], *, until: Callable[[Any], bool] = _truthy,
                     timeout: float = DEFAULT_TIMEOUT, interval: float = _MAX_INTERVAL,
                     ignore: tuple[type[BaseException], ...] = (), message: str = "") -> Any:
    """Call `probe()` (awaiting it if it returns an awaitable) until `until(value)` is
    true, and return that value. Polls quickly at first, then every `interval` s."""
    deadline = time.monotonic() + timeout
    pause, polls = _FIRST_INTERVAL, 0
    last: Any = _NOTHING
    error: BaseException | None = None
    while True:
        polls += 1
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            error = exc
        else:
            last, error = value, None
            if until(value):
                return value
        if time.monotonic() >= deadline:
            raise _failure(message, timeout, polls, last, error)
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, interval)


def eventually_sync(probe: Callable[[], Any], *, until: Callable[[Any], bool] = _truthy,
                    timeout: float = DEFAULT_TIMEOUT, interval: float = _MAX_INTERVAL,
                    ignore: tuple[type[BaseException], ...] = (), message: str = "") -> Any:
    """`eventually` for code without an event loop (HTTP through httpx.Client, processes)."""
    deadline = time.monotonic() + timeout
    pause, polls = _FIRST_INTERVAL, 0
    last: Any = _NOTHING
    error: BaseException | None = None
    while True:
        polls += 1
        try:
            value = probe()
        except ignore as exc:
            error = exc
        else:
            last, error = value, None
            if until(value):
                return value
        if time.monotonic() >= deadline:
            raise _failure(message, timeout, polls, last, error)
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, interval)


# --- audit: measures independent of the audit table's primary key ------------------------------------
#
# audit_log's primary key is the event id, so counting rows per event id can never
# show a duplicate. A copy stored under any other id (a redelivery given a fallback
# id, a republish with a fresh one) still carries the same payload: count rows per
# payload field (a token's jti, unique per token), after the consumer has handled
# every message the stream held, so a late copy cannot arrive after the count.

async def audit_copies(conn, values: list[str], field: str = "jti") -> dict[str, int]:
    """How many audit rows carry each of `values` in their payload's `field`
    (values that are not stored at all are absent from the answer)."""
    rows = await conn.fetch("SELECT detail->>$1 AS value, count(*) AS n FROM audit_log"
                            " WHERE detail->>$1 = ANY($2::text[]) GROUP BY 1", field, values)
    return {r["value"]: r["n"] for r in rows}


# The debug system's settings (conftest's `debug_stack`, for tests/integration/test_password_secrets.py
# and test_refresh_token.py): every process logs at DEBUG, so a scan for secrets reads every line
# any of them writes; a username locks after two failures from an address (no waiting through
# back-offs); a refresh token's grace window is short, so that "after the window" comes soon.
DEBUG_ENV = {"INBOUND_LOG_LEVEL": "debug", "INBOUND_LOGIN_LOCK_AFTER": "2", "INBOUND_REFRESH_GRACE_SECONDS": "3"}


async def audit_caught_up(stack, *, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Wait until the audit consumer of `stack` has stored and acked every message its
    event stream holds now; returns that stream sequence. (Publish through an EventBus?
    `await bus.flush()` first, so that what it buffered is in the stream.)"""
    from services.audit.consumer import DURABLE

    stream = stack.installation.stream
    nc = await nats_connect(stack, "audit")  # the one identity that may read its consumer's state
    try:
        js = nc.jetstream()
        last = (await js.stream_info(stream)).state.last_seq
        await eventually(lambda: js.consumer_info(stream, DURABLE),
                         until=lambda info: info.ack_floor.stream_seq >= last, timeout=timeout,
                         message=f"the audit consumer acks up to stream sequence {last}")
        return last
    finally:
        await nc.close()


async def nats_connect(stack, identity: str, **options):
    """A NATS connection to `stack`'s server with the credentials (and so the subject
    permissions, services/nats_access.py) of service `identity`."""
    import nats

    return await nats.connect(**stack.nats_settings(identity).connect_options(), **options)


# --- who calls what: each RPC as the caller that is meant to make it --------------------------------
#
# Every gRPC port is mutual TLS and each RPC has its allowed callers (services/access.py):
# a test calls each RPC with the identity that should be allowed to make it.

GRANT_SERVICE = identity.service("client_credentials")  # Issue, client lookups: a grant service
EDGE = identity.service("edge")                           # Revoke (the edge serves /oauth/revoke)
ISSUER_SERVICE = identity.service("token_issuer")         # revocations and opaque tokens in the registry
RESOURCE_SERVER = identity.resource_server("sample")      # Introspect, GetJwks
OPERATOR = identity.operator("dev")                       # every administrative RPC


class IssuerAs:
    """token_issuer's client interface, each call made as the caller meant to make it:
    Issue as a grant service, Introspect and GetJwks as a resource server, Revoke as
    the edge, and the administrative RPCs as the operator. `addr`: another replica."""

    def __init__(self, stack, addr: str | None = None, *, kind: str | None = None):
        from services.token_issuer.client import IssuerClient

        self._channels = {caller: stack.channel("token_issuer", kind=kind, caller=caller, addr=addr)
                          for caller in (GRANT_SERVICE, RESOURCE_SERVER, EDGE, OPERATOR)}
        self._clients = {caller: IssuerClient(channel) for caller, channel in self._channels.items()}

    def as_(self, caller):
        return self._clients[caller]

    async def issue(self, *args, **kwargs):
        return await self._clients[GRANT_SERVICE].issue(*args, **kwargs)

    async def introspect(self, *args, **kwargs):
        return await self._clients[RESOURCE_SERVER].introspect(*args, **kwargs)

    async def jwks(self):
        return await self._clients[RESOURCE_SERVER].jwks()

    async def revoke(self, *args, **kwargs):
        return await self._clients[EDGE].revoke(*args, **kwargs)

    async def revoke_client_tokens(self, *args, **kwargs):
        return await self._clients[OPERATOR].revoke_client_tokens(*args, **kwargs)

    async def list_keys(self):
        return await self._clients[OPERATOR].list_keys()

    async def rotate_key(self, *args, **kwargs):
        return await self._clients[OPERATOR].rotate_key(*args, **kwargs)

    async def rewrap_keys(self):
        return await self._clients[OPERATOR].rewrap_keys()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


# --- an outside resource server on the introspection port (no client certificate: a token) -----------

async def introspection_pass(stack, addr: str | None = None) -> str:
    """What a resource server outside Inbound presents on token_issuer's introspection
    port: a client-credentials access token with `inbound.introspect`, of a client of its own."""
    from services.token_issuer.api import IssueRequest
    from services.token_issuer.client import IssuerClient

    client, _ = await register_client(stack, scopes=["inbound.introspect"])
    channel = stack.channel("token_issuer", caller=GRANT_SERVICE, addr=addr)
    try:
        issued = await IssuerClient(channel).issue(IssueRequest(
            client_id=client.client_id, subject=client.client_id, scopes=("inbound.introspect",), format="jwt",
            lifetime_seconds=3600, grant_type="client_credentials"))
    finally:
        await channel.close()
    return issued.access_token


def introspection_channel(stack, token: str | None, addr: str | None = None):
    """A channel to token_issuer's introspection port as a resource server outside Inbound:
    TLS with the installation's CA but no client certificate, and `token` (when given)
    as `authorization: Bearer` on every call (gRPC's access-token call credentials)."""
    import grpc

    from inboundlib.hosting import INTROSPECTION
    from services.modules import TABLE

    credentials = grpc.ssl_channel_credentials(stack.ca.ca_file.read_bytes())
    if token is not None:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return grpc.aio.secure_channel(addr or stack.addr("token_issuer", INTROSPECTION), credentials,
                                   options=[("grpc.ssl_target_name_override", TABLE["token_issuer"].k8s_name)])


async def ensure_scopes(registry, scopes) -> None:
    """Add the scopes the catalog lacks, as an operator does before giving them to a client
    (a client may only be given catalog scopes). `registry`: a RegistryClient as the operator."""
    from services.client_registry.client import add_missing_scopes

    await add_missing_scopes(registry, list(scopes))


# --- systems of a test's own --------------------------------------------------------------------------

async def register_client(stack, **spec):
    """Register a client on `stack` (any Stack, e.g. a private one) as the operator; returns (record, secret)."""
    from services.client_registry.api import ClientSpec
    from services.client_registry.client import RegistryClient

    spec.setdefault("name", "test-" + uuid.uuid4().hex[:8])
    spec.setdefault("grant_types", ["client_credentials"])
    spec.setdefault("scopes", ["api.read", "api.write"])
    channel = stack.channel("client_registry", caller=OPERATOR)
    try:
        registry = RegistryClient(channel)
        await ensure_scopes(registry, spec["scopes"])
        return await registry.create_client(ClientSpec(**spec))
    finally:
        await channel.close()


async def serving(stack, name: str, addr: str, service: str = "") -> None:
    """Wait until service `name`'s gRPC server at `addr` (a replica of `stack`'s) answers its health
    check SERVING (a port that accepts connections may not serve yet; a loaded machine makes the gap visible)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = stack.channel(name, addr=addr, caller=OPERATOR)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        await eventually(lambda: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5),
                         until=lambda reply: reply.status == health_pb2.HealthCheckResponse.SERVING,
                         ignore=(grpc.aio.AioRpcError,), message=f"{addr} serving {service or 'its services'}")
    finally:
        await channel.close()


def counter_key(username: str) -> str:
    """How login_failures names a username's sign-in counters: a digest, never the username."""
    from services.client_registry.users import username_digest, username_key

    return username_digest(username_key(username))

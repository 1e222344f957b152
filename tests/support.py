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


# --- systems of a test's own --------------------------------------------------------------------------

async def register_client(stack, **spec):
    """Register a client on `stack` (any Stack, e.g. a private one); returns (record, secret)."""
    from inboundlib import grpcx
    from services.client_registry.api import ClientSpec
    from services.client_registry.client import RegistryClient

    spec.setdefault("name", "test-" + uuid.uuid4().hex[:8])
    spec.setdefault("grant_types", ["client_credentials"])
    spec.setdefault("scopes", ["api.read", "api.write"])
    channel = grpcx.channel(stack.addr("client_registry"))
    try:
        return await RegistryClient(channel).create_client(ClientSpec(**spec))
    finally:
        await channel.close()


async def serving(addr: str, service: str = "") -> None:
    """Wait until the gRPC server at `addr` answers its health check SERVING (a port that
    accepts connections may not serve yet; a loaded machine makes the gap visible)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from inboundlib import grpcx

    channel = grpcx.channel(addr)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        await eventually(lambda: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5),
                         until=lambda reply: reply.status == health_pb2.HealthCheckResponse.SERVING,
                         ignore=(grpc.aio.AioRpcError,), message=f"{addr} serving {service or 'its services'}")
    finally:
        await channel.close()

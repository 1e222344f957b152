"""gRPC server and channel bootstrap, the same for every service.

Server: the standard health service, per-method metrics, the caller's request
id in the log context, and a graceful stop. Channels: round-robin over every
address a name resolves to (one per replica behind a headless Service), fast
reconnects, and keepalives so that a dead peer is noticed. Unbatched calls
send the request id as metadata (`request_metadata()`).

Both are mutual TLS unless the process's TlsConfig (inboundlib.tls) is the
explicit plaintext mode: a server port requires a client certificate from the
installation's CA (the introspection port excepted: see tls.server_credentials),
and a channel checks that the server's certificate names the service it meant
to reach (`server_name`, the Kubernetes name), whatever address it dialled.
"""
from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inboundlib import actors, authz, tls
from inboundlib.batching import Expired, Overloaded
from inboundlib.db import UNAVAILABLE_ERRORS
from inboundlib.logs import request_id_var
from inboundlib.metrics import RPC_SECONDS
from inboundlib.oauth.errors import OAuthError, ServerError, TemporarilyUnavailable
from inboundlib.wire import expired, item_budget

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

_CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 1),
    # A restarted peer is found again within ~2 s (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    # The shortest connection attempt (gRPC names it a backoff): a TLS handshake on a loaded machine
    # can take more than 100 ms, and an attempt cut short fails the calls waiting for it.
    ("grpc.min_reconnect_backoff_ms", 5000),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class _ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: with a `gate` (inboundlib.authz), the caller's identity
    is checked against the access table first, and a call it does not allow is
    PERMISSION_DENIED, whatever its kind (unary or streaming). Unary-unary handlers
    also get the request id from metadata, the actor from the authenticated
    caller, timing by status, and the service's `unavailable_on` errors (its
    database down, say) answered as UNAVAILABLE, so callers say "try again later"
    rather than "broken". Without a gate (plaintext gRPC, explicitly configured)
    nothing is checked and the actor is taken from metadata as given."""

    def __init__(self, unavailable_on: tuple[type[BaseException], ...] = (), gate: authz.Gate | None = None):
        self.unavailable_on = unavailable_on
        self.gate = gate

    async def _admit(self, method: str, context, metadata: dict):
        """The decision admitting this call; a refused call ends here (abort raises)."""
        gate = self.gate
        decision = gate.decide(method, context.auth_context())
        if decision.caller is None and not decision.allowed and gate.bearer is not None:
            try:
                decision = await gate.decide_bearer(method, str(metadata.get("authorization", ""))) or decision
            except Exception as exc:  # the token's verifier cannot decide now (its registry away, say)
                log.warning("bearer token not checked", extra={"method": method, "error": type(exc).__name__})
                await context.abort(grpc.StatusCode.UNAVAILABLE, "a dependency is unavailable")
        if decision.allowed:
            return decision
        gate.denied(decision.caller, method)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not allowed")

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is None:
            return self._checked_stream(handler, method)
        inner = handler.unary_unary

        async def behavior(request, context):
            metadata = dict(context.invocation_metadata() or ())
            claimed = str(metadata.get(actors.ACTOR_METADATA_KEY, ""))
            caller_token = None
            if self.gate is None:
                who = actors.parse(claimed)
            else:
                decision = await self._admit(method, context, metadata)
                # An operator is its certificate's; only a relay may name someone else.
                who = (decision.relays and actors.parse(claimed)) or decision.actor
                caller_token = authz.caller_var.set(decision.caller)
            token = request_id_var.set(str(metadata.get(REQUEST_ID_KEY, ""))[:128])
            actor_token = actors.actor_var.set(who)
            started = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except self.unavailable_on as exc:
                log.warning("dependency unavailable", extra={"method": method, "error": type(exc).__name__})
                code = "UNAVAILABLE"
                await context.abort(grpc.StatusCode.UNAVAILABLE, "a dependency is unavailable")
            except grpc.aio.AbortError:
                raise  # the servicer's own status (read below)
            except Exception as exc:
                await _abort_unexpected(method, context, exc)
            except BaseException:  # cancelled
                code = context.code().name if context.code() else "CANCELLED"
                raise
            finally:
                if context.code() not in (None, grpc.StatusCode.OK):
                    code = context.code().name
                RPC_SECONDS.labels(method, code).observe(time.perf_counter() - started)
                request_id_var.reset(token)
                actors.actor_var.reset(actor_token)
                if caller_token is not None:
                    authz.caller_var.reset(caller_token)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _checked_stream(self, handler, method: str):
        """A streaming handler (the health service's Watch) behind the same check (with a
        gate) and the same answer to an unexpected exception."""
        kind = next(k for k in ("unary_stream", "stream_unary", "stream_stream") if getattr(handler, k) is not None)
        inner = getattr(handler, kind)
        gate = self.gate
        if inspect.isasyncgenfunction(inner):
            async def behavior(request, context):
                if gate is not None:
                    await self._admit(method, context, dict(context.invocation_metadata() or ()))
                try:
                    async for reply in inner(request, context):
                        yield reply
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_unexpected(method, context, exc)
        else:
            async def behavior(request, context):
                if gate is not None:
                    await self._admit(method, context, dict(context.invocation_metadata() or ()))
                try:
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_unexpected(method, context, exc)
        return getattr(grpc, f"{kind}_rpc_method_handler")(
            behavior, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


async def _abort_unexpected(method: str, context, exc: Exception) -> None:
    """An exception a servicer did not turn into a status: the detail goes to the log,
    the caller gets a generic status (gRPC's own answer, UNKNOWN with the exception's
    text, would hand a caller whatever the text holds). A dependency that is away is
    UNAVAILABLE, so callers try again later; anything else INTERNAL. Raises (abort)."""
    if is_unavailable(exc):
        log.warning("dependency unavailable", extra={"method": method, "error": type(exc).__name__})
        await context.abort(grpc.StatusCode.UNAVAILABLE, "a dependency is unavailable")
    log.error("unexpected error in a gRPC handler", exc_info=exc, extra={"method": method})
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def request_metadata() -> tuple[tuple[str, str], ...] | None:
    """The current request id, and the actor (inboundlib.actors) when one is in
    context, as call metadata, for unbatched calls. (Batched calls carry an id
    per item instead; a channel interceptor would cost every hot-path call and
    tag a batch with whichever item came first.)"""
    request_id = request_id_var.get()
    metadata = (((REQUEST_ID_KEY, request_id),) if request_id else ()) + actors.metadata()
    return metadata or None


class GrpcServer:
    """A grpc.aio server with health checking; create it inside the running loop."""

    def __init__(self, host: str, port: int, service_names: Iterable[str], *, tls_config: tls.TlsConfig,
                 require_client_cert: bool = True, unavailable_on: tuple[type[BaseException], ...] = (),
                 gate: authz.Gate | None = None):
        self.server = grpc.aio.server(
            interceptors=[_ServerInterceptor(unavailable_on, gate)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        self.address = f"{host}:{port}"
        credentials = tls.server_credentials(tls_config, require_client_cert=require_client_cert)
        if credentials is None:
            self.port = self.server.add_insecure_port(self.address)
        else:
            self.port = self.server.add_secure_port(self.address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}")

    async def start(self) -> None:
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("grpc serving", extra={"address": self.address})

    async def stop(self, grace: float) -> None:
        # Report NOT_SERVING first so balancers stop sending, then drain.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


class _ProbeHealth(health.aio.HealthServicer):
    """The health service without Watch: probes use Check, and a stream anyone who
    reaches the port could hold open (by the thousand) is no probe's."""

    async def Watch(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "use Check")


class HealthServer:
    """The standard gRPC health service alone, in plaintext, on its own port
    (INBOUND_HEALTH_PORT): kubelet's gRPC probes cannot present a client certificate.
    It answers for the whole process: SERVING once every port serves, NOT_SERVING
    from the start of a graceful stop. It serves nothing else, and no Watch streams."""

    def __init__(self, host: str, port: int):
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.health = _ProbeHealth()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.address = f"{host}:{port}"
        self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}")

    async def start(self) -> None:
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def serving(self) -> None:
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stopping(self) -> None:
        """NOT_SERVING from now on (the server itself is stopped last)."""
        await self.health.enter_graceful_shutdown()


def channel(target: str, tls_config: tls.TlsConfig, *, server_name: str) -> grpc.aio.Channel:
    """A channel to the service whose Kubernetes name is `server_name` (its certificate
    must carry it as a DNS name), authenticated with `tls_config`'s certificate, which
    it follows through rotations (tls.ReloadingChannel); or, in the explicit plaintext
    mode, an insecure channel."""
    if not target.startswith("dns:///") and not target.startswith("unix:"):
        target = "dns:///" + target
    if tls_config.plaintext:
        return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
    options = [*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", server_name)]
    return tls.ReloadingChannel(lambda credentials: grpc.aio.secure_channel(target, credentials, options=options),
                                tls_config.files)


# A peer that is stopping or restarting: UNAVAILABLE before it took the call, CANCELLED
# for a call it had taken but gave up when its graceful stop ran out of time. (Our own
# cancellation is asyncio.CancelledError, never an AioRpcError.)
_GOING_AWAY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
_TRY_LATER = (*_GOING_AWAY, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def peer_going_away(exc: BaseException) -> bool:
    """The call failed because its peer went away: an idempotent call may be sent once more."""
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _GOING_AWAY


def is_unavailable(exc: BaseException) -> bool:
    """Failures that mean 'try again later' rather than 'broken': a peer down, going
    away or too slow (gRPC), our own queue in front of it full or timed out, or
    (services hosted in one process call the registry directly) its database out of reach."""
    if isinstance(exc, (Overloaded, Expired, *UNAVAILABLE_ERRORS)):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _TRY_LATER


def infrastructure_error(exc: BaseException) -> OAuthError:
    """DESIGN.md: an unavailable dependency is `temporarily_unavailable` (503);
    anything else unexpected is `server_error` (500). Logged by the caller."""
    if is_unavailable(exc):
        return TemporarilyUnavailable(detail=type(exc).__name__)
    return ServerError(detail=type(exc).__name__)


T = TypeVar("T")


async def answer_item(meta, work: Callable[[], Awaitable[T]], *, what: str = "request") -> T | OAuthError:
    """One item of a batched RPC, answered on its own (DESIGN.md: one item never fails its
    batch neighbours): refused at once when its budget has passed, else run within it with
    its request id in the log context. An OAuthError is returned as data, and so is anything
    else that goes wrong (infrastructure_error, logged here as `what` failed); never raises."""
    token = request_id_var.set(meta.request_id)
    try:
        if expired(meta):
            raise TemporarilyUnavailable(detail="no time left before handling")
        with item_budget(meta):
            return await work()
    except OAuthError as exc:
        return exc
    except Exception as exc:
        error = infrastructure_error(exc)
        if isinstance(error, ServerError):
            log.exception(f"{what} failed")
        else:
            log.warning(f"{what} failed: a dependency is unavailable", extra={"detail": error.detail})
        return error
    finally:
        request_id_var.reset(token)


async def check_batch_size(context, items, max_batch: int) -> None:
    """A batch larger than the server takes is the caller's bug: INVALID_ARGUMENT for the call."""
    if len(items) > max_batch:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {max_batch} requests a call")

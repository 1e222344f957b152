"""Hosting services from a module table: each in its own process, or all in one.

A row of the table (`Module`) names a service, its assembly, the services it
calls and its ports. An assembly (`services/<svc>/assembly.py`) provides:

- `Settings.from_env(env)`: every setting, read and validated through `Env`
  (a bad value is a ConfigError before anything starts);
- `async start(settings, ctx) -> component`: the service running, with
  `component.api` (its plain Python interface, what other services in the same
  process call), `component.add_to_server(port, server) -> [service names]`
  (what it serves on each of its gRPC ports), `async component.stop()`, and
  optionally `component.unavailable_on` (exceptions answered UNAVAILABLE) and
  `component.watch` (a task whose end means the component failed). A service it
  calls that starts after it (a row's `calls_later`: that service calls it too)
  comes from `ctx.later(name)`, resolved at its first use;
- `connect(channel, module) -> api`, for services others call: the gRPC
  client with the same interface as `component.api`.

`serve()` runs one or several rows in this process: settings first, then each
component in dependency order with its gRPC servers (one per port, serving
only what that port serves in any layout), metrics, the plaintext health port,
and a graceful stop in reverse order. Every gRPC port and channel is mutual TLS
with the process's certificate (inboundlib.tls; one certificate per process,
whatever it hosts): a port requires a client certificate except the
INTROSPECTION kind, and a channel to a service checks that the server's
certificate carries that service's Kubernetes name. A dependency is the in-process component when it is hosted here
and a gRPC client otherwise, so the same assembly serves both layouts. This
module knows no service: the table is data handed to it.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from inboundlib import actors, authz, batching, grpcx, identity, metrics, spool, tls
from inboundlib.config import ConfigError, Env, ScopedEnv
from inboundlib.events import EventBus, NatsSettings
from inboundlib.oauth.errors import TemporarilyUnavailable

log = logging.getLogger(__name__)

GRPC, INTROSPECTION, HTTP = "grpc", "introspection", "http"
PORT_RANGE = {"minimum": 0, "maximum": 65535}
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Port:
    """A listening port of a service: `kind` names it (grpc, http, introspection, ...),
    `env` is the setting a separate process reads it from, `number` its place in the
    standard layout (Kubernetes, `make run`). An `optional` port is opened only when
    its setting is given (0 or unset: none)."""
    kind: str
    env: str
    number: int
    optional: bool = False

    @property
    def default(self) -> int:
        return 0 if self.optional else self.number


@dataclass(frozen=True)
class Module:
    """One row of the module table."""
    name: str
    assembly: str
    depends_on: tuple[str, ...] = ()
    ports: tuple[Port, ...] = ()
    # The setting callers read this service's gRPC address from (INBOUND_REGISTRY_ADDR, ...).
    address_env: str = ""
    # For grant services: the grant type the edge routes to it (its address is an item of INBOUND_GRANT_ADDRS).
    grant_type: str = ""
    # Calls every grant service of the table (the edge): a new grant needs no edit here.
    calls_grants: bool = False
    # Services it calls that start after it, because they call it (token_issuer asks
    # third_party_token about foreign tokens, and third_party_token issues through
    # token_issuer): not a start-up dependency (that would be a cycle), reached through
    # `Context.later`, resolved at the first use. Callers in every other sense (addresses,
    # network policies).
    calls_later: tuple[str, ...] = ()
    metrics_port: int = 9090

    @property
    def k8s_name(self) -> str:
        return self.name.replace("_", "-")

    def port(self, kind: str) -> Port | None:
        return next((p for p in self.ports if p.kind == kind), None)

    @property
    def main_port(self) -> Port:
        """The port its probes use: gRPC, or HTTP for the edge."""
        return self.port(GRPC) or self.port(HTTP) or self.ports[0]

    def load(self) -> ModuleType:
        return importlib.import_module(self.assembly)


GRANT_ADDRS_ENV = "INBOUND_GRANT_ADDRS"


def grant_addrs_default(table: Iterable[Module]) -> str:
    return ",".join(f"{m.grant_type}=127.0.0.1:{m.main_port.number}" for m in table if m.grant_type)


def start_dependencies(table: Mapping[str, Module], module: Module) -> tuple[str, ...]:
    """The services that must be running before `module` starts: its own list, and every
    grant service if it routes grants."""
    grants = tuple(m.name for m in table.values() if m.grant_type) if module.calls_grants else ()
    return module.depends_on + tuple(g for g in grants if g not in module.depends_on)


def dependencies(table: Mapping[str, Module], module: Module) -> tuple[str, ...]:
    """Every service `module` calls: those it starts after, and those it calls later."""
    first = start_dependencies(table, module)
    return first + tuple(name for name in module.calls_later if name not in first)


def in_dependency_order(table: Mapping[str, Module], names: Iterable[str]) -> list[str]:
    """`names` with every service after the ones it depends on (those hosted here)."""
    wanted = list(names)
    done: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in done or name not in wanted:
            return
        if name in visiting:
            raise ValueError(f"dependency cycle through {name}")
        visiting.add(name)
        for dep in start_dependencies(table, table[name]):
            visit(dep)
        visiting.discard(name)
        done.append(name)

    for name in wanted:
        visit(name)
    return done


def module_env(env: Env, module: Module, hosted: list[Module]) -> Env:
    """The settings a service reads. Alone in its process: the environment as it is.
    Beside others: `INBOUND_<SERVICE>_<SETTING>` first, then the plain name, except
    for a port setting that several hosted services share (INBOUND_GRPC_PORT): its
    plain name would put them all on one port, so only the scoped name counts."""
    if len(hosted) == 1:
        return env
    shared = {p.env for other in hosted if other is not module for p in other.ports}
    return ScopedEnv(env, module.name, unscoped_fallback_except=shared & {p.env for p in module.ports})


def read_ports(env: Env, module: Module) -> dict[str, int]:
    return {p.kind: env.int(p.env, p.default, **PORT_RANGE) for p in module.ports}


class ServiceEvents:
    """The process's event bus as one of several hosted services sees it: what it
    publishes names that service (the event's source, and its actor when no one
    else is in context), as its own process would."""

    def __init__(self, bus: EventBus, service: str):
        self._bus = bus
        self._service = service
        self._actor = actors.actor(actors.SERVICE, service)

    def publish(self, subject: str, event, **kwargs) -> str:
        event.source = event.source or self._service
        token = actors.actor_var.set(self._actor) if actors.current() is None else None
        try:
            return self._bus.publish(subject, event, **kwargs)
        finally:
            if token is not None:
                actors.actor_var.reset(token)

    def __getattr__(self, name: str):
        return getattr(self._bus, name)


@dataclass
class Context:
    """What an assembly's `start` gets: its settings' Env, the process's event bus and
    NATS settings (a component with a connection of its own uses the process's
    credentials), the stop event, its ports, and its dependencies (in process or over gRPC)."""
    module: Module
    env: Env
    events: EventBus
    nats: NatsSettings
    stop: asyncio.Event
    ports: dict[str, int]
    host: str
    _host: _Host = field(repr=False)

    async def dependency(self, name: str) -> Any:
        """The interface of service `name`: the component itself when it runs in
        this process, else its gRPC client."""
        if name not in self.module.depends_on:
            raise ValueError(f"{self.module.name} does not declare a dependency on {name}")
        return await self._host.dependency(self, name)

    def later(self, name: str) -> LateDependency:
        """The interface of service `name`, one of the row's `calls_later`, which may not be
        running yet: resolved at its first use (the component once it runs in this
        process, else its gRPC client)."""
        if name not in self.module.calls_later:
            raise ValueError(f"{self.module.name} does not declare that it calls {name} later")
        return LateDependency(self._host, self, name)

    def grants(self) -> dict[str, Any]:
        """Every grant this service routes to, by grant type: the grant services of
        the table hosted here, or else those named in INBOUND_GRANT_ADDRS."""
        return self._host.grants(self)


class LateDependency:
    """A service called by one that starts before it (Module.calls_later). Each attribute
    is looked up on the service's interface when used: hosted in this process, the
    component once it has started (before that, a call is temporarily_unavailable);
    else its gRPC client, by its address setting or, for a grant, INBOUND_GRANT_ADDRS."""

    def __init__(self, host: _Host, ctx: Context, name: str):
        self._host = host
        self._ctx = ctx
        self._name = name
        self._target: Any = None

    def _resolve(self) -> Any:
        if self._target is None:
            if self._name in self._host.components:
                self._target = self._host.components[self._name].api
            elif self._name in self._host.hosted:
                raise TemporarilyUnavailable(detail=f"{self._name} has not started yet")
            else:
                self._target = self._host.remote(self._ctx, self._name)
        return self._target

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._resolve(), attr)


class _Host:
    def __init__(self, table: Mapping[str, Module], tls_config: tls.TlsConfig, hosted: Iterable[str] = ()):
        self.table = table
        self.tls = tls_config
        self.hosted = frozenset(hosted)  # the services of this process (started or not yet)
        self.components: dict[str, Any] = {}
        self.channels: dict[str, Any] = {}
        self.clients: dict[str, Any] = {}

    def _client(self, module: Module, addr: str) -> Any:
        key = f"{module.name}@{addr}"
        if key not in self.clients:
            self.channels[key] = grpcx.channel(addr, self.tls, server_name=module.k8s_name)
            self.clients[key] = module.load().connect(self.channels[key], module)
        return self.clients[key]

    async def dependency(self, ctx: Context, name: str) -> Any:
        if name in self.components:
            return self.components[name].api
        # A grant service others call for more than its grant (jwt_bearer: client assertions)
        # has an address setting of its own; any other grant is found among the grants.
        return self.remote(ctx, name)

    def remote(self, ctx: Context, name: str) -> Any:
        """The gRPC client of service `name`, at its address setting (a grant without
        one: its INBOUND_GRANT_ADDRS entry)."""
        dep = self.table[name]
        if not dep.address_env:
            if dep.grant_type:
                return self.grants(ctx)[dep.grant_type]
            raise ConfigError(f"{name} cannot be reached from another process (no address setting)")
        return self._client(dep, ctx.env.addr(dep.address_env, f"127.0.0.1:{dep.main_port.number}"))

    def grants(self, ctx: Context) -> dict[str, Any]:
        grant_modules = {m.grant_type: m for m in self.table.values() if m.grant_type}
        # Grants hosted here are called in process; the others over gRPC (none is dropped).
        local = {m.grant_type: self.components[m.name].api for m in grant_modules.values()
                 if m.name in self.components}
        remote_defaults = [m for m in self.table.values() if m.grant_type and m.grant_type not in local]
        addrs = ctx.env.addr_map(GRANT_ADDRS_ENV, grant_addrs_default(remote_defaults))
        unknown = set(addrs) - set(grant_modules)
        if unknown:
            raise ConfigError(f"{GRANT_ADDRS_ENV} names grant types no service serves: {', '.join(sorted(unknown))}")
        remote = {grant_type: self._client(grant_modules[grant_type], addr) for grant_type, addr in addrs.items()
                  if grant_type not in local}
        return {**remote, **local}

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


async def serve(table: Mapping[str, Module], names: list[str], stop: asyncio.Event, *,
                access: authz.Policy, process_name: str, env: Env | None = None) -> None:
    """Run the services `names` of `table` in this process until `stop` is set. Every
    gRPC server checks every call against `access` (the access table; required, so a
    host cannot serve mTLS without it), except in the explicit plaintext mode, where
    without certificates no caller is known."""
    env = env or Env()
    try:
        trust_domain = identity.check_trust_domain(env.str(identity.TRUST_DOMAIN_ENV, identity.DEFAULT_TRUST_DOMAIN))
    except ValueError as exc:
        raise ConfigError(f"{identity.TRUST_DOMAIN_ENV}: {exc}") from None
    hosted = [table[n] for n in in_dependency_order(table, names)]
    host = env.str("INBOUND_BIND_HOST", "0.0.0.0")
    # One NATS identity per process: a service's own, or all_in_one's (the union of theirs).
    nats = NatsSettings.from_env(env).for_identity(process_name)
    if not nats.tls:
        log.warning("NATS connection without TLS: events and credentials travel in clear (use a tls:// NATS_URL)")
    if not (nats.user or nats.creds_file):
        log.warning("NATS connection without credentials: only a NATS that lets anyone publish accepts it "
                    "(see services/nats_access.py)")
    metrics_port = env.int("INBOUND_METRICS_PORT", 0, **PORT_RANGE)
    health_port = env.int("INBOUND_HEALTH_PORT", 0, **PORT_RANGE)
    batching.default_max_in_flight()  # INBOUND_BATCHES_IN_FLIGHT: checked now, not at the first call
    # Every setting of every service is read and checked before anything starts.
    plans = []
    for module in hosted:
        menv = module_env(env, module, hosted)
        assembly = module.load()
        plans.append((module, assembly, menv, assembly.Settings.from_env(menv), read_ports(menv, module)))
    taken: dict[int, str] = {health_port: "the health port"} if health_port else {}
    for module, _, _, _, ports in plans:
        for kind, number in ports.items():
            if number and number in taken:
                raise ConfigError(f"{module.name}'s {kind} port {number} is also {taken[number]}'s")
            taken[number] = f"{module.name} {kind}"
    events_spool = spool.from_env(env, process_name)
    # One certificate for the process, whatever it hosts (its files checked now, after every setting).
    tls_config = tls.TlsConfig.from_env(env)
    if tls_config.plaintext:
        log.warning(tls.PLAINTEXT_WARNING)

    events = EventBus(nats, process_name, spool=events_spool)
    await events.start()
    h = _Host(table, tls_config, names)
    servers: list[tuple[str, grpcx.GrpcServer]] = []
    started: list[tuple[Module, Any]] = []
    metrics_server = None
    health_server = grpcx.HealthServer(host, health_port) if health_port else None
    try:
        if health_server is not None:
            await health_server.start()
        for module, assembly, menv, settings, ports in plans:
            ctx = Context(module=module, env=menv, nats=nats, stop=stop, ports=ports, host=host, _host=h,
                          events=events if len(plans) == 1 else ServiceEvents(events, module.name))
            component = await assembly.start(settings, ctx)
            h.components[module.name] = component
            started.append((module, component))
            for kind, number in ports.items():
                if kind == HTTP or not number:
                    continue
                gate = None if tls_config.plaintext else authz.Gate(
                    access, number, authz.denial_reporter(ctx.events), trust_domain=trust_domain,
                    # A port that also admits bearer tokens: its service says whose they are.
                    bearer=getattr(component, "bearer_callers", {}).get(kind))
                server = grpcx.GrpcServer(host, number, [], gate=gate, tls_config=tls_config,
                                          require_client_cert=kind != INTROSPECTION,
                                          unavailable_on=getattr(component, "unavailable_on", ()))
                server.service_names.extend(component.add_to_server(kind, server.server))
                await server.start()
                servers.append((module.name, server))
        if metrics_port:
            metrics_server = metrics.serve(metrics_port, host)
        if health_server is not None:
            await health_server.serving()
        watches = [c.watch for _, c in started if getattr(c, "watch", None) is not None]
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([stopping, *watches], return_when=asyncio.FIRST_COMPLETED)
        failed = [w for w in watches if w.done()] if not stop.is_set() else []
        stopping.cancel()
        if failed:
            log.error("a component stopped unexpectedly", exc_info=failed[0].exception())
            stop.set()
            raise SystemExit(1)
    finally:
        stop.set()
        if health_server is not None:
            await health_server.stopping()
        for module, component in reversed(started):
            await asyncio.gather(*(s.stop(grace=STOP_GRACE_SECONDS) for n, s in servers if n == module.name))
            try:
                await component.stop()
            except Exception:
                log.exception("component did not stop cleanly", extra={"component": module.name})
        if metrics_server is not None:
            metrics_server.shutdown()
        await events.close()
        await h.close()
        if health_server is not None:
            await health_server.server.stop(0)

"""Inbound in one process: client_registry, token_issuer, the client_credentials
grant, audit and the edge, calling one another directly instead of over gRPC.

For small installs and for measuring what the gRPC hops cost. The logic is the
services' own (each service's plain Python interface is what the others call);
only the wiring differs. The gRPC APIs stay available for inboundctl and for
resource servers: every gRPC service is served on each of the ports the
separate services use (50051 registry, 50052 issuer, 50070 audit by default).
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from inboundlib import db, metrics, service
from inboundlib.batching import Coalescer
from inboundlib.config import Env
from inboundlib.events import EventBus
from inboundlib.grants.runner import GrantRunner
from inboundlib.grpcx import GrpcServer
from inboundlib.oauth.client_auth import ClientCredentials
from services.audit import server as audit_server
from services.audit.consumer import Consumer
from services.audit.log import AuditLog
from services.client_credentials.grant import ClientCredentialsGrant
from services.client_registry import server as registry_server
from services.client_registry.registry import Registry
from services.edge.app import EdgeConfig, create_app
from services.edge.server import serve
from services.token_issuer import server as issuer_server
from services.token_issuer.api import TokenInfo
from services.token_issuer.assembly import IssuerSettings, start_token_service
from services.token_issuer.introspection import TokenChecker

log = logging.getLogger("all_in_one")
SERVICES = Path(__file__).resolve().parents[1]
HOT_TIMEOUT = 3.0


class BatchedTokenStore:
    """The registry, with opaque-token writes and lookups coalesced into one
    statement per batch, as RegistryClient does across the network."""

    def __init__(self, registry: Registry):
        self._registry = registry
        self._store = Coalescer("local.StoreOpaqueTokens", lambda items, _: registry.store_opaque_tokens(items),
                                max_batch=64)
        self._lookup = Coalescer("local.GetOpaqueTokens", lambda items, _: registry.get_opaque_tokens(items),
                                 max_batch=64)

    def __getattr__(self, name):
        return getattr(self._registry, name)

    async def store_opaque_tokens(self, tokens):
        return list(await asyncio.gather(*(self._store.submit(t, HOT_TIMEOUT) for t in tokens)))

    async def get_opaque_tokens(self, token_hashes):
        return list(await asyncio.gather(*(self._lookup.submit(h, HOT_TIMEOUT) for h in token_hashes)))


class LocalTokens:
    """The edge's view of token_issuer (introspect, revoke), in process."""

    def __init__(self, checker: TokenChecker):
        self.checker = checker

    async def introspect(self, token: str, caller: ClientCredentials | None = None, *,
                         request_id: str = "") -> TokenInfo:
        return await self.checker.introspect(token, caller, internal=caller is None)

    async def revoke(self, token: str, caller: ClientCredentials | None, *, token_type_hint: str = "",
                     request_id: str = "") -> None:
        await self.checker.revoke(token, caller)


async def main(stop: asyncio.Event) -> None:
    env = Env()
    dsn = env.str("DATABASE_URL")
    nats_url = env.str("NATS_URL", "nats://127.0.0.1:4222")
    settings = IssuerSettings.from_env(env)
    host = env.str("INBOUND_BIND_HOST", "0.0.0.0")
    http_port = env.int("INBOUND_HTTP_PORT", 8080, minimum=0, maximum=65535)
    grpc_ports = [env.int(name, default, minimum=1, maximum=65535) for name, default in (
        ("INBOUND_REGISTRY_PORT", 50051), ("INBOUND_ISSUER_PORT", 50052), ("INBOUND_AUDIT_PORT", 50070))]
    metrics_port = env.int("INBOUND_METRICS_PORT", 0, minimum=0, maximum=65535)
    pool_size = env.int("INBOUND_DB_POOL_SIZE", 10, minimum=2, maximum=200)
    purge_seconds = env.int("INBOUND_PURGE_INTERVAL", 600, minimum=1)

    pool = None

    async def open_database() -> None:
        nonlocal pool
        if pool is None:
            pool = await db.create_pool(dsn, max_size=pool_size)
        await db.migrate(pool, SERVICES / "client_registry" / "migrations")
        await db.migrate(pool, SERVICES / "audit" / "migrations", table="audit_schema_migrations")

    await service.retry_until_ready("postgres", open_database, stop)
    events = EventBus(nats_url, "inbound")
    await events.start()

    registry = Registry(pool, events)
    token_store = BatchedTokenStore(registry)
    tokens = await start_token_service(settings, token_store, events, stop)
    issuer, checker = tokens.issuer, tokens.checker
    grant = GrantRunner(ClientCredentialsGrant(tokens.clients, issuer), events)
    audit_log = AuditLog(pool)

    grpc_server = GrpcServer(host, grpc_ports[0], [registry_server.SERVICE_NAME, issuer_server.SERVICE_NAME,
                                                   audit_server.SERVICE_NAME],
                             unavailable_on=db.UNAVAILABLE_ERRORS)
    for port in grpc_ports[1:]:
        grpc_server.server.add_insecure_port(f"{host}:{port}")
    registry_server.add_to_server(registry, grpc_server.server)
    issuer_server.add_to_server(issuer, checker, grpc_server.server)
    audit_server.add_to_server(audit_log, grpc_server.server)
    metrics.serve(metrics_port)
    await grpc_server.start()
    consumer = asyncio.create_task(Consumer(nats_url, audit_log).run(stop), name="audit-consumer")
    janitor = asyncio.create_task(registry.purge_periodically(purge_seconds))

    app = create_app(EdgeConfig(issuer=settings.issuer_url, grants={grant.grant_type: grant}, jwks=issuer.jwks,
                                tokens=LocalTokens(checker), events=events))
    await serve(app, host, http_port, stop)

    janitor.cancel()
    await grpc_server.stop(grace=5)
    try:
        await asyncio.wait_for(consumer, 15)
    except Exception:
        log.exception("audit consumer did not stop cleanly")
    await tokens.stop()
    await events.close()
    await pool.close()


if __name__ == "__main__":
    service.run("all_in_one", main)

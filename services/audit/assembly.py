"""audit's settings and start-up (see libs/inboundlib/hosting.py): migrations,
the JetStream consumer, and the gRPC query service.

On stop the consumer finishes the batch in hand (stored and acked) and stops;
the gRPC server has drained its calls before."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from inboundlib import db, service
from inboundlib.config import Env
from inboundlib.hosting import GRPC, Context, Module
from services.audit import server
from services.audit.client import AuditClient
from services.audit.consumer import Consumer
from services.audit.log import AuditLog

log = logging.getLogger("audit")
MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATIONS_TABLE = "audit_schema_migrations"
CONSUMER_STOP_SECONDS = 15
# The runtime role (DATABASE_URL) appends and reads, nothing more: the audit log is
# append-only against the service itself, not only by its trigger.
RUNTIME_PRIVILEGES = {"audit_log": "SELECT, INSERT"}


@dataclass(frozen=True)
class Settings:
    # URLs that may carry a password: never in a repr (a log line, a traceback's locals).
    database_url: str = field(repr=False)
    migration_database_url: str = field(repr=False)
    pool_size: int
    batch: int

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        return cls(database_url=env.str("DATABASE_URL"),
                   # The schema owner, for migrations; unset: DATABASE_URL's role migrates too.
                   migration_database_url=env.str("INBOUND_MIGRATION_DATABASE_URL", ""),
                   pool_size=env.int("INBOUND_DB_POOL_SIZE", 5, minimum=2, maximum=200),
                   # Events stored (and acked) per round.
                   batch=env.int("INBOUND_AUDIT_BATCH", 256, minimum=1, maximum=1000))


@dataclass
class AuditService:
    api: AuditLog
    consumer: Consumer
    # Ends only on stop; ending before it is a bug, and the process exits to be restarted.
    watch: asyncio.Task
    pool: object
    unavailable_on = db.UNAVAILABLE_ERRORS

    def add_to_server(self, port: str, grpc_server: grpc.aio.Server) -> list[str]:
        assert port == GRPC, port
        server.add_to_server(self.api, grpc_server)
        return [server.SERVICE_NAME]

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.watch, CONSUMER_STOP_SECONDS)
        except Exception:
            log.exception("audit consumer did not stop cleanly")
        await self.pool.close()


async def start(settings: Settings, ctx: Context) -> AuditService:
    pool = await service.open_database(settings.database_url, MIGRATIONS, ctx.stop, table=MIGRATIONS_TABLE,
                                       min_size=1, max_size=settings.pool_size,
                                       migration_url=settings.migration_database_url,
                                       runtime_privileges=RUNTIME_PRIVILEGES)
    audit_log = AuditLog(pool)
    consumer = Consumer(ctx.nats, audit_log, batch=settings.batch)
    return AuditService(api=audit_log, consumer=consumer, pool=pool,
                        watch=asyncio.create_task(consumer.run(ctx.stop), name="audit-consumer"))


def connect(channel: grpc.aio.Channel, module: Module) -> AuditClient:
    return AuditClient(channel)

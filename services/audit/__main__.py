"""audit process: migrations, the JetStream consumer, and the gRPC query service.

On SIGTERM the consumer finishes the batch in hand (stored and acked) and
stops; the gRPC server drains its calls.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from inboundlib import db, metrics, service
from inboundlib.config import Env
from inboundlib.grpcx import GrpcServer
from services.audit import server
from services.audit.consumer import Consumer
from services.audit.log import AuditLog

log = logging.getLogger("audit")
MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATIONS_TABLE = "audit_schema_migrations"


async def main(stop: asyncio.Event) -> None:
    env = Env()
    dsn = env.str("DATABASE_URL")
    nats_url = env.str("NATS_URL", "nats://127.0.0.1:4222")
    port = env.int("INBOUND_GRPC_PORT", 50070, minimum=0, maximum=65535)
    host = env.str("INBOUND_BIND_HOST", "0.0.0.0")
    metrics_port = env.int("INBOUND_METRICS_PORT", 0, minimum=0, maximum=65535)
    pool_size = env.int("INBOUND_DB_POOL_SIZE", 5, minimum=2, maximum=200)
    batch = env.int("INBOUND_AUDIT_BATCH", 256, minimum=1, maximum=1000)

    pool = None

    async def open_database() -> None:
        nonlocal pool
        if pool is None:
            pool = await db.create_pool(dsn, min_size=1, max_size=pool_size)
        await db.migrate(pool, MIGRATIONS, table=MIGRATIONS_TABLE)

    await service.retry_until_ready("postgres", open_database, stop)
    audit_log = AuditLog(pool)
    grpc_server = GrpcServer(host, port, [server.SERVICE_NAME], unavailable_on=db.UNAVAILABLE_ERRORS)
    server.add_to_server(audit_log, grpc_server.server)
    metrics.serve(metrics_port)
    await grpc_server.start()
    consumer = asyncio.create_task(Consumer(nats_url, audit_log, batch=batch).run(stop), name="audit-consumer")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({consumer, stopping}, return_when=asyncio.FIRST_COMPLETED)
    failed = consumer.done() and not stop.is_set()
    if failed:  # a bug: exit so that the process is restarted rather than serve without consuming
        log.error("audit consumer stopped unexpectedly", exc_info=consumer.exception())
        stop.set()
    stopping.cancel()
    try:
        await asyncio.wait_for(consumer, 15)
    except Exception:
        if not failed:
            log.exception("audit consumer did not stop cleanly")
    await grpc_server.stop(grace=5)
    await pool.close()
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    service.run("audit", main)

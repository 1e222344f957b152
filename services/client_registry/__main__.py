"""client_registry process: migrations, then the gRPC service."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from inboundlib import db, metrics, service
from inboundlib.config import Env
from inboundlib.events import EventBus
from inboundlib.grpcx import GrpcServer
from services.client_registry import server
from services.client_registry.registry import Registry

log = logging.getLogger("client_registry")
MIGRATIONS = Path(__file__).parent / "migrations"


async def main(stop: asyncio.Event) -> None:
    env = Env()
    dsn = env.str("DATABASE_URL")
    nats_url = env.str("NATS_URL", "nats://127.0.0.1:4222")
    port = env.int("INBOUND_GRPC_PORT", 50051, minimum=0, maximum=65535)
    host = env.str("INBOUND_BIND_HOST", "0.0.0.0")
    metrics_port = env.int("INBOUND_METRICS_PORT", 0, minimum=0, maximum=65535)
    pool_size = env.int("INBOUND_DB_POOL_SIZE", 10, minimum=1, maximum=200)
    purge_seconds = env.int("INBOUND_PURGE_INTERVAL", 600, minimum=1)

    pool = await db.create_pool(dsn, max_size=pool_size)
    await db.migrate(pool, MIGRATIONS)
    events = EventBus(nats_url, "client_registry")
    await events.start()
    grpc_server = GrpcServer(host, port, [server.SERVICE_NAME], unavailable_on=db.UNAVAILABLE_ERRORS)
    registry = Registry(pool, events)
    server.add_to_server(registry, grpc_server.server)
    metrics.serve(metrics_port)
    await grpc_server.start()
    janitor = asyncio.create_task(registry.purge_periodically(purge_seconds))
    await stop.wait()
    janitor.cancel()
    await grpc_server.stop(grace=5)
    await events.close()
    await pool.close()


if __name__ == "__main__":
    service.run("client_registry", main)

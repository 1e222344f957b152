"""The edge's HTTP server: uvicorn around the app, stopped by our stop event."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from starlette.applications import Starlette

from services.edge.protocol import bounded_protocol
from services.edge.settings import EdgeSettings

log = logging.getLogger("edge")


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: our SIGTERM handler stops it, then
    the gRPC channels and NATS close cleanly (uvicorn would re-raise the signal)."""

    def capture_signals(self):
        return contextlib.nullcontext()


async def serve(app: Starlette, host: str, port: int, stop: asyncio.Event,
                settings: EdgeSettings | None = None) -> None:
    """Serve until `stop` is set, then finish the requests in flight (10 s at most).
    Request line and headers are bounded in size and time (services/edge/protocol.py).
    HTTPS when a certificate is configured, and then every response, the server's own
    refusals too, carries Strict-Transport-Security (RFC 6797 §7.1); a plain HTTP
    response never does (§7.2)."""
    settings = settings or EdgeSettings()
    settings.check_bind(host)
    tls = {}
    headers = []
    if settings.tls:
        tls = {"ssl_certfile": settings.tls_cert_file, "ssl_keyfile": settings.tls_key_file}
        headers = [("Strict-Transport-Security", f"max-age={settings.hsts_max_age}")]
    server = _Server(uvicorn.Config(app, host=host, port=port, loop="none", http=bounded_protocol(settings),
                                    lifespan="off", access_log=False, log_config=None, server_header=False,
                                    proxy_headers=False, headers=headers, timeout_keep_alive=30,
                                    timeout_graceful_shutdown=10, **tls))
    serving = asyncio.create_task(server.serve())
    log.info("http serving", extra={"address": f"{host}:{port}", "scheme": "https" if settings.tls else "http"})
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([serving, stopped], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopped.cancel()
    await serving

"""token_issuer process."""
from __future__ import annotations

import asyncio

from inboundlib import grpcx, metrics, service
from inboundlib.config import Env
from inboundlib.events import EventBus
from services.client_registry.cache import ClientCache
from services.client_registry.client import RegistryClient
from services.token_issuer import server
from services.token_issuer.introspection import TokenChecker
from services.token_issuer.issuer import TokenIssuer
from services.token_issuer.keys import ALGORITHMS, KeyEncryptor
from services.token_issuer.revocations import RevocationSet, RevocationSync

KEY_RELOAD_SECONDS = 60


async def main(stop: asyncio.Event) -> None:
    env = Env()
    issuer_url = env.url("INBOUND_ISSUER", "http://127.0.0.1:8080")
    kek = env.key32("INBOUND_KEY_ENCRYPTION_KEY")
    alg = env.choice("INBOUND_SIGNING_ALG", "ES256", ALGORITHMS)
    # Long enough for resource servers' JWKS caches to refresh before a new key signs.
    delay = env.int("INBOUND_KEY_ACTIVATION_DELAY", 3600, minimum=0)
    audience = env.str("INBOUND_ACCESS_TOKEN_AUDIENCE", issuer_url.rstrip("/") + "/api")
    registry_addr = env.addr("INBOUND_REGISTRY_ADDR", "127.0.0.1:50051")
    nats_url = env.str("NATS_URL", "nats://127.0.0.1:4222")
    port = env.int("INBOUND_GRPC_PORT", 50052, minimum=0, maximum=65535)
    host = env.str("INBOUND_BIND_HOST", "0.0.0.0")
    metrics_port = env.int("INBOUND_METRICS_PORT", 0, minimum=0, maximum=65535)
    cache_ttl = env.float("INBOUND_CLIENT_CACHE_TTL", 60.0)
    resync = env.float("INBOUND_REVOCATION_RESYNC_SECONDS", 5.0, minimum=0.1)
    # A second port serving Introspect only, for resource servers outside Inbound (0: none).
    introspection_port = env.int("INBOUND_INTROSPECTION_PORT", 0, minimum=0, maximum=65535)
    # JWTs remembered as verified (0: verify every time).
    verified_cache = env.int("INBOUND_VERIFIED_JWT_CACHE", 50_000, minimum=0, maximum=10_000_000)

    registry_channel = grpcx.channel(registry_addr)
    events = EventBus(nats_url, "token_issuer")
    await events.start()
    registry = RegistryClient(registry_channel)
    issuer = TokenIssuer(registry, KeyEncryptor(kek), issuer=issuer_url,
                         default_audience=audience, alg=alg, activation_delay=delay, events=events)
    await service.retry_until_ready("registry", issuer.start, stop)
    clients = ClientCache(registry, ttl=cache_ttl)
    await clients.attach(events)
    revocations = RevocationSet()
    # Serve only once the revocations made so far are known (a late replica must honour them).
    sync = RevocationSync(revocations, registry, events, resync_seconds=resync)
    await service.retry_until_ready("registry", sync.start, stop)
    checker = TokenChecker(issuer=issuer_url, keyring=lambda: issuer.keyring, revocations=revocations,
                           clients=clients, registry=registry, events=events,
                           verified_cache_entries=verified_cache)
    grpc_server = grpcx.GrpcServer(host, port, [server.SERVICE_NAME])
    server.add_to_server(issuer, checker, grpc_server.server)
    introspection_server = None
    if introspection_port:
        introspection_server = grpcx.GrpcServer(host, introspection_port, [server.SERVICE_NAME])
        server.add_to_server(issuer, checker, introspection_server.server, introspection_only=True)
        await introspection_server.start()
    metrics.serve(metrics_port)
    await grpc_server.start()

    async def reload_periodically() -> None:  # a backstop for a missed keys-rotated event
        while True:
            await asyncio.sleep(KEY_RELOAD_SECONDS)
            try:
                await issuer.reload_keys()
            except Exception:
                pass

    reloader = asyncio.create_task(reload_periodically())
    await stop.wait()
    reloader.cancel()
    await sync.stop()
    if introspection_server is not None:
        await introspection_server.stop(grace=5)
    await grpc_server.stop(grace=5)
    await events.close()
    await registry_channel.close()


if __name__ == "__main__":
    service.run("token_issuer", main)

"""Prometheus metrics shared by every service."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_SECONDS = Histogram(
    "inbound_rpc_server_seconds", "gRPC calls served, by method and status", ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
BATCH_SIZE = Histogram(
    "inbound_batch_size", "Items per batched call sent", ["call"], buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCH_REJECTED = Counter(
    "inbound_batch_rejected_total", "Requests refused because a client's queue was full", ["call"],
)
TOKEN_REQUESTS = Counter(
    "inbound_token_requests_total", "Token requests by grant type and outcome", ["grant_type", "outcome"],
)
EVENTS_DROPPED = Counter(
    "inbound_events_dropped_total", "Events dropped because the outbound buffer was full", ["source"],
)
EVENTS_BUFFERED = Histogram(
    "inbound_events_buffered", "Events waiting to be published when a publish round starts", ["source"],
    buckets=(0, 1, 10, 100, 1000, 10000),
)

# What a crash of this process would lose (buffered delivery: events not in JetStream yet; durable
# delivery: only events no request waits for, in the moment before they reach JetStream or the spool).
EVENTS_IN_MEMORY = Gauge(
    "inbound_events_in_memory", "Events held only in this process's memory (not in JetStream, not spooled)",
    ["source"],
)
EVENTS_IN_MEMORY_OLDEST_SECONDS = Gauge(
    "inbound_events_in_memory_oldest_seconds", "Age of the oldest event held only in memory (0: none)", ["source"],
)
EVENTS_SPOOL_BYTES = Gauge(
    "inbound_events_spool_bytes", "Bytes of the local event spool (durable delivery; replayed once NATS is back)",
    ["source"],
)
EVENTS_REJECTED = Counter(
    "inbound_events_rejected_total",
    "Events NATS refused for good (a subject this service may not publish, or too large): logged and dropped",
    ["source"],
)
EVENTS_REFUSED = Counter(
    "inbound_events_refused_total",
    "Requests refused (temporarily_unavailable) because their event could not be made durable (spool full)",
    ["source"],
)


def serve(port: int, host: str = "0.0.0.0"):
    """Serve /metrics on its own port and bind host (0: none). Returns the HTTP
    server (`shutdown()` stops it) or None."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host)
    return server

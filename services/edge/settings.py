"""The edge's HTTP settings, read and checked through Env (fail fast on a bad value)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from inboundlib.config import ConfigError, Env

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(name: str, value: str) -> tuple[Network, ...]:
    """A comma-separated list of addresses or CIDR networks."""
    networks = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {part!r} is not an IP address or network") from None
    return tuple(networks)


@dataclass(frozen=True)
class EdgeSettings:
    # Peers whose X-Forwarded-For is believed (load balancers, ingress). Empty: none;
    # the client address is then always the TCP peer.
    trusted_proxies: tuple[Network, ...] = ()
    # The whole budget of one OAuth request, across every hop behind the edge.
    request_timeout: float = 5.0
    # How long a client may take to send its request body once its headers are in.
    body_timeout: float = 10.0
    # How long a connection may take to send a complete request line and headers.
    header_timeout: float = 10.0
    # Request line and headers together, in bytes (431 beyond).
    max_header_bytes: int = 16 * 1024

    @classmethod
    def from_env(cls, env: Env) -> EdgeSettings:
        return cls(
            trusted_proxies=parse_networks("INBOUND_TRUSTED_PROXIES", env.str("INBOUND_TRUSTED_PROXIES", "")),
            request_timeout=env.float("INBOUND_REQUEST_TIMEOUT", cls.request_timeout, minimum=0.1),
            body_timeout=env.float("INBOUND_HTTP_BODY_TIMEOUT", cls.body_timeout, minimum=0.1),
            header_timeout=env.float("INBOUND_HTTP_HEADER_TIMEOUT", cls.header_timeout, minimum=0.1),
            max_header_bytes=env.int("INBOUND_HTTP_MAX_HEADER_BYTES", cls.max_header_bytes, minimum=1024,
                                     maximum=1024 * 1024),
        )

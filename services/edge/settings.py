"""The edge's HTTP settings, read and checked through Env (fail fast on a bad value)."""
from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field

from inboundlib.config import ConfigError, Env
from services.edge.throttle import ThrottleSettings

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
    # Failed client authentication: burst, back-off, table size (services/edge/throttle.py).
    auth_throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    # HTTPS when both are set (PEM files); plain HTTP otherwise.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # RFC 6797: Strict-Transport-Security max-age on every HTTPS response (never on plain HTTP).
    hsts_max_age: int = 365 * 24 * 3600
    # Plain HTTP on an address other than loopback: only when said so (TLS ends at a proxy in front).
    plaintext_public: bool = False

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    def check_bind(self, host: str) -> None:
        """Plain HTTP carries client secrets and tokens in the clear: it is served on a
        loopback address only, unless INBOUND_HTTP_PLAINTEXT_PUBLIC says TLS ends in front."""
        if self.tls or self.plaintext_public or is_loopback(host):
            return
        raise ConfigError(
            f"the edge would serve plain HTTP on {host!r}, which is not a loopback address: set "
            "INBOUND_HTTP_TLS_CERT_FILE and INBOUND_HTTP_TLS_KEY_FILE to serve HTTPS, or "
            "INBOUND_HTTP_PLAINTEXT_PUBLIC=1 if TLS ends at a proxy or load balancer in front of it, "
            "or INBOUND_BIND_HOST=127.0.0.1 to serve this machine only")

    @classmethod
    def from_env(cls, env: Env) -> EdgeSettings:
        return cls(
            trusted_proxies=parse_networks("INBOUND_TRUSTED_PROXIES", env.str("INBOUND_TRUSTED_PROXIES", "")),
            request_timeout=env.float("INBOUND_REQUEST_TIMEOUT", cls.request_timeout, minimum=0.1),
            body_timeout=env.float("INBOUND_HTTP_BODY_TIMEOUT", cls.body_timeout, minimum=0.1),
            header_timeout=env.float("INBOUND_HTTP_HEADER_TIMEOUT", cls.header_timeout, minimum=0.1),
            max_header_bytes=env.int("INBOUND_HTTP_MAX_HEADER_BYTES", cls.max_header_bytes, minimum=1024,
                                     maximum=1024 * 1024),
            auth_throttle=ThrottleSettings.from_env(env),
            **_tls_from_env(env),
            hsts_max_age=env.int("INBOUND_HSTS_MAX_AGE", cls.hsts_max_age, minimum=0),
            plaintext_public=env.bool("INBOUND_HTTP_PLAINTEXT_PUBLIC", False),
        )


def _tls_from_env(env: Env) -> dict:
    """Both files or neither; a pair that does not load is refused now, not at the first connection."""
    cert, key = env.str("INBOUND_HTTP_TLS_CERT_FILE", ""), env.str("INBOUND_HTTP_TLS_KEY_FILE", "")
    if bool(cert) != bool(key):
        raise ConfigError("INBOUND_HTTP_TLS_CERT_FILE and INBOUND_HTTP_TLS_KEY_FILE must be set together")
    if cert:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"INBOUND_HTTP_TLS_CERT_FILE / INBOUND_HTTP_TLS_KEY_FILE: cannot load the "
                              f"certificate and key ({type(exc).__name__}: {exc.strerror or exc})") from None
    return {"tls_cert_file": cert, "tls_key_file": key}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

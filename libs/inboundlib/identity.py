"""Who is calling: the authenticated identity of a gRPC peer (issue "Zero trust inside").

Every process has a certificate from the installation's CA; its identity is a
SPIFFE ID in the certificate's URI subject alternative name:

    spiffe://<trust domain>/<kind>/<name>     e.g. spiffe://inbound/service/token_issuer

`kind` says what the caller is: one of Inbound's own services (`service`, the
name is the module table's), an operator (`operator`: inboundctl, later the
admin API acting for a user) or a resource server outside Inbound
(`resource_server`). The trust domain (INBOUND_TRUST_DOMAIN, default `inbound`)
keeps two installations that share a CA apart.

A SPIFFE ID rather than the common name: it is the standard place for a
workload identity (cert-manager, SPIRE and service meshes issue it), and gRPC
exposes it as its own peer property, checked by the TLS handshake.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SERVICE = "service"
OPERATOR = "operator"
RESOURCE_SERVER = "resource_server"
KINDS = (SERVICE, OPERATOR, RESOURCE_SERVER)
DEFAULT_TRUST_DOMAIN = "inbound"
TRUST_DOMAIN_ENV = "INBOUND_TRUST_DOMAIN"

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,254}$")
# gRPC core's auth-context property holding the peer certificate's SPIFFE ID.
SPIFFE_PROPERTY = "peer_spiffe_id"


@dataclass(frozen=True)
class Caller:
    kind: str
    name: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown caller kind {self.kind!r}")
        if not _NAME.match(self.name):
            raise ValueError(f"invalid caller name {self.name!r}")

    def spiffe_id(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
        return f"spiffe://{trust_domain}/{self.kind}/{self.name}"

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def service(name: str) -> Caller:
    return Caller(SERVICE, name)


def operator(name: str) -> Caller:
    return Caller(OPERATOR, name)


def resource_server(name: str) -> Caller:
    return Caller(RESOURCE_SERVER, name)


def check_trust_domain(trust_domain: str) -> str:
    if not _TRUST_DOMAIN.match(trust_domain):
        raise ValueError(f"invalid trust domain {trust_domain!r}")
    return trust_domain


def parse_spiffe_id(uri: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Caller | None:
    """The caller a SPIFFE ID names in `trust_domain`; None for anything else
    (another trust domain, another shape, an unknown kind)."""
    prefix = f"spiffe://{trust_domain}/"
    if not uri.startswith(prefix):
        return None
    kind, sep, name = uri[len(prefix):].partition("/")
    if not sep:
        return None
    try:
        return Caller(kind, name)
    except ValueError:
        return None


def from_auth_context(auth_context: Mapping[str, Sequence[bytes]] | None,
                      trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Caller | None:
    """The authenticated caller of a gRPC call (`context.auth_context()`), or None
    when the peer presented no certificate with exactly one SPIFFE ID of our trust domain.
    Only the TLS handshake fills this property: metadata cannot forge it."""
    values = (auth_context or {}).get(SPIFFE_PROPERTY) or []
    if len(values) != 1:
        return None
    value = values[0]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return parse_spiffe_id(text, trust_domain)

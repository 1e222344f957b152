"""A private certificate authority for one machine: what `make run` and `make test`
use so that every gRPC hop is mutual TLS by default (issue "Zero trust inside").

In production certificates come from files that Kubernetes Secrets or
cert-manager provide; this module only makes such files for a local run: a CA
(`ca.pem`, `ca.key`) and, per identity, `<name>.pem` + `<name>.key` carrying
its SPIFFE ID (inboundlib.identity) and the host names it serves under.
ECDSA P-256 keys, SHA-256 signatures; keys written 0600.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from inboundlib.identity import DEFAULT_TRUST_DOMAIN, Caller

LOCAL_HOSTS = ("localhost",)
LOCAL_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class CertFiles:
    """The three files a TLS endpoint is configured with."""
    cert: Path
    key: Path
    ca: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Created 0600 (never readable by others, not even for a moment), replaced if present."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class DevCA:
    """A CA kept in `directory` (created on first use, reused afterwards)."""

    def __init__(self, directory: Path, *, common_name: str = "Inbound private CA",
                 trust_domain: str = DEFAULT_TRUST_DOMAIN):
        self.directory = Path(directory)
        self.trust_domain = trust_domain
        self.ca_file = self.directory / "ca.pem"
        key_file = self.directory / "ca.key"
        if self.ca_file.exists() and key_file.exists():
            self._key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            self._cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self._cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256()))
        _write_key(key_file, self._key)
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, file_name: str, *, caller: Caller | None = None, dns_names: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), days: int = 30, server: bool = True, client: bool = True) -> CertFiles:
        """A key and a certificate signed by this CA, written to `<file_name>.pem/.key`:
        the caller's SPIFFE ID (when given) and the DNS names and addresses it serves under."""
        key = ec.generate_private_key(ec.SECP256R1())
        common_name = str(caller) if caller else (dns_names[0] if dns_names else file_name)
        sans: list[x509.GeneralName] = []
        if caller is not None:
            sans.append(x509.UniformResourceIdentifier(caller.spiffe_id(self.trust_domain)))
        sans += [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
                 ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
            .issuer_name(self._cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file, key_file = self.directory / f"{file_name}.pem", self.directory / f"{file_name}.key"
        _write_key(key_file, key)
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return CertFiles(cert_file, key_file, self.ca_file)

    def issue_for(self, caller: Caller, *, dns_names: tuple[str, ...] = (), local: bool = True,
                  days: int = 30) -> CertFiles:
        """The certificate of `caller` (file name `<kind>-<name>`), valid for the loopback
        names when `local` (every process of a local run listens on 127.0.0.1)."""
        return self.issue(f"{caller.kind}-{caller.name}", caller=caller,
                          dns_names=dns_names + (LOCAL_HOSTS if local else ()),
                          ips=LOCAL_IPS if local else (), days=days)

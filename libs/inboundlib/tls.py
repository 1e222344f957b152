"""Mutual TLS for every gRPC hop (issue "Zero trust inside"), from certificate files.

Each process is configured with three PEM files, which Kubernetes Secrets or
cert-manager provide (and `make run` / `make test` make with inboundlib.pki):

    INBOUND_TLS_CERT_FILE   its certificate (chain): the SPIFFE ID of its identity
                            (inboundlib.identity) as a URI SAN; a server's also
                            carries its Kubernetes service name as a DNS SAN
    INBOUND_TLS_KEY_FILE    the certificate's private key
    INBOUND_TLS_CA_FILE     the installation's CA: peers must present a certificate it signed

INBOUND_GRPC_TLS=mtls (the default) requires all three (a missing or unreadable
file is a ConfigError at start). INBOUND_GRPC_TLS=plaintext turns TLS off, must
be set explicitly, and makes every process log a loud warning at start.

Rotation without a restart (files replaced in place, or a Secret's symlink swap):
- servers use grpc.dynamic_ssl_server_credentials: gRPC asks `_ServerFiles.fetch`
  at every new handshake, which compares the files' stat() with what it loaded
  and re-reads them only when they changed; connections already open keep the
  certificate they were made with;
- clients hold a `ReloadingChannel`: at most once a second a call checks the
  files the same way and, when they changed, the calls after it go through a new
  channel made with the new certificate; the old channel is closed once the calls
  it carries have had time to finish.
A half-written pair (new certificate, old key) is not taken: the files are read
again at the next check, until certificate and key match.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from inboundlib.config import ConfigError, Env

log = logging.getLogger(__name__)

MODE_ENV = "INBOUND_GRPC_TLS"
CERT_ENV, KEY_ENV, CA_ENV = "INBOUND_TLS_CERT_FILE", "INBOUND_TLS_KEY_FILE", "INBOUND_TLS_CA_FILE"
MTLS, PLAINTEXT = "mtls", "plaintext"
MODES = (MTLS, PLAINTEXT)
# How often a client channel looks at its files (a stat() of three files).
CLIENT_CHECK_SECONDS = 1.0
# How long calls already on a replaced channel may take before it is closed.
OLD_CHANNEL_GRACE_SECONDS = 30.0
PLAINTEXT_WARNING = ("INBOUND_GRPC_TLS=plaintext: gRPC is UNAUTHENTICATED and UNENCRYPTED in this process; "
                     "anyone who can reach its ports can call every RPC. Use only on a trusted single machine.")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class TlsConfig:
    """How this process's gRPC is secured: mutual TLS with `files`, or (explicitly) plaintext."""
    mode: str
    files: TlsFiles | None = None

    @property
    def plaintext(self) -> bool:
        return self.mode == PLAINTEXT

    @classmethod
    def from_env(cls, env: Env) -> TlsConfig:
        mode = env.choice(MODE_ENV, MTLS, MODES)
        if mode == PLAINTEXT:
            return cls(PLAINTEXT)
        missing = [name for name in (CERT_ENV, KEY_ENV, CA_ENV) if not env.str(name, "")]
        if missing:
            raise ConfigError(f"{', '.join(missing)} must be set ({MODE_ENV}=mtls, the default, needs a certificate, "
                              f"its key and the CA; {MODE_ENV}=plaintext turns gRPC authentication off)")
        files = TlsFiles(Path(env.str(CERT_ENV)), Path(env.str(KEY_ENV)), Path(env.str(CA_ENV)))
        config = cls(MTLS, files)
        try:
            _read(files)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{CERT_ENV}/{KEY_ENV}/{CA_ENV}: {exc}") from None
        return config

    @classmethod
    def mutual(cls, cert: os.PathLike | str, key: os.PathLike | str, ca: os.PathLike | str) -> TlsConfig:
        return cls(MTLS, TlsFiles(Path(cert), Path(key), Path(ca)))


PLAINTEXT_CONFIG = TlsConfig(PLAINTEXT)


@dataclass(frozen=True)
class _Pem:
    cert: bytes
    key: bytes
    ca: bytes


def _signature(files: TlsFiles) -> tuple:
    """What changes when a file is replaced (follows symlinks, as a Secret's `..data` swap needs)."""
    result = []
    for path in (files.cert, files.key, files.ca):
        st = os.stat(path)
        result.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(result)


def _read(files: TlsFiles) -> _Pem:
    """The three files, checked: certificates parse and the key is the certificate's
    (a file replaced before its partner is not taken). Raises ValueError or OSError."""
    pem = _Pem(files.cert.read_bytes(), files.key.read_bytes(), files.ca.read_bytes())
    certs = x509.load_pem_x509_certificates(pem.cert)
    x509.load_pem_x509_certificates(pem.ca)
    try:
        key = serialization.load_pem_private_key(pem.key, password=None)
    except (TypeError, UnsupportedAlgorithm) as exc:  # encrypted, or a kind of key we cannot use
        raise ValueError(f"{files.key}: {exc}") from None
    if key.public_key() != certs[0].public_key():
        raise ValueError(f"{files.key} is not the key of the certificate in {files.cert}")
    return pem


class _Loaded:
    """The files as last read, re-read only when their stat() changes."""

    def __init__(self, files: TlsFiles):
        self.files = files
        self.signature = _signature(files)
        self.pem = _read(files)
        # What was last warned about: a server looks at every handshake, which anyone who
        # reaches the port can cause, so one warning per state of the files, not per look.
        self._warned: tuple | None = None

    def changed(self) -> _Pem | None:
        """The new contents when the files changed since last read (and make a valid set), else None."""
        signature = None
        try:
            signature = _signature(self.files)
            if signature == self.signature:
                return None
            pem = _read(self.files)
        except (OSError, ValueError) as exc:
            # Mid-rotation or a broken mount: keep what works, look again next time.
            state = (signature, str(exc))
            if state != self._warned:
                self._warned = state
                log.warning("TLS files changed but cannot be used yet; keeping the current certificate",
                            extra={"cert": str(self.files.cert), "error": str(exc)})
            return None
        self._warned = None
        self.signature, self.pem = signature, pem
        log.info("TLS certificate reloaded", extra={"cert": str(self.files.cert)})
        return pem


def _server_config(pem: _Pem) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(pem.key, pem.cert)], root_certificates=pem.ca)


def server_credentials(config: TlsConfig, *, require_client_cert: bool = True) -> grpc.ServerCredentials | None:
    """Credentials for a gRPC port (None: plaintext). With `require_client_cert` a client
    must present a certificate signed by the CA file, else the handshake fails.

    Without it gRPC's Python API does not ask for a client certificate at all (it
    offers "request and require" or "don't request", not "request but optional"),
    so callers on such a port are anonymous at the TLS level: they authenticate
    with a token, or use a port that requires a certificate."""
    if config.plaintext:
        return None
    loaded = _Loaded(config.files)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC at each new handshake; None keeps the current certificate.
        pem = loaded.changed()
        return _server_config(pem) if pem is not None else None

    return grpc.dynamic_ssl_server_credentials(_server_config(loaded.pem), fetch,
                                               require_client_authentication=require_client_cert)


def _channel_credentials(pem: _Pem) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=pem.ca, private_key=pem.key, certificate_chain=pem.cert)


class ReloadingChannel:
    """A grpc.aio channel with mutual TLS whose certificate follows its files: when they
    change, later calls go through a new channel made with the new certificate. Stubs
    take multicallables once, so it hands out multicallables that find the current
    channel at each call (a clock read, and a stat() at most once a second)."""

    def __init__(self, make: Callable[[grpc.ChannelCredentials], grpc.aio.Channel], files: TlsFiles, *,
                 check_seconds: float = CLIENT_CHECK_SECONDS, grace_seconds: float = OLD_CHANNEL_GRACE_SECONDS):
        self._make = make
        self._loaded = _Loaded(files)
        self._check_seconds = check_seconds
        self._grace = grace_seconds
        self._next_check = time.monotonic() + check_seconds
        self.generation = 0
        self.channel = make(_channel_credentials(self._loaded.pem))
        # Replaced channels still closing (their calls have `grace_seconds` to finish).
        self._retiring: dict[asyncio.Task, grpc.aio.Channel] = {}

    def current(self) -> grpc.aio.Channel:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_seconds
            pem = self._loaded.changed()
            if pem is not None:
                old, self.channel = self.channel, self._make(_channel_credentials(pem))
                self.generation += 1
                task = asyncio.get_running_loop().create_task(old.close(grace=self._grace))
                self._retiring[task] = old
                task.add_done_callback(lambda done: self._retiring.pop(done, None))
        return self.channel

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, **kwargs):
        return _UnaryUnary(self, (method, request_serializer, response_deserializer), kwargs)

    async def close(self, grace: float | None = None) -> None:
        """Close the channel, and any replaced one still finishing its calls, with `grace`."""
        retiring = list(self._retiring.values())
        for task in list(self._retiring):
            task.cancel()
        for channel in (self.channel, *retiring):
            await channel.close(grace)

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __getattr__(self, name: str):
        # channel_ready(), get_state(), stream calls ...: the current channel's.
        if name.startswith("_"):  # never our own state (copy, pickle, a half-made instance)
            raise AttributeError(name)
        return getattr(self.current(), name)


class _UnaryUnary:
    __slots__ = ("_holder", "_args", "_kwargs", "_generation", "_call")

    def __init__(self, holder: ReloadingChannel, args: tuple, kwargs: dict):
        self._holder, self._args, self._kwargs = holder, args, kwargs
        self._generation = -1
        self._call = None

    def __call__(self, *args, **kwargs):
        holder = self._holder
        channel = holder.current()
        if self._generation != holder.generation or self._call is None:
            self._call = channel.unary_unary(*self._args, **self._kwargs)
            self._generation = holder.generation
        return self._call(*args, **kwargs)

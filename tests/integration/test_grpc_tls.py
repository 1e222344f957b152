"""Every gRPC hop is mutual TLS (issue 7, "Zero trust inside"), checked on the real processes.

- Every gRPC port of the module table, in both layouts: a plaintext call and a call with a
  certificate from another CA are refused, a call with the installation's certificate
  works, and a client that expects another service (its Kubernetes name) refuses the server.
  The introspection port does not ask for a certificate (outside resource servers send a
  token there; see inboundlib.tls.server_credentials), but is TLS all the same.
- Certificates are replaced without a restart: a server's, and a client channel's.
- Plaintext is an explicit setting, and the process says so loudly.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inboundlib import grpcx, identity, pki, tls
from inboundlib.hosting import HTTP, INTROSPECTION
from services.devstack import free_port
from services.modules import MODULES, TABLE
from tests.support import OPERATOR, eventually, eventually_sync

GRPC_PORTS = [(m.name, p.kind) for m in MODULES for p in m.ports if p.kind != HTTP]
CC = "client_credentials"  # a stateless service: cheap to start a replica of


async def _status(channel, *, close: bool = True) -> str:
    """SERVING (or the health status) when the call went through; else the gRPC status code's name."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    finally:
        if close:
            await channel.close()


def _server_auth_only(addr: str, ca_file, server_name: str) -> grpc.aio.Channel:
    """TLS that checks the server but presents no client certificate."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    return grpc.aio.secure_channel(addr, credentials, options=[("grpc.ssl_target_name_override", server_name)])


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> pki.CertFiles:
    """The operator's identity, in a certificate from another CA."""
    return pki.DevCA(tmp_path_factory.mktemp("other-ca")).issue_for(OPERATOR)


@pytest.mark.parametrize("mode", ["separate", "single"])
async def test_every_grpc_port_takes_only_the_installations_certificates(request, mode, stranger):
    stack = request.getfixturevalue(f"{mode}_stack")
    stranger_tls = tls.TlsConfig.mutual(stranger.cert, stranger.key, stack.ca.ca_file)  # trusts the real CA
    for name, kind in GRPC_PORTS:
        where = f"{mode}: {name} {kind}"
        addr, server_name = stack.addr(name, kind), TABLE[name].k8s_name
        assert await _status(stack.channel(name, kind=kind, caller=OPERATOR)) == "SERVING", where
        assert await _status(grpc.aio.insecure_channel(addr)) == "UNAVAILABLE", where
        # The client checks it reached the service it meant: a name the server's certificate does not carry.
        impostor = grpcx.channel(addr, stack.tls_config(OPERATOR), server_name="not-" + server_name)
        assert await _status(impostor) == "UNAVAILABLE", where
        if kind == INTROSPECTION:
            # Asks for no client certificate: TLS without one works (the caller then needs a token).
            assert await _status(_server_auth_only(addr, stack.ca.ca_file, server_name)) == "SERVING", where
        else:
            assert await _status(grpcx.channel(addr, stranger_tls, server_name=server_name)) == "UNAVAILABLE", where
            assert await _status(_server_auth_only(addr, stack.ca.ca_file, server_name)) == "UNAVAILABLE", where


def _mounted(files: pki.CertFiles, directory) -> tls.TlsFiles:
    """Copies of `files` at paths of their own (a process's mounted Secret), to be replaced in place."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = tls.TlsFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    for source, target in ((files.cert, paths.cert), (files.key, paths.key), (files.ca, paths.ca)):
        shutil.copy(source, target)
    return paths


def _replace(target, source) -> None:
    """As a Secret update does: a new file renamed over the old one."""
    tmp = target.with_name(target.name + ".new")
    shutil.copy(source, tmp)
    os.replace(tmp, target)


def _presented(addr: str, server_name: str, client: pki.CertFiles) -> bytes:
    """The certificate (DER) the server at `addr` presents to a new connection, read by Python's
    own TLS client: a measure independent of gRPC."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(client.ca)
    context.load_cert_chain(client.cert, client.key)
    context.set_alpn_protocols(["h2"])
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=server_name) as conn:
            return conn.getpeercert(binary_form=True)


def _der(path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


@pytest.mark.separate_processes
async def test_a_server_certificate_is_replaced_without_a_restart(stack, tmp_path):
    mounted = _mounted(stack.certificate(identity.service(CC)), tmp_path / "cc")
    port = free_port()
    addr = f"127.0.0.1:{port}"
    stack.start_service(CC, port=port, key="cc-rotating", extra_env={
        tls.CERT_ENV: str(mounted.cert), tls.KEY_ENV: str(mounted.key), tls.CA_ENV: str(mounted.ca)})
    operator = stack.certificate(OPERATOR)
    before = stack.channel(CC, addr=addr, caller=OPERATOR)
    try:
        assert await eventually(lambda: _status(before, close=False), until=lambda s: s == "SERVING",
                                message="the replica serving") == "SERVING"
        assert _presented(addr, "client-credentials", operator) == _der(mounted.cert)
        new = stack.ca.issue("cc-next", caller=identity.service(CC), dns_names=("client-credentials", "localhost"),
                             ips=("127.0.0.1",))
        assert _der(new.cert) != _der(mounted.cert)
        _replace(mounted.key, new.key)  # key first: a pair that does not match yet is not taken
        _replace(mounted.cert, new.cert)
        assert _presented(addr, "client-credentials", operator) == _der(new.cert)  # a new connection: the new one
        assert await _status(stack.channel(CC, addr=addr, caller=OPERATOR)) == "SERVING"
        assert await _status(before, close=False) == "SERVING"  # a connection made before keeps working
    finally:
        await before.close()
        assert stack.stop_service("cc-rotating") == 0


async def test_a_client_channel_takes_its_new_certificate_for_new_connections(stack, stranger, tmp_path):
    """A channel whose files are replaced by a certificate the server refuses fails from then on (its new
    connections carry the new certificate); with a good one again, it works again. No new channel object."""
    mounted = _mounted(stack.certificate(OPERATOR), tmp_path / "operator")
    channel = grpcx.channel(stack.addr("client_registry"), tls.TlsConfig(tls.MTLS, mounted),
                            server_name="client-registry")
    try:
        assert await _status(channel, close=False) == "SERVING"
        _replace(mounted.key, stranger.key)
        _replace(mounted.cert, stranger.cert)
        await eventually(lambda: _status(channel, close=False), until=lambda s: s == "UNAVAILABLE",
                         message="the stranger's certificate in use (and refused)")
        fresh = stack.ca.issue("operator-next", caller=OPERATOR)
        _replace(mounted.key, fresh.key)
        _replace(mounted.cert, fresh.cert)
        await eventually(lambda: _status(channel, close=False), until=lambda s: s == "SERVING",
                         message="the renewed certificate in use")
    finally:
        await channel.close()


def _warnings(lines: list[str]) -> list[dict]:
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level", "").upper() == "WARNING":
            entries.append(entry)
    return entries


@pytest.mark.separate_processes
async def test_plaintext_is_explicit_and_said_loudly(stack):
    port = free_port()
    replica = stack.start_service(CC, port=port, key="cc-plaintext", extra_env={tls.MODE_ENV: tls.PLAINTEXT})
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await eventually(lambda: _status(channel, close=False), until=lambda s: s == "SERVING",
                                    message="the plaintext replica serving in plaintext") == "SERVING"
        found = eventually_sync(lambda: [w for w in _warnings(replica.lines) if "UNAUTHENTICATED" in w["msg"]],
                                message="the plaintext warning in the replica's log")
        assert tls.MODE_ENV in found[0]["msg"]
    finally:
        stack.stop_service("cc-plaintext")
    # The stack's own processes run mutual TLS and say nothing of the kind.
    for name in [n for n in stack.services if n in TABLE]:
        assert not [w for w in _warnings(stack.services[name].lines) if "UNAUTHENTICATED" in w["msg"]], name

"""The edge over HTTPS (a DevCA certificate, a real uvicorn on a loopback port):
Strict-Transport-Security on every HTTPS response, the server's own refusals
too (RFC 6797 §7.1), never on plain HTTP (§7.2); plain HTTP only on a loopback
bind unless INBOUND_HTTP_PLAINTEXT_PUBLIC says TLS ends in front."""
from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest

from inboundlib import identity
from inboundlib.config import ConfigError, Env
from inboundlib.localservers import free_port
from inboundlib.pki import DevCA
from services.edge.app import EdgeConfig, create_app
from services.edge.server import serve
from services.edge.settings import EdgeSettings
from tests.fakes import running_edge

ONE_YEAR = 365 * 24 * 3600


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return DevCA(tmp_path_factory.mktemp("ca")).issue_for(identity.service("edge"))


def tls_settings(certificate, **settings) -> EdgeSettings:
    return EdgeSettings(tls_cert_file=str(certificate.cert), tls_key_file=str(certificate.key), **settings)


def edge(settings: EdgeSettings, host: str = "127.0.0.1"):
    return running_edge(settings, host=host, issuer="https://127.0.0.1")


def trusting(certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate.ca))


async def test_https_answers_carry_hsts(certificate):
    async with edge(tls_settings(certificate)) as port:
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=trusting(certificate)) as http:
            ok = await http.get("/healthz")
            missing = await http.get("/no-such-page")
            refused = await http.get("/oauth/token")
    assert ok.status_code == 200 and missing.status_code == 404 and refused.status_code == 405
    for reply in (ok, missing, refused):
        assert reply.headers["strict-transport-security"] == f"max-age={ONE_YEAR}"


async def test_the_servers_own_refusals_over_https_carry_hsts_too(certificate):
    async with edge(tls_settings(certificate, max_header_bytes=4096, hsts_max_age=600)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting(certificate),
                                                       server_hostname="localhost")
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-junk: " + b"a" * 20_000 + b"\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
    assert head.startswith(b"HTTP/1.1 431")
    assert b"\r\nstrict-transport-security: max-age=600\r\n" in head.lower()


async def test_plain_http_never_carries_hsts():
    async with edge(EdgeSettings()) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            reply = await http.get("/healthz")
    assert reply.status_code == 200
    assert "strict-transport-security" not in reply.headers


async def test_the_https_port_does_not_answer_plain_http(certificate):
    async with edge(tls_settings(certificate)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            with pytest.raises(httpx.HTTPError):
                await http.get("/healthz")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "edge.example.com"])
def test_plain_http_on_a_public_bind_is_refused_with_a_clear_message(host):
    with pytest.raises(ConfigError, match="INBOUND_HTTP_PLAINTEXT_PUBLIC=1") as info:
        EdgeSettings().check_bind(host)
    assert "INBOUND_HTTP_TLS_CERT_FILE" in str(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_plain_http_on_loopback_is_allowed(host):
    EdgeSettings().check_bind(host)


def test_a_public_bind_is_allowed_with_tls_or_when_tls_ends_in_front(certificate):
    tls_settings(certificate).check_bind("0.0.0.0")
    EdgeSettings.from_env(Env({"INBOUND_HTTP_PLAINTEXT_PUBLIC": "1"})).check_bind("0.0.0.0")


async def test_the_server_itself_refuses_a_public_plaintext_bind():
    stopped = asyncio.Event()
    stopped.set()  # (were it to serve, it would stop at once)
    with pytest.raises(ConfigError):
        await serve(create_app(EdgeConfig(issuer="http://x", grants={}, jwks=lambda: asyncio.sleep(0, {}))),
                    "0.0.0.0", free_port(), stopped, EdgeSettings())


def test_tls_settings_are_read_and_checked_at_start(certificate, tmp_path):
    settings = EdgeSettings.from_env(Env({"INBOUND_HTTP_TLS_CERT_FILE": str(certificate.cert),
                                          "INBOUND_HTTP_TLS_KEY_FILE": str(certificate.key),
                                          "INBOUND_HSTS_MAX_AGE": "600"}))
    assert settings.tls and settings.hsts_max_age == 600
    with pytest.raises(ConfigError, match="set together"):
        EdgeSettings.from_env(Env({"INBOUND_HTTP_TLS_CERT_FILE": str(certificate.cert)}))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load"):
        EdgeSettings.from_env(Env({"INBOUND_HTTP_TLS_CERT_FILE": str(tmp_path / "junk.pem"),
                                   "INBOUND_HTTP_TLS_KEY_FILE": str(certificate.key)}))

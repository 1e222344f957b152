"""inboundlib.tls: mutual TLS is the default and needs its files; certificates follow their files."""
from __future__ import annotations

import asyncio
import os
import shutil

import pytest
from cryptography.hazmat.primitives import serialization

from inboundlib import identity, pki, tls
from inboundlib.config import ConfigError, Env


@pytest.fixture
def ca(tmp_path):
    return pki.DevCA(tmp_path / "ca")


def _env(files: pki.CertFiles, **more) -> Env:
    return Env({tls.CERT_ENV: str(files.cert), tls.KEY_ENV: str(files.key), tls.CA_ENV: str(files.ca), **more})


def _copy(files: pki.CertFiles, directory) -> tls.TlsFiles:
    """The files at paths of their own (a process's mounted Secret), to be replaced in place."""
    directory.mkdir(exist_ok=True)
    return tls.TlsFiles(*(shutil.copy(src, directory / name) and directory / name
                          for src, name in ((files.cert, "tls.crt"), (files.key, "tls.key"), (files.ca, "ca.crt"))))


def _replace(target, source) -> None:
    """Replace a file the way a Secret update does: a new file renamed over the old one."""
    tmp = target.with_suffix(".new")
    shutil.copy(source, tmp)
    os.replace(tmp, target)


def test_mutual_tls_is_the_default_and_needs_every_file(ca):
    files = ca.issue_for(identity.service("edge"))
    config = tls.TlsConfig.from_env(_env(files))
    assert config.mode == tls.MTLS and not config.plaintext and config.files.cert == files.cert
    with pytest.raises(ConfigError, match="INBOUND_TLS_CERT_FILE, INBOUND_TLS_KEY_FILE, INBOUND_TLS_CA_FILE"):
        tls.TlsConfig.from_env(Env({}))
    with pytest.raises(ConfigError, match="INBOUND_TLS_CA_FILE must be set"):
        tls.TlsConfig.from_env(Env({tls.CERT_ENV: str(files.cert), tls.KEY_ENV: str(files.key)}))
    with pytest.raises(ConfigError, match="INBOUND_GRPC_TLS"):
        tls.TlsConfig.from_env(_env(files, INBOUND_GRPC_TLS="off"))


def test_plaintext_only_when_asked_for():
    config = tls.TlsConfig.from_env(Env({"INBOUND_GRPC_TLS": "plaintext"}))
    assert config.plaintext and config.files is None
    assert tls.server_credentials(config) is None


def test_unreadable_or_mismatched_files_fail_at_start(ca, tmp_path):
    edge, audit = ca.issue_for(identity.service("edge")), ca.issue_for(identity.service("audit"))
    with pytest.raises(ConfigError, match="not the key of the certificate"):
        tls.TlsConfig.from_env(Env({tls.CERT_ENV: str(edge.cert), tls.KEY_ENV: str(audit.key),
                                    tls.CA_ENV: str(edge.ca)}))
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="nope.pem"):
        tls.TlsConfig.from_env(Env({tls.CERT_ENV: missing, tls.KEY_ENV: str(edge.key), tls.CA_ENV: str(edge.ca)}))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError):
        tls.TlsConfig.from_env(Env({tls.CERT_ENV: str(garbage), tls.KEY_ENV: str(edge.key),
                                    tls.CA_ENV: str(edge.ca)}))


def test_files_are_read_again_only_when_they_change_and_only_as_a_matching_pair(ca, tmp_path):
    files = _copy(ca.issue_for(identity.service("edge")), tmp_path / "mounted")
    loaded = tls._Loaded(files)
    first = loaded.pem
    assert loaded.changed() is None  # nothing changed: nothing read
    new = ca.issue(file_name="edge-next", caller=identity.service("edge"))
    _replace(files.cert, new.cert)
    assert loaded.changed() is None  # the new certificate without its key: not taken yet
    assert loaded.pem == first
    _replace(files.key, new.key)
    reloaded = loaded.changed()
    assert reloaded is not None and reloaded.cert == new.cert.read_bytes() and reloaded.key == new.key.read_bytes()
    assert loaded.changed() is None


def test_files_that_cannot_be_used_are_warned_about_once_per_change_not_per_look(ca, tmp_path, caplog):
    """A server looks at every handshake, which anyone who reaches the port can cause."""
    files = _copy(ca.issue_for(identity.service("edge")), tmp_path / "mounted")
    loaded = tls._Loaded(files)
    _replace(files.cert, ca.issue(file_name="edge-next", caller=identity.service("edge")).cert)
    with caplog.at_level("WARNING", logger="inboundlib.tls"):
        for _ in range(5):
            assert loaded.changed() is None
        assert len(caplog.records) == 1
        _replace(files.cert, ca.issue(file_name="edge-third", caller=identity.service("edge")).cert)
        assert loaded.changed() is None
        assert len(caplog.records) == 2  # another state of the files: said again


def test_an_encrypted_key_is_a_config_error_at_start_and_not_taken_later(ca, tmp_path):
    good = _copy(ca.issue_for(identity.service("edge")), tmp_path / "mounted")
    key = serialization.load_pem_private_key(good.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"passphrase")))
    env = Env({tls.CERT_ENV: str(good.cert), tls.KEY_ENV: str(encrypted), tls.CA_ENV: str(good.ca)})
    with pytest.raises(ConfigError, match="encrypted"):
        tls.TlsConfig.from_env(env)
    loaded = tls._Loaded(good)
    _replace(good.key, encrypted)
    assert loaded.changed() is None  # kept the working pair (a server's handshakes go on)


class _FakeChannel:
    """What ReloadingChannel needs of a grpc.aio channel: multicallables and close()."""

    def __init__(self, credentials):
        self.credentials = credentials
        self.calls: list[tuple[str, object]] = []
        self.closed_with: float | None = None

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, **kwargs):
        def call(request, **kw):
            self.calls.append((method, request))
            return "reply"
        return call

    async def close(self, grace=None):
        self.closed_with = grace


async def test_a_reloading_channel_sends_later_calls_through_a_channel_with_the_new_certificate(ca, tmp_path):
    files = _copy(ca.issue_for(identity.service("edge")), tmp_path / "mounted")
    made: list[_FakeChannel] = []

    def make(credentials):
        made.append(_FakeChannel(credentials))
        return made[-1]

    holder = tls.ReloadingChannel(make, files, check_seconds=0, grace_seconds=7)
    call = holder.unary_unary("/svc/Method")  # what a stub keeps
    assert call("one") == "reply"
    assert call("two") == "reply"
    assert len(made) == 1 and made[0].calls == [("/svc/Method", "one"), ("/svc/Method", "two")]

    new = ca.issue(file_name="edge-next", caller=identity.service("edge"))
    _replace(files.cert, new.cert)
    _replace(files.key, new.key)
    assert call("three") == "reply"
    assert len(made) == 2 and made[1].calls == [("/svc/Method", "three")]
    assert made[0].calls[-1] == ("/svc/Method", "two")  # nothing more on the old one
    await asyncio.sleep(0)
    assert made[0].closed_with == 7 and made[1].closed_with is None  # the old one's calls have their grace
    await holder.close(grace=1)
    assert made[1].closed_with == 1


async def test_a_reloading_channel_looks_at_its_files_at_most_once_per_interval(ca, tmp_path):
    files = _copy(ca.issue_for(identity.service("edge")), tmp_path / "mounted")
    made: list[_FakeChannel] = []
    holder = tls.ReloadingChannel(lambda c: made.append(_FakeChannel(c)) or made[-1], files, check_seconds=3600)
    new = ca.issue(file_name="edge-next", caller=identity.service("edge"))
    _replace(files.cert, new.cert)
    _replace(files.key, new.key)
    holder.unary_unary("/svc/Method")("x")
    assert len(made) == 1  # not yet: the next look is an hour away
    await holder.close()

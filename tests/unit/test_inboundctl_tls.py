"""inboundctl's connection settings: mutual TLS unless plaintext is asked for, and then it says
on stderr that nothing is authenticated (as the services log at start)."""
from __future__ import annotations

import inboundctl
from inboundlib import identity, pki, tls


def test_plaintext_is_said_on_stderr_and_mutual_tls_says_nothing(monkeypatch, capsys, tmp_path):
    for name in (tls.MODE_ENV, tls.CERT_ENV, tls.KEY_ENV, tls.CA_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(tls.MODE_ENV, tls.PLAINTEXT)
    assert inboundctl.tls_config().plaintext
    assert "unencrypted" in capsys.readouterr().err

    files = pki.DevCA(tmp_path).issue_for(identity.operator("dev"))
    monkeypatch.delenv(tls.MODE_ENV)
    monkeypatch.setenv(tls.CERT_ENV, str(files.cert))
    monkeypatch.setenv(tls.KEY_ENV, str(files.key))
    monkeypatch.setenv(tls.CA_ENV, str(files.ca))
    assert not inboundctl.tls_config().plaintext
    assert capsys.readouterr().err == ""

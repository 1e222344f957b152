"""The caller's identity comes from its certificate's SPIFFE ID, in our trust domain only."""
from __future__ import annotations

import pytest
from cryptography import x509

from inboundlib import identity, pki


def test_round_trip_and_strangers_refused():
    alice = identity.operator("alice")
    assert identity.parse_spiffe_id(alice.spiffe_id()) == alice
    assert identity.parse_spiffe_id(alice.spiffe_id("other")) is None  # another installation's CA
    assert identity.parse_spiffe_id(alice.spiffe_id("other"), "other") == alice
    for bad in ("spiffe://inbound/admin/alice", "spiffe://inbound/service", "https://inbound/service/edge",
                "spiffe://inbound/service/Edge!", "spiffe://inbound.evil/service/edge"):
        assert identity.parse_spiffe_id(bad) is None, bad


def test_auth_context_needs_exactly_one_id():
    edge = identity.service("edge").spiffe_id().encode()
    assert identity.from_auth_context({"peer_spiffe_id": [edge]}) == identity.service("edge")
    assert identity.from_auth_context({"peer_spiffe_id": [edge, edge]}) is None
    assert identity.from_auth_context({"x509_common_name": [b"service/edge"]}) is None  # CN is not identity
    assert identity.from_auth_context(None) is None


def test_caller_names_are_checked():
    with pytest.raises(ValueError):
        identity.Caller("root", "x")
    with pytest.raises(ValueError):
        identity.service("../edge")


def test_issued_certificate_carries_the_identity(tmp_path):
    ca = pki.DevCA(tmp_path)
    files = ca.issue_for(identity.service("token_issuer"), dns_names=("token-issuer",))
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://inbound/service/token_issuer"]
    assert "token-issuer" in sans.get_values_for_type(x509.DNSName)
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    # The CA is reused, not replaced, when the folder already has one.
    assert pki.DevCA(tmp_path).ca_file.read_bytes() == files.ca.read_bytes()

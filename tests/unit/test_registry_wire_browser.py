"""The registry contract's records for the browser survive the wire both ways
(services/client_registry/wire.py): the scope catalog, post-logout redirect URIs, and
the authorization endpoint's state. Every field is set to something other than its
default, so a field one direction forgets fails the comparison."""
from __future__ import annotations

import dataclasses

import pytest

from services.client_registry import wire
from services.client_registry.api import (
    AuthorizationCodeRecord,
    BrowserSession,
    ClientRecord,
    ClientSpec,
    ClientUpdate,
    CodeNotFound,
    CodeReused,
    ConsentRecord,
    ItemError,
    PendingAuthorization,
    ScopeRecord,
)

CODE = AuthorizationCodeRecord(
    code_hash=b"c" * 32, client_id="web", redirect_uri="https://web.example/cb", scopes=("openid", "profile"),
    user_id="u1", username="alice", sid="s1", auth_time_ms=1_700_000_000_123, nonce="n", code_challenge="x" * 43,
    code_challenge_method="S256", grant_id="g1", created_at_ms=1_700_000_001_456, expires_at=1_700_000_061)


def _all_set(record) -> None:
    for f in dataclasses.fields(record):
        assert getattr(record, f.name) != f.default, f"{type(record).__name__}.{f.name} is left at its default"


def test_a_client_keeps_its_post_logout_redirect_uris():
    client = ClientRecord(client_id="c1", name="n", secret_hash="", public=True, grant_types=("authorization_code",),
                          scopes=("openid",), redirect_uris=("https://a.example/cb",), access_token_lifetime=60,
                          refresh_token_lifetime=120, token_format="jwt", pkce_required=True, active=True,
                          logo_url="", comments="", created_at=1, updated_at=2,
                          post_logout_redirect_uris=("https://a.example/bye", "https://a.example/later"))
    assert wire.client_from_pb(wire.client_to_pb(client, with_secret_hash=False)) == client
    spec = ClientSpec(name="n", post_logout_redirect_uris=["https://a.example/bye"])
    assert wire.spec_from_pb(wire.spec_to_pb(spec)).post_logout_redirect_uris == ["https://a.example/bye"]
    for uris in ([], ["https://a.example/bye"]):  # [] clears; None leaves as it is
        assert wire.update_from_pb(wire.update_to_pb("c1", ClientUpdate(post_logout_redirect_uris=uris))) \
            .post_logout_redirect_uris == uris
    assert wire.update_from_pb(wire.update_to_pb("c1", ClientUpdate(name="x"))).post_logout_redirect_uris is None


@pytest.mark.parametrize("record, to_pb, from_pb", [
    (ScopeRecord(name="email", description="Your email", consent_required=True, created_at=1, updated_at=2),
     wire.scope_to_pb, wire.scope_from_pb),
    (BrowserSession(id_hash=b"s" * 32, sid="sid", user_id="u1", username="alice", auth_time_ms=5, created_at=6,
                    expires_at=7, client_address="192.0.2.1", user_agent="UA"), wire.session_to_pb,
     wire.session_from_pb),
    (PendingAuthorization(id_hash=b"p" * 32, client_id="web", request_json='{"a": 1}', created_at=1, expires_at=2),
     wire.pending_to_pb, wire.pending_from_pb),
    (ConsentRecord(user_id="u1", client_id="web", scopes=("openid", "email"), granted_at=1, updated_at=2),
     wire.consent_to_pb, wire.consent_from_pb),
    (CODE, wire.code_to_pb, wire.code_from_pb),
], ids=lambda value: type(value).__name__ if dataclasses.is_dataclass(value) else "")
def test_every_field_survives_the_wire(record, to_pb, from_pb):
    _all_set(record)
    assert from_pb(to_pb(record)) == record


@pytest.mark.parametrize("outcome", [CODE, CodeReused(grant_id="g1"), CodeNotFound(),
                                     ItemError("invalid_argument", "the code hash is not a SHA-256")])
def test_every_code_outcome_survives_the_wire(outcome):
    assert wire.code_outcome_from_pb(wire.code_outcome_to_pb(outcome)) == outcome

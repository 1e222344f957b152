"""The registry contract's federation records survive the wire both ways
(services/client_registry/wire.py), every field set to something other than its default so
a field one direction forgets fails the comparison; and the used-jti client's answers
(services/client_registry/client.py JtiClaims)."""
from __future__ import annotations

import dataclasses

import pytest

from inboundlib.oauth.errors import TemporarilyUnavailable
from services.client_registry import wire
from services.client_registry.api import (
    ClaimRule,
    ClientSpec,
    ClientUpdate,
    ItemError,
    JtiClaim,
    JwtBearerIntegration,
    OidcProvider,
    TokenExchangePolicy,
)
from services.client_registry.client import JtiClaims
from tests.fakes import client_record

POLICY = TokenExchangePolicy(subject_token_types=("urn:ietf:params:oauth:token-type:jwt",), providers=("okta",),
                             own_tokens=True, scopes=("a",), audiences=("https://api.example",), actor_tokens=True)


def _all_set(record, *, except_: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(record):
        if f.name not in except_:
            assert getattr(record, f.name) != f.default, f"{type(record).__name__}.{f.name} is left at its default"


def test_a_client_keeps_its_authentication_fields_and_exchange_policy():
    client = client_record(token_endpoint_auth_method="private_key_jwt", jwks='{"keys": []}',
                           jwks_uri="https://k.example/jwks", token_endpoint_auth_signing_alg="PS256",
                           token_exchange=POLICY, secret_hash="sha256$00")
    assert wire.client_from_pb(wire.client_to_pb(client, with_secret_hash=True)) == client
    assert wire.client_from_pb(wire.client_to_pb(client_record(), with_secret_hash=True)).token_exchange is None
    spec = ClientSpec(name="n", token_endpoint_auth_method="client_secret_jwt", jwks="j", jwks_uri="u",
                      token_endpoint_auth_signing_alg="HS256", token_exchange=POLICY)
    assert wire.spec_from_pb(wire.spec_to_pb(spec)) == spec
    update = ClientUpdate(token_endpoint_auth_method="client_secret_post", jwks="", jwks_uri="",
                          token_endpoint_auth_signing_alg="", token_exchange=POLICY)
    assert wire.update_from_pb(wire.update_to_pb("c", update)) == update
    cleared = ClientUpdate(clear_token_exchange=True)
    assert wire.update_from_pb(wire.update_to_pb("c", cleared)) == cleared


def test_an_integration_and_a_provider_keep_every_field():
    integration = JwtBearerIntegration(
        id="i", name="n", client_id="c", issuer="https://iss", jwks_uri="https://k", jwks="{}", certificate_pem="p",
        kid="k1", algorithms=("ES256",), allow_hs256=True, subject_kind="client", user_field="email",
        claim_rules=(ClaimRule("t", "in", "a,b"), ClaimRule("g", "contains", "x")), scopes=("a",),
        max_assertion_lifetime=60, require_jti=False, active=False, created_at=1, updated_at=2)
    _all_set(integration)
    assert wire.integration_from_pb(wire.integration_to_pb(integration)) == integration
    provider = OidcProvider(
        name="p", issuer="https://iss", discovery_url="https://iss/d", audiences=("a",), algorithms=("ES256",),
        cache_lifespan=60, clock_skew=5, user_claim="oid", user_field="email", check_jti=True, active=False,
        provision_users=True, provision_roles=("r",), scopes=("s",), template="azure", created_at=1, updated_at=2)
    _all_set(provider)
    assert wire.provider_from_pb(wire.provider_to_pb(provider)) == provider
    claim = JtiClaim("client:c", "j", 5)
    assert wire.jti_claim_from_pb(wire.jti_claim_to_pb(claim)) == claim
    for outcome in (True, False, ItemError("internal", "x")):
        assert wire.jti_outcome_from_pb(wire.jti_outcome_to_pb(outcome)) == outcome


async def test_first_use_answers_the_claim_and_a_store_failure_is_temporary():
    answers: dict[str, bool | ItemError] = {"new": True, "seen": False, "bad": ItemError("invalid_argument", "x"),
                                            "broken": ItemError("internal", "x")}

    async def send(claims, timeout):
        return [answers[c.jti] for c in claims]

    jtis = JtiClaims("test.ClaimJtis", send)
    assert await jtis.first_use("client:c", "new", 10) is True
    assert await jtis.first_use("client:c", "seen", 10) is False
    assert await jtis.first_use("client:c", "bad", 10) is False  # cannot be recorded: not accepted once-only
    with pytest.raises(TemporarilyUnavailable):
        await jtis.first_use("client:c", "broken", 10)

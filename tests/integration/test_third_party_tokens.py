"""Third-party tokens end to end (issue "Federation"): a registered OpenID provider (the
demo IdP on loopback, HTTPS from the stack's CA: tests/conftest.py's `idp`) signs tokens; token_issuer's gRPC
Introspect answers for them through third_party_token's ForeignTokens as the mapped
user; the RFC 8693 token exchange turns them (or Inbound's own tokens) into Inbound
access tokens over HTTP. Real processes, Postgres and NATS; rule-by-rule negatives are
unit tests (tests/unit/test_token_exchange_grant.py)."""
from __future__ import annotations

import secrets

import httpx
import jwt
import pytest

from inboundlib.oauth import token_exchange as tx
from inboundlib.oauth.errors import TemporarilyUnavailable
from services.client_registry.api import (
    GRANT_TOKEN_EXCHANGE,
    ClientSpec,
    OidcProvider,
    TokenExchangePolicy,
    UserSpec,
)
from tests.support import ensure_scopes, eventually

# In the one-process mode too: token_issuer reaches ForeignTokens through Context.later, in process.
pytestmark = pytest.mark.both_modes

TOKEN = "/oauth/token"
APP = "inbound-app"  # the audience the IdP's tokens carry for Inbound


@pytest.fixture
async def provider(registry, idp):
    """Register a provider of the demo IdP (a name of its own each time); returns it."""
    made = []

    async def make(**overrides) -> OidcProvider:
        fields = dict(name="idp-" + secrets.token_hex(4), issuer=idp.issuer, discovery_url=idp.discovery_url,
                      audiences=(APP,), algorithms=("RS256", "ES256", "EdDSA"), user_claim="email",
                      user_field="email", scopes=("api.read",))
        fields.update(overrides)
        await ensure_scopes(registry, list(fields["scopes"]))  # a provider's scopes are catalog scopes
        p = await registry.create_provider(OidcProvider(**fields))
        made.append(p.name)
        return p

    yield make
    for name in made:
        await registry.delete_provider(name)


@pytest.fixture
async def user(registry):
    async def make(**kwargs):
        name = "fed-" + secrets.token_hex(4)
        return await registry.create_user(UserSpec(username=name, email=f"{name}@example.com", **kwargs))

    return make


async def active(issuer, token: str, p: OidcProvider):
    """The introspection once provider `p` is known and its keys are in (the first use after a
    change may find them being fetched: temporarily_unavailable, which a resource server retries)."""
    return await eventually(lambda: issuer.introspect(token), until=lambda info: info.provider == p.name,
                            ignore=(TemporarilyUnavailable,))


async def test_introspection_of_an_idp_token_answers_as_the_mapped_user(issuer, idp, provider, user):
    p = await provider()
    alice = await user()
    token = idp.token("idp-sub-1", APP, alg="ES256", email=alice.email, azp="partner-rp")
    info = await active(issuer, token, p)
    assert (info.sub, info.username, info.provider) == (alice.id, alice.username, p.name)
    assert (info.iss, info.client_id, info.scope) == (idp.issuer, "partner-rp", "api.read")
    assert not (await issuer.introspect(idp.token("idp-sub-1", "someone-else", email=alice.email))).active


async def test_userinfo_answers_for_an_idp_token_as_the_mapped_user(stack, issuer, idp, provider, user):
    """Direct use at a protected API (here Inbound's own UserInfo), when the operator gave the
    provider's tokens the openid scope."""
    p = await provider(scopes=("openid", "email"))
    alice = await user()
    token = idp.token("s", APP, email=alice.email)
    await active(issuer, token, p)
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        reply = await http.get("/oauth/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["sub"] == alice.id and reply.json()["email"] == alice.email


async def test_a_disabled_provider_vouches_for_nothing(registry, issuer, idp, provider, user):
    p = await provider()
    alice = await user()
    token = idp.token("s", APP, email=alice.email)
    await active(issuer, token, p)
    await registry.update_provider(OidcProvider(**{**p.__dict__, "active": False}))
    await eventually(lambda: issuer.introspect(token), until=lambda info: not info.active)


async def test_an_unknown_user_is_refused_unless_the_provider_provisions(registry, issuer, idp, provider, user):
    p = await provider()
    await active(issuer, idp.token("s", APP, email=(await user()).email), p)  # the provider's keys are in
    stranger = f"new-{secrets.token_hex(4)}@example.com"
    token = idp.token("s", APP, email=stranger)
    assert not (await issuer.introspect(token)).active
    await registry.update_provider(OidcProvider(**{**p.__dict__, "provision_users": True,
                                                   "provision_roles": ("partner",)}))
    info = await eventually(lambda: issuer.introspect(token), until=lambda i: i.active)
    created = await registry.get_user(id=info.sub)
    assert created.email == stranger and "partner" in created.roles and info.username == created.username


async def test_cached_keys_serve_while_the_idp_is_down(issuer, idp, provider, user):
    p = await provider()
    alice = await user()
    await active(issuer, idp.token("s", APP, email=alice.email), p)
    idp.down = True
    try:
        assert (await issuer.introspect(idp.token("s", APP, email=alice.email, alg="EdDSA"))).active
    finally:
        idp.down = False


@pytest.fixture
async def exchanger(registry):
    """A client allowed the token exchange under `policy`; returns (record, secret)."""
    await ensure_scopes(registry, ["api.read", "api.write"])

    async def make(policy: TokenExchangePolicy | None):
        return await registry.create_client(ClientSpec(
            name="exchanger-" + secrets.token_hex(4), grant_types=[GRANT_TOKEN_EXCHANGE],
            scopes=["api.read", "api.write"], token_exchange=policy))

    return make


def policy(*providers: str, **overrides) -> TokenExchangePolicy:
    fields = dict(subject_token_types=tx.SUBJECT_TOKEN_TYPES, providers=providers, own_tokens=True,
                  audiences=("https://api.example",), actor_tokens=True)
    return TokenExchangePolicy(**{**fields, **overrides})


async def post(stack, client, secret, **data) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        return await http.post(TOKEN, data={"grant_type": GRANT_TOKEN_EXCHANGE, **data}, auth=(client, secret))


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def exchanged(stack, client, secret, **data) -> dict:
    """The exchange's answer once the new provider is known and its keys are in."""
    reply = await eventually(lambda: post(stack, client, secret, **data), until=lambda r: r.status_code == 200)
    return reply.json()


@pytest.mark.parametrize("token_type", tx.SUBJECT_TOKEN_TYPES)
async def test_an_idp_token_is_exchanged_for_an_inbound_token(stack, issuer, idp, provider, user, exchanger,
                                                              token_type):
    p = await provider()
    alice = await user()
    client, secret = await exchanger(policy(p.name))
    body = await exchanged(stack, client.client_id, secret, subject_token=idp.token("s", APP, email=alice.email),
                           subject_token_type=token_type, audience="https://api.example")
    assert body["issued_token_type"] == tx.ACCESS_TOKEN_TYPE and body["token_type"] == "Bearer"
    assert "refresh_token" not in body and body["scope"] == "api.read"
    info = await issuer.introspect(body["access_token"])
    assert info.active and (info.sub, info.username, info.client_id) == (alice.id, alice.username, client.client_id)
    assert info.aud == ("https://api.example",) and not info.provider  # an Inbound token now


async def test_our_own_token_and_an_actor_token(stack, issuer, idp, provider, user, exchanger):
    p = await provider()
    alice, bot = await user(), await user()
    client, secret = await exchanger(policy(p.name))
    first = await exchanged(stack, client.client_id, secret, subject_token=idp.token("s", APP, email=alice.email),
                            subject_token_type=tx.ID_TOKEN_TYPE)
    # Inbound's own token, with an IdP token of the acting party: delegation (RFC 8693 §4.1).
    second = await exchanged(stack, client.client_id, secret, subject_token=first["access_token"],
                             subject_token_type=tx.ACCESS_TOKEN_TYPE, actor_token=idp.token("b", APP, email=bot.email),
                             actor_token_type=tx.JWT_TOKEN_TYPE, requested_token_type=tx.JWT_TOKEN_TYPE)
    assert second["issued_token_type"] == tx.JWT_TOKEN_TYPE
    assert second["expires_in"] <= first["expires_in"]
    token = claims(second["access_token"])
    assert token["sub"] == alice.id and token["act"] == {"sub": bot.id, "iss": claims(first["access_token"])["iss"]}
    info = await issuer.introspect(second["access_token"])
    assert info.active and info.to_json()["act"] == token["act"]
    # Not wider than the subject token.
    refused = await post(stack, client.client_id, secret, subject_token=first["access_token"],
                         subject_token_type=tx.ACCESS_TOKEN_TYPE, scope="api.write")
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_scope")


async def test_rfc_8693_errors(stack, idp, provider, user, exchanger):
    p = await provider()
    alice = await user()
    client, secret = await exchanger(policy(p.name))
    good = idp.token("s", APP, email=alice.email)
    await exchanged(stack, client.client_id, secret, subject_token=good, subject_token_type=tx.ID_TOKEN_TYPE)
    cases = {
        "invalid_request": dict(subject_token_type=tx.ID_TOKEN_TYPE),  # no subject_token
        "invalid_grant": dict(subject_token=idp.token("s", "nobody", email=alice.email),
                              subject_token_type=tx.ID_TOKEN_TYPE),
        "invalid_target": dict(subject_token=idp.token("s", APP, email=alice.email),
                               subject_token_type=tx.ID_TOKEN_TYPE, audience="https://elsewhere.example"),
        "invalid_scope": dict(subject_token=idp.token("s", APP, email=alice.email),
                              subject_token_type=tx.ID_TOKEN_TYPE, scope="api.write"),
    }
    for error, data in cases.items():
        reply = await post(stack, client.client_id, secret, **data)
        assert (reply.status_code, reply.json()["error"]) == (400, error), reply.text
    no_policy, no_policy_secret = await exchanger(None)
    reply = await post(stack, no_policy.client_id, no_policy_secret, subject_token=good,
                       subject_token_type=tx.ID_TOKEN_TYPE)
    assert reply.json()["error"] == "unauthorized_client", reply.text
    assert good not in reply.text

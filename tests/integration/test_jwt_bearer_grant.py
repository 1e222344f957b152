"""The JWT bearer grant end to end (RFC 7523 §2.1): the demo identity provider (services/demo_idp.py,
HTTPS on loopback with a certificate of the stack's CA) signs assertions with RS256, ES256 and
EdDSA; jwt_bearer fetches its JWKS through the guarded fetcher and the edge answers the token
request. Rule-by-rule negatives are unit tests (tests/unit/test_jwt_bearer_grant_rules.py);
here, that refusals reach the client as invalid_grant with the one generic text, and the
audit log gets the reason."""
from __future__ import annotations

import json
import secrets

import asyncpg
import httpx
import jwt
import pytest

from services.client_registry.api import GRANT_JWT_BEARER, ClaimRule, JwtBearerIntegration, UserSpec
from services.jwt_bearer.grant import ASSERTION_REFUSED
from tests.support import eventually

SCOPES = ["api.read", "api.write"]


@pytest.fixture
async def user(registry):
    name = "jb-" + secrets.token_hex(4)
    return await registry.create_user(UserSpec(username=name, email=f"{name}@example.com", display_name=name,
                                               password=secrets.token_urlsafe(16)))


@pytest.fixture
async def partner(stack, registry, make_client, idp):
    """A client allowed the grant and an integration trusting the IdP's keys for it (subject: a
    user by username); returns (client, secret, integration)."""
    client, secret = await make_client(grant_types=[GRANT_JWT_BEARER], scopes=SCOPES)
    integration = await registry.create_integration(JwtBearerIntegration(
        id="", name="partner-" + secrets.token_hex(4), client_id=client.client_id, issuer=idp.issuer,
        jwks_uri=idp.jwks_uri, scopes=("api.read",),
        claim_rules=(ClaimRule("tenant", "equals", "acme"),)))
    return client, secret, integration


def _token_url(stack) -> str:
    return stack.edge_url + "/oauth/token"


def _assertion(stack, idp, user, *, alg: str = "RS256", **claims) -> str:
    """An assertion about `user` for the partner integration (its claim rule wants tenant acme)."""
    return idp.token(user.username, _token_url(stack), alg=alg, **{"tenant": "acme", **claims})


async def _grant(stack, client, secret, assertion: str, **extra) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(_token_url(stack), auth=(client.client_id, secret),
                               data={"grant_type": GRANT_JWT_BEARER, "assertion": assertion, **extra})


async def _granted(stack, client, secret, assertion_for) -> httpx.Response:
    """The first grant after an integration is made may find its keys still being fetched
    (answered temporarily_unavailable after the edge's retries): a fresh assertion each try."""
    return await eventually(lambda: _grant(stack, client, secret, assertion_for()),
                            until=lambda r: r.status_code != 503)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_an_assertion_of_each_algorithm_gets_a_token_for_the_user(stack, idp, partner, user, alg):
    client, secret, _ = partner
    reply = await _granted(stack, client, secret, lambda: _assertion(stack, idp, user, alg=alg))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "api.read"
    assert "refresh_token" not in body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user.id and claims["client_id"] == client.client_id


async def test_the_client_itself_as_subject(stack, registry, make_client, idp):
    client, secret = await make_client(grant_types=[GRANT_JWT_BEARER], scopes=SCOPES)
    await registry.create_integration(JwtBearerIntegration(
        id="", name="self-" + secrets.token_hex(4), client_id=client.client_id, issuer=idp.issuer,
        jwks_uri=idp.jwks_uri, subject_kind="client"))
    reply = await _granted(stack, client, secret, lambda: idp.token(client.client_id, stack.edge_url))
    assert reply.status_code == 200, reply.text
    claims = jwt.decode(reply.json()["access_token"], options={"verify_signature": False})
    assert claims["sub"] == client.client_id and claims["scope"] == " ".join(SCOPES)
    other = await _grant(stack, client, secret, idp.token("someone-else", stack.edge_url))
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"


async def test_hs256_only_for_an_integration_allowed_it(stack, registry, make_client, idp, user):
    client, secret = await make_client(grant_types=[GRANT_JWT_BEARER], scopes=SCOPES)
    shared = secrets.token_bytes(64)
    await registry.create_integration(JwtBearerIntegration(
        id="", name="hs-" + secrets.token_hex(4), client_id=client.client_id, issuer="https://hs.partner.example",
        allow_hs256=True), hmac_secret=shared)

    def assertion(key: bytes = shared) -> str:
        claims = idp.claims(user.username, _token_url(stack), iss="https://hs.partner.example")
        return idp.mint(claims, alg="HS256", kid=None, secret=key)

    reply = await _granted(stack, client, secret, assertion)
    assert reply.status_code == 200, reply.text
    forged = await _grant(stack, client, secret, assertion(b"another secret of sixty-four bytes........................."))
    assert forged.status_code == 400 and forged.json()["error"] == "invalid_grant"


async def test_refusals_are_invalid_grant_and_audited_with_their_reason(stack, idp, partner, user):
    client, secret, integration = partner
    # keys in the fetcher's cache first: refusals then never wait for them
    assert (await _granted(stack, client, secret, lambda: _assertion(stack, idp, user))).status_code == 200
    used = _assertion(stack, idp, user)
    assert (await _grant(stack, client, secret, used)).status_code == 200
    cases = {
        "jti replayed": used,
        "audience not accepted": idp.token(user.username, "https://elsewhere.example/token", tenant="acme"),
        "expired": idp.mint(idp.claims(user.username, _token_url(stack), iat=1, exp=2, tenant="acme")),
        "no user whose username": idp.token("nobody-" + secrets.token_hex(4), _token_url(stack), tenant="acme"),
        "claim rule failed": _assertion(stack, idp, user, tenant="evil"),
        "algorithm not accepted": idp.mint(idp.claims(user.username, _token_url(stack), tenant="acme"), alg="none"),
        "algorithm HS256 not allowed": idp.mint(idp.claims(user.username, _token_url(stack), tenant="acme"),
                                                alg="HS256", secret=idp.keys["RS256"].public_pem()),
        "no active integration": _assertion(stack, idp, user, iss="https://unknown.example"),
    }
    for reason, assertion in cases.items():
        reply = await _grant(stack, client, secret, assertion)
        assert reply.status_code == 400, (reason, reply.text)
        assert reply.json() == {"error": "invalid_grant", "error_description": ASSERTION_REFUSED}, reason
    conn = await asyncpg.connect(stack.database_url)
    try:
        async def details() -> list[str]:
            rows = await conn.fetch("SELECT detail FROM audit_log WHERE type = 'token_denied'"
                                    " AND detail->>'client_id' = $1", client.client_id)
            return [json.loads(r["detail"]).get("detail", "") for r in rows]

        found = await eventually(details, until=lambda d: all(any(r in x for x in d) for r in cases))
    finally:
        await conn.close()
    assert not any(used in d for d in found), "an assertion never reaches the audit log"


async def test_scope_beyond_the_integration_is_invalid_scope(stack, idp, partner, user):
    client, secret, _ = partner
    reply = await _granted(stack, client, secret, lambda: _assertion(stack, idp, user))
    assert reply.status_code == 200
    reply = await _grant(stack, client, secret, _assertion(stack, idp, user), scope="api.write")
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_scope"


async def test_a_disabled_user_is_refused(stack, registry, idp, partner, user):
    from services.client_registry.api import UserUpdate

    client, secret, _ = partner
    await registry.update_user(user.id, UserUpdate(active=False))
    reply = await _granted(stack, client, secret, lambda: _assertion(stack, idp, user))
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_grant"


def test_the_metadata_lists_the_grant(stack):
    metadata = httpx.get(stack.edge_url + "/.well-known/oauth-authorization-server").json()
    assert GRANT_JWT_BEARER in metadata["grant_types_supported"]

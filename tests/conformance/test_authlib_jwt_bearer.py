"""Authlib's client of the JWT bearer grant (RFC 7523 §2.1; authlib.oauth2.rfc7523's
JWTBearerGrant.sign through AsyncAssertionClient), which nobody here wrote, against the
running system: it signs an assertion about a user with the demo identity provider's key
(services/demo_idp.py, whose JWKS jwt_bearer fetches) and trades it for a token at the
token endpoint the RFC 8414 metadata names."""
from __future__ import annotations

import secrets

import httpx
import jwt
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncAssertionClient
from cryptography.hazmat.primitives import serialization

from services.client_registry.api import GRANT_JWT_BEARER, JwtBearerIntegration, UserSpec
from services.demo_idp import DemoIdp
from tests.support import eventually

METADATA = "/.well-known/oauth-authorization-server"


async def test_authlib_assertion_client_gets_a_token_for_a_user(stack, registry, make_client):
    metadata = httpx.get(stack.edge_url + METADATA).json()
    assert GRANT_JWT_BEARER in metadata["grant_types_supported"]
    token_endpoint = metadata["token_endpoint"]
    name = "authlib-" + secrets.token_hex(4)
    user = await registry.create_user(UserSpec(username=name, email=f"{name}@example.com", display_name=name,
                                               password=secrets.token_urlsafe(16)))
    # Authlib's assertion client authenticates no client (RFC 7521 §4.1 lets it: the assertion is the
    # proof); it names one with client_id, so the client is a public one (method none).
    client, _ = await make_client(grant_types=[GRANT_JWT_BEARER], scopes=["api.read", "api.write"], public=True)
    async with DemoIdp(stack.ca) as idp:
        await registry.create_integration(JwtBearerIntegration(
            id="", name=name, client_id=client.client_id, issuer=idp.issuer, jwks_uri=idp.jwks_uri))
        key = idp.keys["ES256"]
        pem = key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())

        async def fetch() -> dict:
            # Authlib's defaults: iat now, exp an hour later, a random jti; a fresh assertion each try.
            async with AsyncAssertionClient(token_endpoint, issuer=idp.issuer, subject=user.username,
                                            audience=token_endpoint, key=pem, header={"alg": "ES256", "kid": key.kid},
                                            scope="api.read", client_id=client.client_id) as oauth:
                try:
                    return await oauth.refresh_token()
                except OAuthError as exc:
                    # The integration's keys are fetched in the background when it is made: the
                    # first request may find them still on their way (503); anything else fails.
                    if exc.error != "temporarily_unavailable":
                        raise
                    return {}

        token = await eventually(fetch, until=lambda t: "access_token" in t)
    assert token["token_type"] == "Bearer" and token["scope"] == "api.read"
    assert "refresh_token" not in token
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user.id and claims["client_id"] == client.client_id

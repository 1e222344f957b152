"""Authlib's own client assertions (RFC 7523 §2.2: authlib.oauth2.rfc7523 PrivateKeyJWT and
ClientSecretJWT, with their defaults: aud the URL posted to, exp an hour after iat, a fresh
jti) against the running system, configured from the RFC 8414 metadata: a token, its
introspection and its revocation."""
from __future__ import annotations

import json

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7523 import ClientSecretJWT, PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from inboundlib.oauth.client_auth import CLIENT_SECRET_JWT, PRIVATE_KEY_JWT
from services.client_registry.api import ClientSpec
from tests.support import ensure_scopes

METADATA = "/.well-known/oauth-authorization-server"


async def round_trip(stack, client_id: str, credential, method) -> None:
    metadata = httpx.get(stack.edge_url + METADATA).json()
    assert method.name in metadata["token_endpoint_auth_methods_supported"]
    assert method.name in metadata["introspection_endpoint_auth_methods_supported"]
    assert method.name in metadata["revocation_endpoint_auth_methods_supported"]
    async with AsyncOAuth2Client(client_id, credential, scope="api.read", token_endpoint_auth_method=method.name,
                                 revocation_endpoint_auth_method=method.name) as oauth:
        oauth.register_client_auth_method(method)
        token = await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        assert token["token_type"] == "Bearer" and token["scope"] == "api.read"
        info = await oauth.introspect_token(metadata["introspection_endpoint"], token=token["access_token"])
        assert info.status_code == 200 and info.json()["active"] is True, info.text
        assert info.json()["client_id"] == client_id
        revoked = await oauth.revoke_token(metadata["revocation_endpoint"], token=token["access_token"])
        assert revoked.status_code == 200, revoked.text
        info = await oauth.introspect_token(metadata["introspection_endpoint"], token=token["access_token"])
        assert info.json() == {"active": False}


async def test_authlib_private_key_jwt(stack, registry):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = json.dumps({"keys": [json.loads(RSAAlgorithm.to_jwk(key.public_key()))]})
    await ensure_scopes(registry, ["api.read"])
    client, _ = await registry.create_client(ClientSpec(
        name="authlib-pkjwt", grant_types=["client_credentials"], scopes=["api.read"],
        token_endpoint_auth_method=PRIVATE_KEY_JWT, jwks=jwks))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    await round_trip(stack, client.client_id, pem, PrivateKeyJWT())


async def test_authlib_client_secret_jwt(stack, registry):
    await ensure_scopes(registry, ["api.read"])
    client, secret = await registry.create_client(ClientSpec(
        name="authlib-csjwt", grant_types=["client_credentials"], scopes=["api.read"],
        token_endpoint_auth_method=CLIENT_SECRET_JWT))
    await round_trip(stack, client.client_id, secret, ClientSecretJWT())

"""Real OAuth client libraries that nobody here wrote, configured only from the
RFC 8414 metadata URL."""
from __future__ import annotations

import httpx
import jwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuth2Client

from services import modules

METADATA = "/.well-known/oauth-authorization-server"


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_authlib_gets_a_token_from_metadata_alone(stack, make_client, auth_method):
    client, secret = await make_client(scopes=["api.read", "api.write"], auth_method=auth_method)
    metadata = httpx.get(stack.edge_url + METADATA).json()
    assert auth_method in metadata["token_endpoint_auth_methods_supported"]
    assert "client_credentials" in metadata["grant_types_supported"]

    async with AsyncOAuth2Client(client.client_id, secret, scope="api.read",
                                 token_endpoint_auth_method=auth_method) as oauth:
        token = await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "api.read"
    assert token["expires_at"] > 0

    # Verify with the JWKS the metadata points to, using joserfc (Authlib's JOSE library).
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import KeySet

    keys = KeySet.import_key_set(httpx.get(metadata["jwks_uri"]).json())
    decoded = jose_jwt.decode(token["access_token"], keys, algorithms=["ES256"])
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.claims["iss"] == metadata["issuer"]
    assert decoded.claims["client_id"] == client.client_id


async def test_authlib_sees_the_rfc_error_for_a_bad_secret(stack, make_client):
    from authlib.integrations.base_client.errors import OAuthError

    client, _ = await make_client()
    metadata = httpx.get(stack.edge_url + METADATA).json()
    with OAuth2Client(client.client_id, "not-the-secret") as oauth:
        with pytest.raises(OAuthError) as raised:
            oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert raised.value.error == "invalid_client"


def test_metadata_is_rfc8414_exact(stack):
    reply = httpx.get(stack.edge_url + METADATA)
    assert reply.status_code == 200
    metadata = reply.json()
    # §3.3: the issuer in the document is the one it was fetched for.
    assert metadata["issuer"] == stack.edge_url
    for endpoint in ("token_endpoint", "jwks_uri"):
        assert metadata[endpoint].startswith(stack.edge_url + "/")
    # Only what is really served is advertised.
    # Each grant service's grant type; and implicit, which the authorization_code service decides too.
    served = [*modules.GRANTS, *(["implicit"] if "authorization_code" in modules.GRANTS else [])]
    assert sorted(metadata["grant_types_supported"]) == sorted(served)
    assert {"client_credentials", "password", "refresh_token"} <= set(metadata["grant_types_supported"])
    assert ("authorization_endpoint" in metadata) == ("authorization_code" in modules.GRANTS)
    assert metadata["introspection_endpoint"] == stack.edge_url + "/oauth/introspect"
    assert metadata["revocation_endpoint"] == stack.edge_url + "/oauth/revoke"


def test_jwks_is_a_public_jwk_set(stack):
    reply = httpx.get(stack.edge_url + "/oauth/jwks")
    assert reply.status_code == 200
    keys = reply.json()["keys"]
    assert keys
    for key in keys:
        assert {"kty", "kid", "alg", "use"} <= set(key)
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "private key material published"
        jwt.PyJWK(key)  # parses as a JWK


async def test_authlib_signs_a_user_in_with_a_password_and_refreshes_twice(stack, make_client, registry):
    """RFC 6749 §4.3 then §6 twice, by Authlib's OAuth2 client from the metadata alone:
    each refresh answers a new access token and a new refresh token (rotation), and
    the last access token is the user's (sub, username) and verifies with the JWKS."""
    import secrets

    from joserfc import jwt as jose_jwt
    from joserfc.jwk import KeySet

    from services.client_registry.api import UserSpec

    password = "pw-" + secrets.token_urlsafe(12)
    user = await registry.create_user(UserSpec(username="authlib-" + secrets.token_hex(4), password=password))
    client, secret = await make_client(grant_types=["password", "refresh_token"], scopes=["api.read", "api.write"])
    metadata = httpx.get(stack.edge_url + METADATA).json()
    assert {"password", "refresh_token"} <= set(metadata["grant_types_supported"])

    async with AsyncOAuth2Client(client.client_id, secret, scope="api.read") as oauth:
        first = await oauth.fetch_token(metadata["token_endpoint"], username=user.username, password=password)
        assert first["refresh_token"] and first["scope"] == "api.read"
        seen_access, seen_refresh = [first["access_token"]], [first["refresh_token"]]
        for _ in range(2):
            refreshed = await oauth.refresh_token(metadata["token_endpoint"])
            assert refreshed["access_token"] not in seen_access
            assert refreshed["refresh_token"] not in seen_refresh, "the refresh token rotates"
            assert refreshed["scope"] == "api.read"
            seen_access.append(refreshed["access_token"])
            seen_refresh.append(refreshed["refresh_token"])
        assert oauth.token["refresh_token"] == seen_refresh[-1]

    keys = KeySet.import_key_set(httpx.get(metadata["jwks_uri"]).json())
    claims = jose_jwt.decode(seen_access[-1], keys, algorithms=["ES256"]).claims
    assert (claims["sub"], claims["username"], claims["client_id"]) == (user.id, user.username, client.client_id)

"""Outside client libraries through the browser flow, configured from the OpenID Provider
metadata alone: Authlib's OAuth2 client completes the authorization code flow with PKCE
S256 and a refresh (RFC 6749 §4.1, §6; RFC 7636), and an OpenID Connect relying party
(Authlib's `authlib.oidc.core` claims, the JWKS from `jwks_uri`) validates the ID token:
signature, iss, aud, exp, iat, nonce and at_hash (OpenID Connect Core §3.1.3.7).
The user's part (sign-in, consent) is real Chromium (tests/browser/flow.py)."""
from __future__ import annotations

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.core import CodeIDToken
from joserfc import jwt as jose_jwt
from joserfc.errors import InvalidClaimError, MissingClaimError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from tests.browser.flow import PASSWORD, code_client, consent, create_user, sign_in, wait_for_client

DISCOVERY = "/.well-known/openid-configuration"

pytestmark = pytest.mark.slow


def _discover(stack) -> dict:
    reply = httpx.get(stack.edge_url + DISCOVERY, timeout=30)
    assert reply.status_code == 200, reply.text
    metadata = reply.json()
    assert metadata["issuer"] == stack.edge_url  # OpenID Connect Discovery §4.3
    return metadata


async def _authlib_code_flow(stack, page, client_callback, *, scope: str):
    """Authlib builds the authorization URL (state, S256 challenge, nonce); the user signs in and
    consents in Chromium; Authlib reads the response from the URL the browser landed on and
    exchanges the code with its verifier. Answers (metadata, client, oauth client, token, nonce)."""
    metadata = _discover(stack)
    user = await create_user(stack)
    client, secret = await code_client(stack, client_callback)
    oauth = AsyncOAuth2Client(client.client_id, secret, scope=scope, redirect_uri=client.redirect_uris[0],
                              code_challenge_method="S256")
    verifier, nonce = generate_token(48), generate_token(20)
    url, state = oauth.create_authorization_url(metadata["authorization_endpoint"], code_verifier=verifier,
                                                nonce=nonce)
    assert "code_challenge=" in url and "code_challenge_method=S256" in url

    await page.goto(url)
    await sign_in(page, user.username, PASSWORD)
    await consent(page)
    landed = await wait_for_client(page, client.redirect_uris[0])
    assert landed.query["state"] == state and landed.query["iss"] == metadata["issuer"]  # RFC 9207 §2.4

    token = await oauth.fetch_token(metadata["token_endpoint"], authorization_response=landed.url,
                                    code_verifier=verifier)
    return metadata, user, client, oauth, token, nonce


async def test_authlib_completes_the_code_flow_with_pkce_and_refreshes(stack, browser_page, client_callback,
                                                                       issuer):
    metadata, user, client, oauth, token, _ = await _authlib_code_flow(
        stack, browser_page, client_callback, scope="openid profile")
    try:
        assert token["token_type"] == "Bearer" and token["refresh_token"] and token["expires_at"] > 0
        assert set(token["scope"].split()) == {"openid", "profile"}

        refreshed = await oauth.refresh_token(metadata["token_endpoint"])
        assert refreshed["access_token"] != token["access_token"]
        assert refreshed["refresh_token"] != token["refresh_token"], "the refresh token rotates"
        assert set(refreshed["scope"].split()) == {"openid", "profile"}
    finally:
        await oauth.aclose()

    info = await issuer.introspect(refreshed["access_token"])
    assert info.active and (info.sub, info.client_id) == (user.id, client.client_id)
    # The access token verifies with the JWKS the metadata points to.
    keys = KeySet.import_key_set(httpx.get(metadata["jwks_uri"], timeout=30).json())
    claims = jose_jwt.decode(refreshed["access_token"], keys, algorithms=["ES256"]).claims
    assert (claims["iss"], claims["sub"], claims["client_id"]) == (metadata["issuer"], user.id, client.client_id)


async def test_an_openid_connect_relying_party_validates_the_id_token(stack, browser_page, client_callback):
    metadata, user, client, oauth, token, nonce = await _authlib_code_flow(
        stack, browser_page, client_callback, scope="openid profile email")
    await oauth.aclose()
    assert "RS256" in metadata["id_token_signing_alg_values_supported"]  # OpenID Connect Core §15.1

    keys = KeySet.import_key_set(httpx.get(metadata["jwks_uri"], timeout=30).json())
    decoded = jose_jwt.decode(token["id_token"], keys,
                              registry=JWSRegistry(algorithms=metadata["id_token_signing_alg_values_supported"]))
    assert decoded.header["alg"] == "RS256"

    def id_token_claims(*, nonce: str, access_token: str) -> CodeIDToken:
        options = {"iss": {"essential": True, "value": metadata["issuer"]},
                   "aud": {"essential": True, "value": client.client_id}}
        params = {"nonce": nonce, "client_id": client.client_id, "access_token": access_token}
        return CodeIDToken(decoded.claims, decoded.header, options, params)

    claims = id_token_claims(nonce=nonce, access_token=token["access_token"])
    claims.validate(leeway=60)  # iss, aud, exp, iat, auth_time, nonce, azp, at_hash
    assert claims["sub"] == user.id
    assert "at_hash" in claims and "auth_time" in claims and claims["sid"]
    assert claims["email"] == user.email and claims["name"] == user.display_name  # the scopes' claims

    # The relying party's checks bite: another nonce, or another access token, fails validation.
    with pytest.raises(InvalidClaimError):
        id_token_claims(nonce=generate_token(20), access_token=token["access_token"]).validate(leeway=60)
    with pytest.raises(InvalidClaimError):
        id_token_claims(nonce=nonce, access_token=token["access_token"] + "x").validate(leeway=60)
    without_nonce = CodeIDToken({k: v for k, v in decoded.claims.items() if k != "nonce"}, decoded.header,
                                {}, {"nonce": nonce, "client_id": client.client_id})
    with pytest.raises(MissingClaimError):
        without_nonce.validate(leeway=60)

    # The UserInfo endpoint the metadata names answers the same subject (OpenID Connect Core §5.3.2).
    reply = httpx.get(metadata["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['access_token']}"},
                      timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["sub"] == user.id

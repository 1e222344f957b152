"""The code-for-token exchange end to end (RFC 6749 §4.1.3, RFC 7636 §4.6, OpenID Connect
Core §3.1.3, §5.3): a code minted by the authorization_code service's authorize contract
(as the edge calls it: authorize -> sign-in -> consent), then POST /oauth/token through the
edge -> the authorization_code service's grant -> the registry's atomic consume (Postgres)
-> token_issuer (the ID token signed RS256), and UserInfo over HTTP. Every part a real
process. The rules one by one, each checked against in-memory fakes too, are in
tests/unit/test_authorization_code_grant.py and tests/unit/test_userinfo.py."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
import urllib.parse
from pathlib import Path

import asyncpg
import httpx
import jwt
import pytest

from inboundlib.oauth import oidc, pkce
from services.authorization_code import codes
from services.authorization_code.api import ConsentPage, Redirect, SignInPage
from services.authorization_code.assembly import connect
from services.client_registry.api import UserSpec, UserUpdate
from services.modules import TABLE
from tests.support import EDGE, audit_caught_up, eventually

TOKEN = "/oauth/token"
USERINFO = "/oauth/userinfo"
REDIRECT = "https://app.example/callback"


@pytest.fixture(scope="module")
async def authorization(stack):
    """The authorization_code service as the edge calls it (its identity, its gRPC client)."""
    channel = stack.channel("authorization_code", caller=EDGE)
    yield connect(channel, TABLE["authorization_code"])
    await channel.close()


@pytest.fixture
async def user(registry):
    password = "pw-" + secrets.token_urlsafe(12)
    record = await registry.create_user(UserSpec(
        username="user-" + secrets.token_hex(4), password=password, email="someone@example.com",
        display_name="Some One", given_name="Some", family_name="One"))
    return record, password


@pytest.fixture
async def app(make_client):
    """A public app (client_id only, PKCE required), allowed refresh tokens."""
    async def make(**spec):
        spec = {"public": True, "grant_types": ["authorization_code", "refresh_token"],
                "scopes": ["openid", "profile", "email", "api.read"], "redirect_uris": [REDIRECT], **spec}
        return await make_client(**spec)

    return make


def _verifier() -> str:
    return secrets.token_urlsafe(48)


async def mint(authorization, client, user, password, *, scope="openid profile email api.read",
               verifier: str | None = None, nonce: str = "", redirect_uri: str = REDIRECT) -> str:
    """A code as a browser gets it: authorize -> sign-in page -> sign in -> consent -> redirect."""
    params = {"response_type": "code", "client_id": client.client_id, "redirect_uri": redirect_uri,
              "scope": scope, "state": "st-" + secrets.token_hex(4)}
    if verifier:
        params |= {"code_challenge": pkce.s256(verifier), "code_challenge_method": "S256"}
    if nonce:
        params["nonce"] = nonce
    outcome = await authorization.authorize({k: (v,) for k, v in params.items()}, "")
    assert isinstance(outcome.result, SignInPage), outcome
    outcome = await authorization.sign_in(outcome.result.request_id, user.username, password, "")
    session_id = outcome.session.session_id if outcome.session else ""
    if isinstance(outcome.result, ConsentPage):
        outcome = await authorization.consent(outcome.result.request_id, session_id, True)
    assert isinstance(outcome.result, Redirect), outcome
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(outcome.result.location).query)
    assert query["state"] == [params["state"]] and query["iss"], query
    [code] = query["code"]
    assert code.startswith(codes.CODE_PREFIX)
    return code


async def exchange(stack, code: str, client, *, secret: str | None = None, verifier: str | None = None,
                   redirect_uri: str | None = REDIRECT) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code}
    if redirect_uri is not None:
        data["redirect_uri"] = redirect_uri
    if verifier is not None:
        data["code_verifier"] = verifier
    auth = None
    if secret is None:
        data["client_id"] = client.client_id
    else:
        auth = (client.client_id, secret)
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        return await http.post(TOKEN, data=data, auth=auth)


async def introspect(issuer, token: str) -> bool:
    return (await issuer.introspect(token)).active


def _refused(reply: httpx.Response) -> None:
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == "invalid_grant"


def _id_token_claims(stack, id_token: str, client_id: str) -> dict:
    metadata = httpx.get(stack.edge_url + "/.well-known/openid-configuration").json()
    header = jwt.get_unverified_header(id_token)
    assert header["alg"] == "RS256", "ID tokens are RS256 by default (OpenID Connect requires it available)"
    key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(id_token).key
    return jwt.decode(id_token, key, algorithms=["RS256"], audience=client_id, issuer=metadata["issuer"])


@pytest.mark.both_modes
async def test_a_public_app_exchanges_its_code_with_pkce_for_tokens_and_an_id_token(stack, authorization, app,
                                                                                      user, issuer):
    client, _ = await app()
    record, password = user
    verifier = _verifier()
    nonce = "n-" + secrets.token_urlsafe(8)
    before = int(time.time())
    code = await mint(authorization, client, record, password, verifier=verifier, nonce=nonce)
    reply = await exchange(stack, code, client, verifier=verifier)
    assert reply.status_code == 200, reply.text
    assert reply.headers["cache-control"] == "no-store"
    body = reply.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "openid profile email api.read"
    assert body["refresh_token"], "the client may use the refresh_token grant"

    claims = _id_token_claims(stack, body["id_token"], client.client_id)
    assert claims["sub"] == record.id
    assert claims["nonce"] == nonce, "Core §3.1.3.6: the nonce echoed unchanged"
    assert claims["at_hash"] == oidc.half_hash(body["access_token"], "RS256"), "Core §3.1.3.8"
    expected_at_hash = base64.urlsafe_b64encode(
        hashlib.sha256(body["access_token"].encode()).digest()[:16]).rstrip(b"=").decode()
    assert claims["at_hash"] == expected_at_hash, "computed independently of inboundlib"
    assert before - 1 <= claims["auth_time"] <= int(time.time()) + 1
    assert claims["sid"]
    assert (claims["name"], claims["email"]) == ("Some One", "someone@example.com"), "profile and email released"

    info = await issuer.introspect(body["access_token"])
    assert info.active and info.sub == record.id and info.client_id == client.client_id


async def test_a_confidential_client_authenticates_and_may_skip_pkce(stack, authorization, app, user):
    client, secret = await app(public=False, pkce_required=False, grant_types=["authorization_code"])
    record, password = user
    code = await mint(authorization, client, record, password, scope="api.read")
    reply = await exchange(stack, code, client)
    assert reply.status_code == 401 and reply.json()["error"] == "invalid_client", reply.text
    reply = await exchange(stack, code, client, secret=secret)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "id_token" not in body, "no openid, no ID token"
    assert "refresh_token" not in body, "the client may not use the refresh_token grant"


async def test_a_disabled_users_code_is_refused(stack, authorization, app, user, registry):
    """The user was disabled between the code and its exchange: no tokens."""
    client, _ = await app()
    record, password = user
    verifier = _verifier()
    code = await mint(authorization, client, record, password, verifier=verifier)
    await registry.update_user(record.id, UserUpdate(active=False))
    _refused(await exchange(stack, code, client, verifier=verifier))


async def test_a_reused_code_is_refused_and_revokes_the_first_uses_tokens(stack, authorization, app, user, issuer):
    """RFC 6749 §4.1.2: the second use fails, and the tokens of the first are revoked."""
    client, _ = await app()
    record, password = user
    verifier = _verifier()
    code = await mint(authorization, client, record, password, verifier=verifier)
    first = await exchange(stack, code, client, verifier=verifier)
    assert first.status_code == 200, first.text
    tokens = first.json()
    assert await introspect(issuer, tokens["access_token"]) and await introspect(issuer, tokens["refresh_token"])

    _refused(await exchange(stack, code, client, verifier=verifier))
    await eventually(lambda: introspect(issuer, tokens["access_token"]), until=lambda active: not active,
                     message="the first use's access token revoked")
    assert not await introspect(issuer, tokens["refresh_token"]), "its refresh token too"
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        refreshed = await http.post(TOKEN, data={"grant_type": "refresh_token", "client_id": client.client_id,
                                                 "refresh_token": tokens["refresh_token"]})
    _refused(refreshed)


async def test_an_expired_code_is_refused(stack, authorization, app, user):
    """The code's lifetime ran out (set back in the registry's table: the lifetime itself is the registry's test)."""
    client, _ = await app()
    record, password = user
    verifier = _verifier()
    code = await mint(authorization, client, record, password, verifier=verifier)
    conn = await asyncpg.connect(stack.database_url)
    try:
        changed = await conn.execute("UPDATE authorization_codes SET expires_at = now() - interval '1 second' "
                                     "WHERE code_hash = $1", codes.code_hash(code))
    finally:
        await conn.close()
    assert changed == "UPDATE 1"
    _refused(await exchange(stack, code, client, verifier=verifier))


async def test_another_clients_code_is_refused_and_left_to_its_client(stack, authorization, app, user):
    client, _ = await app()
    other, _ = await app()
    record, password = user
    verifier = _verifier()
    code = await mint(authorization, client, record, password, verifier=verifier)
    _refused(await exchange(stack, code, other, verifier=verifier))
    reply = await exchange(stack, code, client, verifier=verifier)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("sent", [None, REDIRECT + "/", "https://app.example/other"])
async def test_a_redirect_uri_other_than_the_requests_is_refused(stack, authorization, app, user, sent):
    client, _ = await app(redirect_uris=[REDIRECT, "https://app.example/other"])
    record, password = user
    verifier = _verifier()
    code = await mint(authorization, client, record, password, verifier=verifier)
    _refused(await exchange(stack, code, client, verifier=verifier, redirect_uri=sent))


@pytest.mark.parametrize("sent", [None, "wrong-" + "v" * 43])
async def test_a_wrong_or_missing_verifier_is_refused(stack, authorization, app, user, sent):
    client, _ = await app()
    record, password = user
    code = await mint(authorization, client, record, password, verifier=_verifier())
    _refused(await exchange(stack, code, client, verifier=sent))


async def test_userinfo_answers_the_claims_the_scopes_release(stack, authorization, app, user, make_client):
    """Core §5.3 over HTTP: sub always; profile and email claims only with their scopes;
    insufficient_scope without openid; a client's own token names no user."""
    client, _ = await app()
    record, password = user
    tokens = {}
    for scope in ("openid email", "api.read"):
        verifier = _verifier()
        code = await mint(authorization, client, record, password, scope=scope, verifier=verifier)
        reply = await exchange(stack, code, client, verifier=verifier)
        assert reply.status_code == 200, reply.text
        tokens[scope] = reply.json()["access_token"]
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        reply = await http.get(USERINFO, headers={"Authorization": f"Bearer {tokens['openid email']}"})
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"sub": record.id, "email": "someone@example.com", "email_verified": False}

        reply = await http.get(USERINFO, headers={"Authorization": f"Bearer {tokens['api.read']}"})
        assert reply.status_code == 403, reply.text
        assert 'error="insufficient_scope"' in reply.headers["www-authenticate"]

        machine, secret = await make_client(scopes=["openid", "api.read"])
        issued = await http.post(TOKEN, data={"grant_type": "client_credentials", "scope": "openid"},
                                 auth=(machine.client_id, secret))
        assert issued.status_code == 200, issued.text
        reply = await http.get(USERINFO, headers={"Authorization": f"Bearer {issued.json()['access_token']}"})
        assert reply.status_code == 401, reply.text
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]


async def test_no_code_or_verifier_in_any_log_audit_row_or_table(stack, authorization, app, user):
    """Codes and verifiers are secrets: refused exchanges (a reuse, another client's, a wrong
    verifier) are audited and logged with the reason, never with the code or verifier; the
    registry keeps only the code's SHA-256."""
    client, _ = await app()
    other, _ = await app()
    record, password = user
    verifier = _verifier()
    code = await mint(authorization, client, record, password, verifier=verifier)
    _refused(await exchange(stack, code, other, verifier=verifier))
    assert (await exchange(stack, code, client, verifier=verifier)).status_code == 200
    _refused(await exchange(stack, code, client, verifier=verifier))
    second = await mint(authorization, client, record, password, verifier=_verifier())
    _refused(await exchange(stack, second, client, verifier=verifier))
    secrets_sent = (code, code[len(codes.CODE_PREFIX):], second, second[len(codes.CODE_PREFIX):], verifier)

    await audit_caught_up(stack)
    conn = await asyncpg.connect(stack.database_url)
    try:
        denials = await conn.fetch("SELECT detail FROM audit_log WHERE type = 'token_denied' AND client_id = $1"
                                   " AND detail->>'error' = 'invalid_grant'", client.client_id)
        assert len(denials) == 2, denials  # the reuse and the wrong verifier
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert {"authorization_codes", "audit_log", "opaque_tokens"} <= set(tables)
        for table in tables:
            rows = await conn.fetch(f'SELECT t::text AS whole FROM "{table}" t')
            for row in rows:
                assert not any(s in row["whole"] for s in secrets_sent), f"a code or verifier in {table}"
    finally:
        await conn.close()

    logs = await eventually(lambda: "\n".join(p.read_text(errors="replace") for p in log_files(stack)),
                            until=lambda text: text.count(client.client_id) >= 2,
                            message="the refusals in the service logs")
    assert not any(s in logs for s in secrets_sent)


def log_files(stack) -> list[Path]:
    return sorted(path for path in Path(stack.state_dir).rglob("*.log") if path.is_file())


async def test_two_exchanges_of_one_code_at_once_leave_no_live_tokens(stack, authorization, app, user, issuer):
    """The registry consumes atomically: of two simultaneous exchanges one gets tokens and the
    other is a reuse, which revokes what the first got (however the two interleave)."""
    client, _ = await app()
    record, password = user
    verifier = _verifier()
    code = await mint(authorization, client, record, password, verifier=verifier)
    replies = await asyncio.gather(*(exchange(stack, code, client, verifier=verifier) for _ in range(2)))
    assert sorted(r.status_code for r in replies) == [200, 400], [r.text for r in replies]
    [won] = [r.json() for r in replies if r.status_code == 200]
    [lost] = [r for r in replies if r.status_code == 400]
    _refused(lost)
    await eventually(lambda: introspect(issuer, won["access_token"]), until=lambda active: not active,
                     message="the winner's access token revoked by the reuse")
    assert not await introspect(issuer, won["refresh_token"])

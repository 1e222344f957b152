"""The authorization_code service on the real system (Postgres, NATS, token_issuer, the
registry), through its Python API over gRPC as the edge calls it (client.py), in both
layouts: sign-in, consent, the code and its exchange with PKCE, consent remembered and
asked again, the error page, prompt=none, no user enumeration, implicit, withdrawal
and sign-out. The rules' negative cases in detail: tests/unit/test_authorize_decisions.py;
over HTTP in Chromium: tests/browser."""
from __future__ import annotations

import json
import secrets
import uuid
from urllib.parse import parse_qs, urlsplit

import asyncpg
import jwt
import pytest

from inboundlib import identity
from inboundlib.grants.api import TokenRequest
from inboundlib.oauth.client_auth import NONE, ClientCredentials
from inboundlib.oauth.pkce import s256
from services.authorization_code.api import ConsentPage, ErrorPage, Redirect, SignInPage
from services.authorization_code.authorize import SIGN_IN_FAILED
from services.authorization_code.client import AuthorizationCodeClient
from services.client_registry.api import UserSpec
from tests.support import eventually

pytestmark = pytest.mark.both_modes

REDIRECT = "https://app.example.com/cb"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
async def browser_service(stack):
    """The authorization_code service as the edge reaches it (the access table's caller)."""
    channel = stack.channel("authorization_code", caller=identity.service("edge"))
    yield AuthorizationCodeClient("authorization_code", channel)
    await channel.close()


@pytest.fixture
async def user(registry):
    name = "browser-" + uuid.uuid4().hex[:8]
    return await registry.create_user(UserSpec(username=name, password=PASSWORD, email=f"{name}@example.com",
                                               email_verified=True, display_name="Browser User"))


@pytest.fixture
async def spa(make_client):
    """A public client allowed the code flow and implicit, with a scope of its own that needs consent."""
    scope = "authz." + secrets.token_hex(4)
    client, _ = await make_client(public=True, grant_types=["authorization_code", "implicit", "refresh_token"],
                                  scopes=["openid", "profile", scope], redirect_uris=[REDIRECT])
    return client, scope


def query(**values) -> dict[str, tuple[str, ...]]:
    return {k: (v,) for k, v in values.items()}


def answer_of(location: str) -> dict[str, str]:
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT, location
    return {k: v[0] for k, v in parse_qs(parts.fragment or parts.query).items()}


async def test_code_flow_with_pkce_consent_remembered_and_asked_again(stack, browser_service, user, spa, issuer):
    client, scope = spa
    verifier = secrets.token_urlsafe(48)
    request = query(client_id=client.client_id, redirect_uri=REDIRECT, response_type="code",
                    scope="openid profile", state="st-1", nonce="n-1", code_challenge=s256(verifier),
                    code_challenge_method="S256")
    page = await browser_service.authorize(request, "")
    assert isinstance(page.result, SignInPage) and page.result.client.client_id == client.client_id
    signed = await browser_service.sign_in(page.result.request_id, user.username, PASSWORD, "")
    session_id = signed.session.session_id
    assert session_id and signed.session.max_age_seconds > 0
    assert isinstance(signed.result, ConsentPage) and [s.name for s in signed.result.scopes] == ["profile"]
    done = await browser_service.consent(signed.result.request_id, session_id, True)
    answer = answer_of(done.result.location)
    assert answer["state"] == "st-1" and answer["iss"] == stack.edge_url and answer["code"].startswith("ibc_")

    tokens = await browser_service.handle(TokenRequest(
        grant_type="authorization_code", client=ClientCredentials(NONE, client.client_id, ""),
        params=query(code=answer["code"], redirect_uri=REDIRECT, code_verifier=verifier)))
    assert (await issuer.introspect(tokens.access_token)).active
    claims = jwt.decode(tokens.id_token, options={"verify_signature": False})
    assert claims["nonce"] == "n-1" and claims["sub"] == user.id and claims["aud"] in (client.client_id,
                                                                                      [client.client_id])

    # Consent remembered: the same scopes again go straight to a code.
    again = await browser_service.authorize({**request, "state": ("st-2",)}, session_id)
    assert isinstance(again.result, Redirect) and "code" in answer_of(again.result.location)
    # More scopes ask again, for the new one alone.
    more = await browser_service.authorize({**request, "scope": (f"openid profile {scope}",)}, session_id)
    assert isinstance(more.result, ConsentPage) and [s.name for s in more.result.scopes] == [scope]

    # The audit trail: the sign-in, the consent and the codes, as the user, never the code itself.
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await eventually(lambda: conn.fetch(
            "SELECT type, actor_kind, actor_id, detail::text AS detail FROM audit_log WHERE client_id = $1"
            " AND type IN ('user_signed_in', 'consent_granted', 'authorization_code_issued')", client.client_id),
            until=lambda rows: {r["type"] for r in rows} == {"user_signed_in", "consent_granted",
                                                             "authorization_code_issued"},
            message="the browser's audit rows")
    finally:
        await conn.close()
    assert all((r["actor_kind"], r["actor_id"]) == ("user", user.id) for r in rows)
    assert not any(answer["code"] in r["detail"] or session_id in r["detail"] for r in rows)


async def test_an_unregistered_redirect_uri_gets_an_error_page(browser_service, spa):
    client, _ = spa
    for uri in (REDIRECT + "/extra", "https://evil.example.com/cb", ""):
        outcome = await browser_service.authorize(query(client_id=client.client_id, redirect_uri=uri,
                                                        response_type="code", state="s"), "")
        assert isinstance(outcome.result, ErrorPage) and outcome.result.http_status == 400, uri


async def test_prompt_none_without_a_session_answers_login_required(stack, browser_service, spa):
    client, _ = spa
    outcome = await browser_service.authorize(query(
        client_id=client.client_id, redirect_uri=REDIRECT, response_type="code", state="s-none", prompt="none",
        code_challenge=s256("x" * 43), code_challenge_method="S256"), "")
    answer = answer_of(outcome.result.location)
    assert answer == {"error": "login_required", "error_description": answer["error_description"],
                      "state": "s-none", "iss": stack.edge_url}


async def test_a_failed_sign_in_says_the_same_for_an_unknown_user_and_a_wrong_password(browser_service, user, spa):
    client, _ = spa
    page = await browser_service.authorize(query(
        client_id=client.client_id, redirect_uri=REDIRECT, response_type="code", state="s",
        code_challenge=s256("y" * 43), code_challenge_method="S256"), "")
    unknown = await browser_service.sign_in(page.result.request_id, "nobody-" + uuid.uuid4().hex[:6], PASSWORD, "")
    wrong = await browser_service.sign_in(page.result.request_id, user.username, "wrong password", "")
    assert unknown.result.message == wrong.result.message == SIGN_IN_FAILED
    assert unknown.session is None and wrong.session is None


async def test_implicit_tokens_and_withdrawal_ending_them(browser_service, user, spa, issuer):
    client, _ = spa
    page = await browser_service.authorize(query(
        client_id=client.client_id, redirect_uri=REDIRECT, response_type="id_token token", scope="openid profile",
        state="s-imp", nonce="n-imp"), "")
    signed = await browser_service.sign_in(page.result.request_id, user.username, PASSWORD, "")
    session_id = signed.session.session_id
    done = await browser_service.consent(signed.result.request_id, session_id, True)
    assert "#" in done.result.location
    answer = answer_of(done.result.location)
    assert answer["token_type"] == "Bearer" and "refresh_token" not in answer and answer["state"] == "s-imp"
    assert int(answer["expires_in"]) <= 900
    claims = jwt.decode(answer["id_token"], options={"verify_signature": False})
    assert claims["nonce"] == "n-imp" and "at_hash" in claims
    assert (await issuer.introspect(answer["access_token"])).active

    account = await browser_service.account(session_id)
    assert account.signed_in and client.client_id in [c.client.client_id for c in account.consents]
    after = await browser_service.withdraw_consent(session_id, client.client_id)
    assert client.client_id not in [c.client.client_id for c in after.consents]
    await eventually(lambda: issuer.introspect(answer["access_token"]), until=lambda info: not info.active,
                     message="the implicit token ends with its consent")


async def test_sign_out_ends_the_session(browser_service, user, spa):
    client, _ = spa
    page = await browser_service.authorize(query(
        client_id=client.client_id, redirect_uri=REDIRECT, response_type="code", scope="openid", state="s",
        code_challenge=s256("z" * 43), code_challenge_method="S256"), "")
    signed = await browser_service.sign_in(page.result.request_id, user.username, PASSWORD, "")
    session_id = signed.session.session_id
    assert (await browser_service.account(session_id)).signed_in
    # A logout another site sends the browser to, without an ID token of this session, ends nothing.
    asked = await browser_service.end_session(session_id, {"client_id": (client.client_id,)})
    assert isinstance(asked.result, Redirect) and asked.result.location.endswith("/account")
    assert (await browser_service.account(session_id)).signed_in
    out = await browser_service.end_session(session_id, {}, user_confirmed=True)
    assert out.session.clear and isinstance(out.result, ErrorPage) and out.result.http_status == 200
    assert not (await browser_service.account(session_id)).signed_in
    # The same request again now needs a sign-in.
    again = await browser_service.authorize(query(
        client_id=client.client_id, redirect_uri=REDIRECT, response_type="code", scope="openid", state="s",
        code_challenge=s256("z" * 43), code_challenge_method="S256"), session_id)
    assert isinstance(again.result, SignInPage)


async def test_userinfo_through_the_service(browser_service, user, spa):
    client, _ = spa
    verifier = secrets.token_urlsafe(48)
    page = await browser_service.authorize(query(
        client_id=client.client_id, redirect_uri=REDIRECT, response_type="code", scope="openid profile",
        state="s", code_challenge=s256(verifier), code_challenge_method="S256"), "")
    signed = await browser_service.sign_in(page.result.request_id, user.username, PASSWORD, "")
    done = await browser_service.consent(signed.result.request_id, signed.session.session_id, True)
    tokens = await browser_service.handle(TokenRequest(
        grant_type="authorization_code", client=ClientCredentials(NONE, client.client_id, ""),
        params=query(code=answer_of(done.result.location)["code"], redirect_uri=REDIRECT, code_verifier=verifier)))
    claims = await browser_service.user_info(tokens.access_token)
    assert claims["sub"] == user.id and claims["name"] == "Browser User" and "email" not in claims
    assert json.dumps(claims)


async def test_no_secret_of_the_browser_reaches_a_log_or_the_audit_trail(stack, browser_service, user, spa):
    """Session ids, pending request ids, codes, passwords and a username typed wrong (maybe
    a password) appear in no service's log line and no audit row; the failed sign-in's row
    carries a digest of the username alone."""
    client, _ = spa
    verifier = secrets.token_urlsafe(48)
    typed = "typed-" + secrets.token_hex(6)
    wrong = "wrong-" + secrets.token_hex(6)
    page = await browser_service.authorize(query(
        client_id=client.client_id, redirect_uri=REDIRECT, response_type="code", scope="openid profile",
        state="s", code_challenge=s256(verifier), code_challenge_method="S256"), "")
    await browser_service.sign_in(page.result.request_id, typed, wrong, "")
    await browser_service.sign_in(page.result.request_id, user.username, wrong, "")
    signed = await browser_service.sign_in(page.result.request_id, user.username, PASSWORD, "")
    done = await browser_service.consent(signed.result.request_id, signed.session.session_id, True)
    code = answer_of(done.result.location)["code"]
    await browser_service.handle(TokenRequest(
        grant_type="authorization_code", client=ClientCredentials(NONE, client.client_id, ""),
        params=query(code=code, redirect_uri=REDIRECT, code_verifier=verifier)))
    secrets_ = {"session id": signed.session.session_id, "sign-in request id": page.result.request_id,
                "consent request id": signed.result.request_id, "code": code, "password": PASSWORD,
                "wrong password": wrong, "typed username": typed}
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await eventually(lambda: conn.fetch(
            "SELECT type, detail::text AS detail FROM audit_log WHERE client_id = $1", client.client_id),
            until=lambda rows: {"user_sign_in_failed", "authorization_code_issued", "token_issued"}
            <= {r["type"] for r in rows}, message="the flow's audit rows")
    finally:
        await conn.close()
    failed = [json.loads(r["detail"]) for r in rows if r["type"] == "user_sign_in_failed"]
    assert len(failed) == 2 and all(f["reason"] == "invalid" and f["username"].startswith("sha256:") for f in failed)
    lines = [line for process in stack.services.values() for line in process.lines]
    assert lines
    for name, value in secrets_.items():
        assert not [r["type"] for r in rows if value in r["detail"]], name
        assert not [line for line in lines if value in line], name

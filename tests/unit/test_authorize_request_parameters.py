"""Rules of issue 9's authorization endpoint that had no test failing without them (found
going through the issue bullet by bullet, /work/brief/CHECKLIST9.md): the state comes back
unchanged whatever its characters (RFC 6749 §4.1.2), response_mode=fragment for a code
(OAuth 2.0 Multiple Response Type Encoding Practices §2.1), login_hint reaches the sign-in
page (OpenID Connect Core §3.1.2.1), and the code's lifetime (60 s by default, at most
600 s: RFC 6749 §4.1.2). On the fakes of tests/fakes.py, as test_authorize_decisions.py."""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest

from inboundlib.config import ConfigError, Env
from inboundlib.oauth.pkce import s256
from services.authorization_code.api import Redirect, SignInPage
from services.authorization_code.assembly import CODE_LIFETIME, Settings
from services.authorization_code.authorize import Authorization, AuthorizeSettings
from services.authorization_code.codes import code_hash
from services.client_registry.api import ScopeRecord, UserRecord
from tests.fakes import FakeBrowserState, FakeBus, FakeClients, FakeIssuer, client_record

ISSUER = "https://auth.example.com"
REDIRECT = "https://app.example.com/callback"
ALICE = UserRecord(id="u-alice", username="alice", email="alice@example.com", display_name="Alice", active=True,
                   roles=())


@pytest.fixture
def authorization() -> tuple[Authorization, FakeBrowserState]:
    state = FakeBrowserState(ALICE, scopes=(ScopeRecord("openid", "Sign you in", consent_required=False),))
    state.passwords = {"alice": "alice-password"}
    clients = FakeClients(client_record(client_id="web", grant_types=("authorization_code",), scopes=("openid",),
                                        redirect_uris=(REDIRECT,)))
    return Authorization(clients, state, FakeIssuer(), FakeBus(), AuthorizeSettings(issuer=ISSUER)), state


def params(**values: str) -> dict[str, tuple[str, ...]]:
    base = {"client_id": "web", "redirect_uri": REDIRECT, "response_type": "code", "scope": "openid",
            "state": "s-1"}
    base.update(values)
    return {name: (value,) for name, value in base.items()}


async def code_redirect(authorization: Authorization, **request: str) -> str:
    """Sign in through the request's sign-in page (openid needs no consent): the code's redirect."""
    page = (await authorization.authorize(params(**request), "")).result
    assert isinstance(page, SignInPage), page
    outcome = await authorization.sign_in(page.request_id, "alice", "alice-password", "")
    assert isinstance(outcome.result, Redirect), outcome
    return outcome.result.location


@pytest.mark.parametrize("state", ["a b&c=d#e+f/g?h%20i", "é✓ 😀", "=&#", "x" * 1024])
async def test_state_comes_back_unchanged_whatever_its_characters(authorization, state):
    location = await code_redirect(authorization[0], state=state)
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT and not parts.fragment
    answer = parse_qs(parts.query, keep_blank_values=True)
    assert answer["state"] == [state], "RFC 6749 §4.1.2: the exact value the client sent"
    assert len(answer["code"]) == 1 and answer["iss"] == [ISSUER]


async def test_a_code_goes_in_the_fragment_when_the_request_asks_for_it(authorization):
    location = await code_redirect(authorization[0], response_mode="fragment")
    parts = urlsplit(location)
    assert not parts.query, "nothing of the response in the query"
    answer = parse_qs(parts.fragment)
    assert answer["code"][0].startswith("ibc_") and answer["state"] == ["s-1"] and answer["iss"] == [ISSUER]
    # The default for a code stays the query (RFC 6749 §4.1.2).
    default = urlsplit(await code_redirect(authorization[0]))
    assert not default.fragment and parse_qs(default.query)["code"]


async def test_the_login_hint_prefills_the_sign_in_page(authorization):
    page = (await authorization[0].authorize(params(login_hint="alice@example.com"), "")).result
    assert isinstance(page, SignInPage) and page.login_hint == "alice@example.com"
    plain = (await authorization[0].authorize(params(), "")).result
    assert isinstance(plain, SignInPage) and plain.login_hint == ""


def test_the_code_lifetime_is_60_s_by_default_and_at_most_600():
    assert Settings.from_env(Env({})).authorize.code_lifetime == 60
    assert Settings.from_env(Env({CODE_LIFETIME: "600"})).authorize.code_lifetime == 600
    for refused in ("601", "0", "3600"):
        with pytest.raises(ConfigError):
            Settings.from_env(Env({CODE_LIFETIME: refused}))


async def test_the_code_is_stored_with_the_configured_lifetime(authorization):
    _, state = authorization
    for lifetime in (60, 17):
        authorization = Authorization(FakeClients(client_record(
            client_id="web", grant_types=("authorization_code",), scopes=("openid",), redirect_uris=(REDIRECT,))),
            state, FakeIssuer(), FakeBus(), AuthorizeSettings(issuer=ISSUER, code_lifetime=lifetime))
        before = time.time()
        location = await code_redirect(authorization, code_challenge=s256("v" * 43), code_challenge_method="S256")
        [code] = parse_qs(urlsplit(location).query)["code"]
        stored = state.codes[code_hash(code)]
        assert before + lifetime - 1 <= stored.expires_at <= time.time() + lifetime + 1


def test_the_other_lifetimes_default_as_agreed():
    """A pending request lives 600 s, a browser session 8 hours (absolute), an implicit access
    token at most 900 s: the defaults TEAM.md's design and the README state."""
    settings = Settings.from_env(Env({})).authorize
    assert (settings.request_lifetime, settings.session_lifetime, settings.implicit_access_token_lifetime) == (
        600, 28800, 900)

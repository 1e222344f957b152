"""The authorization endpoint's decisions (services/authorization_code/authorize.py) on
fakes: each rule of the issue that lives at the authorize step, with the measure that
shows it (what the outcome is, what the registry fake holds, what was issued). The same
paths run against the real stack in tests/integration/test_authorize_flow.py."""
from __future__ import annotations

import dataclasses
import json
import time
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from inboundlib.events import CODE_ISSUED, CONSENT_GRANTED, USER_SIGN_IN_FAILED, USER_SIGNED_IN
from inboundlib.grants.api import RequestContext
from inboundlib.oauth.pkce import s256
from services.authorization_code.api import ConsentPage, ErrorPage, Redirect, SignInPage
from services.authorization_code.authorize import (
    SIGN_IN_FAILED,
    SIGN_IN_LOCKED,
    Authorization,
    AuthorizeSettings,
    secret_hash,
)
from services.authorization_code.codes import code_hash
from services.client_registry.api import ScopeRecord, UserRecord
from tests.fakes import FakeBrowserState, FakeBus, FakeClients, FakeIssuer, client_record

ISSUER = "https://auth.example.com"
REDIRECT = "https://app.example.com/callback"
VERIFIER = "v" * 43
CHALLENGE = s256(VERIFIER)
ALICE = UserRecord(id="u-alice", username="alice", email="alice@example.com", display_name="Alice", active=True,
                   roles=())
BOB_DISABLED = UserRecord(id="u-bob", username="bob", email="", display_name="Bob", active=False, roles=())
CONTEXT = RequestContext(client_address="192.0.2.7", user_agent="test")


class Issuer(FakeIssuer):
    async def jwks(self) -> dict:
        return {"keys": []}


@dataclasses.dataclass
class World:
    authorization: Authorization
    state: FakeBrowserState
    clients: FakeClients
    issuer: Issuer
    bus: FakeBus
    clock: list


@pytest.fixture
def world() -> World:
    state = FakeBrowserState(ALICE, BOB_DISABLED, scopes=(
        ScopeRecord("openid", "Sign you in", consent_required=False),
        ScopeRecord("profile", "Your name", consent_required=True),
        ScopeRecord("email", "Your email address", consent_required=True),
        ScopeRecord("api.read", "Read your data", consent_required=True)))
    state.passwords = {"alice": "alice-password", "bob": "bob-password"}
    clients = FakeClients(
        client_record(client_id="web", grant_types=("authorization_code", "refresh_token"),
                      scopes=("openid", "profile", "email", "api.read"), redirect_uris=(REDIRECT,)),
        client_record(client_id="spa", public=True, grant_types=("authorization_code", "implicit"),
                      scopes=("openid", "profile", "api.read"), redirect_uris=(REDIRECT,)),
        client_record(client_id="pkce", pkce_required=True, grant_types=("authorization_code",),
                      scopes=("openid",), redirect_uris=(REDIRECT,)),
        client_record(client_id="machine", grant_types=("client_credentials",), scopes=("api.read",),
                      redirect_uris=(REDIRECT,)),
        client_record(client_id="off", active=False, grant_types=("authorization_code",), scopes=("openid",),
                      redirect_uris=(REDIRECT,)))
    clock = [time.time()]
    issuer, bus = Issuer(), FakeBus()
    authorization = Authorization(clients, state, issuer, bus, AuthorizeSettings(issuer=ISSUER),
                                  clock=lambda: clock[0])
    return World(authorization, state, clients, issuer, bus, clock)


def params(**values) -> dict[str, tuple[str, ...]]:
    base = {"client_id": "web", "redirect_uri": REDIRECT, "response_type": "code", "scope": "openid",
            "state": "s-123"}
    base.update(values)
    return {k: (v if isinstance(v, tuple) else (v,)) for k, v in base.items() if v is not None}


def response_of(location: str) -> dict[str, str]:
    """The parameters of a redirect to the client: its query, or its fragment."""
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT
    return {k: v[0] for k, v in parse_qs(parts.fragment or parts.query).items()}


async def signed_in(w: World, **authorize) -> tuple[str, object]:
    """Alice signed in through the sign-in page of an authorization request: (her cookie's
    session id, the outcome of the sign-in)."""
    page = (await w.authorization.authorize(params(**authorize), "")).result
    assert isinstance(page, SignInPage)
    outcome = await w.authorization.sign_in(page.request_id, "alice", "alice-password", "", context=CONTEXT)
    return outcome.session.session_id, outcome


# --- the redirect URI and the client: an error page, never a redirect --------------------------------

@pytest.mark.parametrize("redirect_uri", [
    None,  # missing
    "https://evil.example.com/callback",  # another host
    REDIRECT + "/extra",  # an extra path segment
    REDIRECT + "/",  # a trailing slash
    REDIRECT + "?x=1",  # a query the registered one lacks
    "https://APP.example.com/callback",  # another case
    "",
])
async def test_a_redirect_uri_not_exactly_registered_gets_an_error_page_and_no_redirect(world, redirect_uri):
    outcome = await world.authorization.authorize(params(redirect_uri=redirect_uri), "")
    assert isinstance(outcome.result, ErrorPage) and outcome.result.http_status == 400
    assert outcome.result.error == "invalid_request"
    assert not world.state.pending and not world.state.codes  # nothing was kept


async def test_a_repeated_redirect_uri_gets_an_error_page(world):
    outcome = await world.authorization.authorize(params(redirect_uri=(REDIRECT, REDIRECT)), "")
    assert isinstance(outcome.result, ErrorPage)


@pytest.mark.parametrize("client_id", [None, "nobody", "off"])
async def test_an_unknown_missing_or_disabled_client_gets_an_error_page(world, client_id):
    outcome = await world.authorization.authorize(params(client_id=client_id), "")
    assert isinstance(outcome.result, ErrorPage) and outcome.result.error == "invalid_request"


async def test_the_registered_redirect_uri_is_accepted(world):
    outcome = await world.authorization.authorize(params(), "")
    assert isinstance(outcome.result, SignInPage)
    assert len(world.state.pending) == 1  # kept by hash: the page's id is not in the store
    assert secret_hash(outcome.result.request_id) in world.state.pending


# --- errors to the redirect URI (RFC 6749 §4.1.2.1) with state and iss (RFC 9207) ----------------------

def refused(outcome, error: str, *, state: str | None = "s-123", fragment: bool = False) -> dict:
    assert isinstance(outcome.result, Redirect), outcome
    location = outcome.result.location
    assert ("#" in location) == fragment, location
    answer = response_of(location)
    assert answer["error"] == error, answer
    assert answer["iss"] == ISSUER
    assert answer.get("state") == state
    assert "code" not in answer and "access_token" not in answer
    return answer


async def test_missing_state_without_pkce_is_refused(world):
    refused(await world.authorization.authorize(params(state=None), ""), "invalid_request", state=None)


async def test_missing_state_is_allowed_when_pkce_protects_the_code(world):
    outcome = await world.authorization.authorize(
        params(state=None, code_challenge=CHALLENGE, code_challenge_method="S256"), "")
    assert isinstance(outcome.result, SignInPage)


async def test_plain_pkce_is_refused(world):
    refused(await world.authorization.authorize(
        params(code_challenge=VERIFIER, code_challenge_method="plain"), ""), "invalid_request")
    # No method at all means plain (RFC 7636 §4.3): refused too.
    refused(await world.authorization.authorize(params(code_challenge=VERIFIER), ""), "invalid_request")


async def test_a_public_client_without_pkce_is_refused(world):
    refused(await world.authorization.authorize(params(client_id="spa"), ""), "invalid_request")


async def test_a_pkce_required_client_without_pkce_is_refused(world):
    refused(await world.authorization.authorize(params(client_id="pkce"), ""), "invalid_request")
    ok = await world.authorization.authorize(params(client_id="pkce", code_challenge=CHALLENGE,
                                                    code_challenge_method="S256"), "")
    assert isinstance(ok.result, SignInPage)


async def test_implicit_for_a_client_not_allowed_it_is_refused_in_the_fragment(world):
    refused(await world.authorization.authorize(params(response_type="token"), ""), "unauthorized_client",
            fragment=True)


async def test_a_client_without_the_code_grant_is_refused(world):
    refused(await world.authorization.authorize(params(client_id="machine", scope="api.read"), ""),
            "unauthorized_client")


async def test_unknown_response_type(world):
    refused(await world.authorization.authorize(params(response_type="code id_token"), ""),
            "unsupported_response_type")


async def test_tokens_are_never_sent_in_the_query(world):
    refused(await world.authorization.authorize(params(client_id="spa", response_type="token",
                                                       response_mode="query"), ""),
            "invalid_request", fragment=True)


async def test_a_scope_beyond_the_client_s_or_outside_the_catalog_is_invalid_scope(world):
    refused(await world.authorization.authorize(params(scope="openid admin"), ""), "invalid_scope")
    world.clients.put(client_record(client_id="web2", grant_types=("authorization_code",),
                                    scopes=("openid", "legacy"), redirect_uris=(REDIRECT,)))
    refused(await world.authorization.authorize(params(client_id="web2", scope="legacy"), ""), "invalid_scope")


async def test_a_repeated_parameter_and_request_objects_are_refused(world):
    refused(await world.authorization.authorize(params(scope=("openid", "profile")), ""), "invalid_request")
    refused(await world.authorization.authorize(params(request="eyJ..."), ""), "request_not_supported")
    refused(await world.authorization.authorize(params(request_uri="https://x"), ""), "request_uri_not_supported")


async def test_prompt_none_combined_with_another_value_is_invalid(world):
    refused(await world.authorization.authorize(params(prompt="none login"), ""), "invalid_request")


async def test_id_token_token_needs_a_nonce(world):
    refused(await world.authorization.authorize(params(client_id="spa", response_type="id_token token"), ""),
            "invalid_request", fragment=True)


async def test_prompt_none_without_a_session_answers_login_required(world):
    refused(await world.authorization.authorize(params(prompt="none"), ""), "login_required")
    assert not world.state.pending


# --- sign-in --------------------------------------------------------------------------------------------

async def test_sign_in_then_consent_then_a_code_bound_to_the_request(world):
    session_id, outcome = await signed_in(world, scope="openid profile", code_challenge=CHALLENGE,
                                          code_challenge_method="S256", nonce="n-1")
    consent = outcome.result
    assert isinstance(consent, ConsentPage)
    assert [s.name for s in consent.scopes] == ["profile"] and [s.name for s in consent.also_granted] == ["openid"]
    done = await world.authorization.consent(consent.request_id, session_id, True)
    answer = response_of(done.result.location)
    assert set(answer) == {"code", "state", "iss"} and answer["state"] == "s-123" and answer["iss"] == ISSUER
    assert answer["code"].startswith("ibc_")
    record = world.state.codes[code_hash(answer["code"])]
    session = world.state.sessions[secret_hash(session_id)]
    assert (record.client_id, record.redirect_uri, record.scopes, record.user_id, record.nonce) == (
        "web", REDIRECT, ("openid", "profile"), ALICE.id, "n-1")
    assert (record.code_challenge, record.code_challenge_method) == (CHALLENGE, "S256")
    assert (record.sid, record.auth_time_ms) == (session.sid, session.auth_time_ms) and record.grant_id
    issued = world.bus.events(CODE_ISSUED)
    assert len(issued) == 1 and answer["code"] not in str(issued[0])


async def test_sign_in_always_starts_a_new_session(world):
    """No session fixation: an id the browser already had (planted, or an old one) is
    never the session's; it is ended, and the cookie gets a fresh random id."""
    planted = "planted-session-id"
    page = (await world.authorization.authorize(params(), planted)).result
    outcome = await world.authorization.sign_in(page.request_id, "alice", "alice-password", planted, context=CONTEXT)
    new_id = outcome.session.session_id
    assert new_id and new_id != planted and len(new_id) >= 43 and outcome.session.max_age_seconds == 28800
    assert secret_hash(new_id) in world.state.sessions
    assert secret_hash(planted) not in world.state.sessions


async def test_sign_in_replaces_a_live_session_too(world):
    first, _ = await signed_in(world)
    page = (await world.authorization.authorize(params(prompt="login"), first)).result
    assert isinstance(page, SignInPage)
    outcome = await world.authorization.sign_in(page.request_id, "alice", "alice-password", first, context=CONTEXT)
    assert outcome.session.session_id != first
    assert secret_hash(first) not in world.state.sessions  # the old one ended


@pytest.mark.parametrize(("username", "password"), [
    ("nobody", "alice-password"),  # unknown user
    ("alice", "wrong"),  # wrong password
    ("bob", "bob-password"),  # disabled user, right password
])
async def test_a_failed_sign_in_says_the_same_whoever_it_was(world, username, password):
    """No user enumeration: one message for an unknown user, a wrong password, a disabled user."""
    page = (await world.authorization.authorize(params(), "")).result
    outcome = await world.authorization.sign_in(page.request_id, username, password, "", context=CONTEXT)
    again = outcome.result
    assert isinstance(again, SignInPage) and again.message == SIGN_IN_FAILED
    assert again.request_id == page.request_id and outcome.session is None
    assert not world.state.sessions
    [failed] = world.bus.events(USER_SIGN_IN_FAILED)
    assert failed.user_sign_in_failed.reason == "invalid" and username not in str(failed)


async def test_a_locked_username_is_told_so(world):
    world.state.locked.add("alice")
    page = (await world.authorization.authorize(params(), "")).result
    outcome = await world.authorization.sign_in(page.request_id, "alice", "alice-password", "", context=CONTEXT)
    assert outcome.result.message == SIGN_IN_LOCKED and not world.state.sessions


async def test_the_sign_in_form_completes_its_request_once(world):
    page = (await world.authorization.authorize(params(), "")).result
    first = await world.authorization.sign_in(page.request_id, "alice", "alice-password", "", context=CONTEXT)
    assert isinstance(first.result, ConsentPage) or isinstance(first.result, Redirect)
    second = await world.authorization.sign_in(page.request_id, "alice", "alice-password", "", context=CONTEXT)
    assert isinstance(second.result, ErrorPage) and second.session is None
    assert len(world.state.sessions) == 1
    assert [e.user_signed_in.user_id for e in world.bus.events(USER_SIGNED_IN)] == [ALICE.id]


async def test_an_oversized_username_or_password_is_refused_unchecked_with_the_same_message(world, monkeypatch):
    """No hashing work for a megabyte of password, and the answer reads as any failure."""
    page = (await world.authorization.authorize(params(), "")).result

    async def never(sign_ins):
        raise AssertionError("the registry was asked")

    monkeypatch.setattr(world.state, "authenticate_users", never)
    for username, password in (("a" * 257, "alice-password"), ("alice", "p" * 1025)):
        outcome = await world.authorization.sign_in(page.request_id, username, password, "", context=CONTEXT)
        assert outcome.result.message == SIGN_IN_FAILED and not world.state.sessions


async def test_an_oversized_state_is_refused_and_not_echoed(world):
    outcome = await world.authorization.authorize(params(state="s" * 1025), "")
    refused(outcome, "invalid_request", state=None)
    assert not world.state.pending


# --- sessions: max_age, prompt -------------------------------------------------------------------------

async def test_max_age_asks_for_a_new_sign_in_when_the_session_is_older(world):
    session_id, outcome = await signed_in(world)  # openid alone: no consent to give
    assert isinstance(outcome.result, Redirect)
    world.clock[0] += 120  # two minutes after the sign-in
    older = await world.authorization.authorize(params(max_age="60"), session_id)
    assert isinstance(older.result, SignInPage)
    younger = await world.authorization.authorize(params(max_age="600"), session_id)
    assert isinstance(younger.result, Redirect) and "code" in response_of(younger.result.location)
    none = await world.authorization.authorize(params(max_age="60", prompt="none"), session_id)
    refused(none, "login_required")


async def test_prompt_login_asks_again_and_the_new_sign_in_satisfies_it(world):
    session_id, outcome = await signed_in(world)
    assert isinstance(outcome.result, Redirect)
    page = (await world.authorization.authorize(params(prompt="login"), session_id)).result
    assert isinstance(page, SignInPage)
    again = await world.authorization.sign_in(page.request_id, "alice", "alice-password", session_id,
                                              context=CONTEXT)
    assert isinstance(again.result, Redirect) and "code" in response_of(again.result.location)


async def test_a_stale_cookie_is_cleared(world):
    outcome = await world.authorization.authorize(params(), "no-such-session")
    assert isinstance(outcome.result, SignInPage) and outcome.session.clear


# --- consent ----------------------------------------------------------------------------------------

async def test_consent_is_remembered_and_asked_again_for_more_scopes(world):
    session_id, outcome = await signed_in(world, scope="openid profile")
    await world.authorization.consent(outcome.result.request_id, session_id, True)
    assert world.state.consents[(ALICE.id, "web")].scopes == ("openid", "profile")
    assert world.bus.events(CONSENT_GRANTED)
    again = await world.authorization.authorize(params(scope="openid profile"), session_id)
    assert isinstance(again.result, Redirect) and "code" in response_of(again.result.location)
    more = await world.authorization.authorize(params(scope="openid profile email"), session_id)
    assert isinstance(more.result, ConsentPage)
    assert [s.name for s in more.result.scopes] == ["email"]  # only what is new
    assert {s.name for s in more.result.also_granted} == {"openid", "profile"}
    none = await world.authorization.authorize(params(scope="openid profile email", prompt="none"), session_id)
    refused(none, "consent_required")


async def test_a_scope_without_consent_required_is_granted_without_asking(world):
    session_id, outcome = await signed_in(world, scope="openid")
    assert isinstance(outcome.result, Redirect) and "code" in response_of(outcome.result.location)


async def test_prompt_consent_asks_even_when_consented(world):
    session_id, outcome = await signed_in(world, scope="openid profile")
    await world.authorization.consent(outcome.result.request_id, session_id, True)
    again = await world.authorization.authorize(params(scope="openid profile", prompt="consent"), session_id)
    assert isinstance(again.result, ConsentPage) and [s.name for s in again.result.scopes] == ["profile"]


async def test_denying_consent_answers_access_denied_and_remembers_nothing(world):
    session_id, outcome = await signed_in(world, scope="openid profile")
    denied = await world.authorization.consent(outcome.result.request_id, session_id, False)
    refused(denied, "access_denied")
    assert not world.state.consents and not world.state.codes


async def test_the_consent_form_completes_its_request_once(world):
    session_id, outcome = await signed_in(world, scope="openid profile")
    first = await world.authorization.consent(outcome.result.request_id, session_id, True)
    assert isinstance(first.result, Redirect)
    second = await world.authorization.consent(outcome.result.request_id, session_id, True)
    assert isinstance(second.result, ErrorPage)
    assert len(world.state.codes) == 1


async def test_a_consent_page_is_only_for_the_session_it_was_shown_to(world):
    session_id, outcome = await signed_in(world, scope="openid profile")
    other, _ = await signed_in(world, scope="openid")
    stolen = await world.authorization.consent(outcome.result.request_id, other, True)
    assert isinstance(stolen.result, ErrorPage) and not world.state.consents
    signed_out = await world.authorization.consent(outcome.result.request_id, "", True)
    assert isinstance(signed_out.result, ErrorPage)
    assert [c.user_id for c in world.state.codes.values()] == [ALICE.id]  # the other session's own code alone


# --- implicit -------------------------------------------------------------------------------------------

async def test_implicit_tokens_in_the_fragment_without_a_refresh_token(world):
    world.clients.put(dataclasses.replace(await world.clients.get_client("spa"), access_token_lifetime=3600))
    session_id, outcome = await signed_in(world, client_id="spa", response_type="id_token token", scope="openid",
                                          nonce="n-2")
    answer = response_of(outcome.result.location)
    assert "#" in outcome.result.location and "?" not in outcome.result.location
    assert answer["access_token"] and answer["token_type"] == "Bearer" and answer["state"] == "s-123"
    assert answer["iss"] == ISSUER and answer["expires_in"] == "900"  # min(client's 3600, 900)
    [request] = world.issuer.requests
    assert request.refresh_token_lifetime == 0 and request.grant_type == "implicit"
    assert request.id_token.nonce == "n-2" and request.id_token.at_hash
    assert (ALICE.id, "spa", request.grant_id) in world.state.user_grants  # a withdrawn consent ends it


async def test_an_implicit_id_token_carries_the_scopes_claims_as_the_code_exchanges_does(world):
    """One rule for every ID token (the issue: "the claims the granted scopes release"):
    `id_token token` releases what the code exchange's ID token does for the same scopes."""
    from services.authorization_code import grant

    session_id, outcome = await signed_in(world, client_id="spa", response_type="id_token token",
                                          scope="openid profile", nonce="n-3")
    done = await world.authorization.consent(outcome.result.request_id, session_id, True)
    assert "access_token" in response_of(done.result.location)
    [request] = world.issuer.requests
    assert request.id_token.claims["name"] == "Alice" and request.id_token.claims["preferred_username"] == "alice"
    # The exchange's ID token for the same user and scopes, as grant.py builds it.
    exchanged = grant._id_token(_code_record(), ALICE, ["openid", "profile"])
    assert request.id_token.claims == exchanged.claims and "email" not in request.id_token.claims


def _code_record():
    from services.client_registry.api import AuthorizationCodeRecord
    return AuthorizationCodeRecord(code_hash=b"x", client_id="spa", redirect_uri=REDIRECT,
                                   scopes=("openid", "profile"), user_id=ALICE.id, username="alice", sid="s",
                                   auth_time_ms=0, nonce="", code_challenge="", code_challenge_method="",
                                   grant_id="g")


async def test_a_pending_implicit_request_ends_when_the_client_loses_implicit(world):
    """Implicit only while the client is allowed it: not for a request that was pending
    (the sign-in or consent page open, up to 10 minutes) when the operator took it away."""
    page = (await world.authorization.authorize(params(client_id="spa", response_type="token", scope="openid"),
                                                "")).result
    assert isinstance(page, SignInPage)
    spa = await world.clients.get_client("spa")
    world.clients.put(dataclasses.replace(spa, grant_types=("authorization_code",)))
    outcome = await world.authorization.sign_in(page.request_id, "alice", "alice-password", "", context=CONTEXT)
    assert isinstance(outcome.result, ErrorPage) and not world.issuer.requests and not world.state.sessions


async def test_a_pending_request_ends_when_the_client_loses_a_scope_it_asked_for(world):
    """Implicit tokens carry the request's scopes as they are: a scope taken from the client
    while its consent page was open is not issued (the code exchange drops it on its own)."""
    session_id, outcome = await signed_in(world, client_id="spa", response_type="token", scope="openid api.read")
    assert isinstance(outcome.result, ConsentPage)
    spa = await world.clients.get_client("spa")
    world.clients.put(dataclasses.replace(spa, scopes=("openid", "profile")))
    done = await world.authorization.consent(outcome.result.request_id, session_id, True)
    assert isinstance(done.result, ErrorPage) and not world.issuer.requests and not world.state.consents


@pytest.mark.parametrize("change", [{"active": False}, {"redirect_uris": ("https://app.example.com/other",)}])
async def test_a_pending_request_ends_when_its_client_is_disabled_or_its_redirect_uri_unregistered(world, change):
    """The redirect URI was checked when the request came; a page left open (up to 10
    minutes) must not send a code to a client disabled since, or to a URI it removed."""
    session_id, outcome = await signed_in(world, scope="openid profile")
    assert isinstance(outcome.result, ConsentPage)
    world.clients.put(dataclasses.replace(await world.clients.get_client("web"), **change))
    done = await world.authorization.consent(outcome.result.request_id, session_id, True)
    assert isinstance(done.result, ErrorPage) and not world.state.codes and not world.state.consents


# --- account, withdrawal, sign-out -----------------------------------------------------------------------

async def test_withdrawing_a_consent_revokes_its_grants(world):
    session_id, outcome = await signed_in(world, scope="openid profile")
    done = await world.authorization.consent(outcome.result.request_id, session_id, True)
    grant_id = world.state.codes[code_hash(response_of(done.result.location)["code"])].grant_id
    account = await world.authorization.account(session_id)
    assert account.signed_in and [c.client.client_id for c in account.consents] == ["web"]
    after = await world.authorization.withdraw_consent(session_id, "web")
    assert after.consents == () and grant_id in world.state.revoked_grants


async def test_sign_out_ends_the_session(world):
    session_id, _ = await signed_in(world)
    out = await world.authorization.end_session(session_id, {}, user_confirmed=True)
    assert isinstance(out.result, ErrorPage) and out.result.http_status == 200 and out.session.clear
    assert not world.state.sessions
    assert not (await world.authorization.account(session_id)).signed_in


async def test_post_logout_redirect_only_to_a_registered_uri(world):
    world.clients.put(dataclasses.replace(await world.clients.get_client("web"),
                                          post_logout_redirect_uris=("https://app.example.com/bye",)))
    ok = await world.authorization.end_session("", {"client_id": ("web",), "state": ("z",),
                                                    "post_logout_redirect_uri": ("https://app.example.com/bye",)})
    assert ok.result == Redirect("https://app.example.com/bye?state=z")
    for uri in ("https://evil.example.com/bye", "https://app.example.com/bye/x", REDIRECT):
        page = await world.authorization.end_session("", {"client_id": ("web",),
                                                          "post_logout_redirect_uri": (uri,)})
        assert isinstance(page.result, ErrorPage), uri


async def test_two_submits_racing_past_the_read_still_complete_the_request_once(world, monkeypatch):
    """Both submits read the pending request before either completes it (what two requests
    in flight at once do): only the one whose completion the registry accepts goes on."""
    page = (await world.authorization.authorize(params(scope="openid profile"), "")).result
    pending = world.state.pending[secret_hash(page.request_id)]

    async def read_before_completion(id_hash):
        return pending if id_hash == pending.id_hash else None

    monkeypatch.setattr(world.state, "get_authorization_request", read_before_completion)
    first = await world.authorization.sign_in(page.request_id, "alice", "alice-password", "", context=CONTEXT)
    second = await world.authorization.sign_in(page.request_id, "alice", "alice-password", "", context=CONTEXT)
    assert isinstance(first.result, ConsentPage) and isinstance(second.result, ErrorPage)
    assert len(world.state.sessions) == 1 and second.session is None
    consent_id = first.result.request_id
    consent_pending = world.state.pending[secret_hash(consent_id)]

    async def consent_read(id_hash):
        return consent_pending if id_hash == consent_pending.id_hash else None

    monkeypatch.setattr(world.state, "get_authorization_request", consent_read)
    session_id = first.session.session_id
    assert isinstance((await world.authorization.consent(consent_id, session_id, True)).result, Redirect)
    assert isinstance((await world.authorization.consent(consent_id, session_id, True)).result, ErrorPage)
    assert len(world.state.codes) == 1


# --- RP-initiated logout with an id_token_hint ------------------------------------------------------------

def _rsa_key(kid: str):
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return key, {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


async def test_an_id_token_hint_names_the_client_and_ends_its_session(world, monkeypatch):
    key, jwk = _rsa_key("k1")
    other_key, _ = _rsa_key("k1")  # the same kid, another key: a forgery

    async def jwks():
        return {"keys": [jwk]}

    monkeypatch.setattr(world.issuer, "jwks", jwks)
    world.clients.put(dataclasses.replace(await world.clients.get_client("web"),
                                          post_logout_redirect_uris=("https://app.example.com/bye",)))
    session_id, _ = await signed_in(world)
    session = world.state.sessions[secret_hash(session_id)]
    expired = {"iss": ISSUER, "sub": ALICE.id, "aud": "web", "sid": session.sid, "iat": 1, "exp": 2}
    bye = {"post_logout_redirect_uri": ("https://app.example.com/bye",), "state": ("st",)}

    forged = jwt.encode(expired, other_key, algorithm="RS256", headers={"kid": "k1"})
    page = await world.authorization.end_session("", {**bye, "id_token_hint": (forged,)})
    assert isinstance(page.result, ErrorPage) and world.state.sessions  # not believed: nothing ends by its sid
    wrong_issuer = jwt.encode({**expired, "iss": "https://other.example.com"}, key, algorithm="RS256",
                              headers={"kid": "k1"})
    assert isinstance((await world.authorization.end_session(
        "", {**bye, "id_token_hint": (wrong_issuer,)})).result, ErrorPage)
    hint = jwt.encode(expired, key, algorithm="RS256", headers={"kid": "k1"})  # expired: still a hint
    other_client = await world.authorization.end_session("", {**bye, "id_token_hint": (hint,),
                                                              "client_id": ("spa",)})
    assert isinstance(other_client.result, ErrorPage)  # the hint and client_id disagree
    world.state.sessions[secret_hash(session_id)] = session
    out = await world.authorization.end_session("", {**bye, "id_token_hint": (hint,)})
    assert out.result == Redirect("https://app.example.com/bye?state=st") and out.session.clear
    assert not world.state.sessions  # ended by the hint's sid (no cookie came with it)


async def test_a_logout_not_tied_to_this_session_ends_nothing_and_asks_the_user(world, monkeypatch):
    """RP-Initiated Logout 1.0 §2: without an id_token_hint of the browser's current session
    the OP MUST ask, else any site signs the user out with a link (the cookie is SameSite=Lax:
    sent on a top-level GET). The browser goes to the account page, whose Sign out asks."""
    key, jwk = _rsa_key("k1")

    async def jwks():
        return {"keys": [jwk]}

    monkeypatch.setattr(world.issuer, "jwks", jwks)
    world.clients.put(dataclasses.replace(await world.clients.get_client("web"),
                                          post_logout_redirect_uris=("https://app.example.com/bye",)))
    session_id, _ = await signed_in(world)
    session = world.state.sessions[secret_hash(session_id)]
    bye = {"client_id": ("web",), "post_logout_redirect_uri": ("https://app.example.com/bye",)}
    claims = {"iss": ISSUER, "sub": ALICE.id, "aud": "web", "iat": 1, "exp": 2}
    another_session = jwt.encode({**claims, "sid": "another-sid"}, key, algorithm="RS256", headers={"kid": "k1"})
    for params in ({}, bye, {**bye, "id_token_hint": (another_session,)}):
        asked = await world.authorization.end_session(session_id, params)
        assert asked.result == Redirect(ISSUER + "/account") and asked.session is None, params
        assert secret_hash(session_id) in world.state.sessions, params
    this_session = jwt.encode({**claims, "sid": session.sid}, key, algorithm="RS256", headers={"kid": "k1"})
    out = await world.authorization.end_session(session_id, {**bye, "id_token_hint": (this_session,)})
    assert out.result == Redirect("https://app.example.com/bye") and out.session.clear
    assert not world.state.sessions


async def test_an_id_token_hint_of_another_user_is_not_answered_for_the_session_s_user(world, monkeypatch):
    """Core §3.1.2.1: a client asking with prompt=none about the user of its ID token gets
    login_required when another user is signed in here, never a code for that other user."""
    key, jwk = _rsa_key("k1")

    async def jwks():
        return {"keys": [jwk]}

    monkeypatch.setattr(world.issuer, "jwks", jwks)
    session_id, _ = await signed_in(world)  # Alice
    claims = {"iss": ISSUER, "aud": "web", "iat": 1, "exp": 2}
    someone_else = jwt.encode({**claims, "sub": "u-someone-else"}, key, algorithm="RS256", headers={"kid": "k1"})
    alice = jwt.encode({**claims, "sub": ALICE.id}, key, algorithm="RS256", headers={"kid": "k1"})
    refused(await world.authorization.authorize(params(prompt="none", id_token_hint=someone_else), session_id),
            "login_required")
    page = await world.authorization.authorize(params(id_token_hint=someone_else), session_id)
    assert isinstance(page.result, SignInPage)
    answered = await world.authorization.authorize(params(prompt="none", id_token_hint=alice), session_id)
    assert "code" in response_of(answered.result.location)
    forged = jwt.encode({**claims, "sub": ALICE.id}, _rsa_key("k1")[0], algorithm="RS256", headers={"kid": "k1"})
    refused(await world.authorization.authorize(params(prompt="none", id_token_hint=forged), session_id),
            "invalid_request")
    # Our JWT access tokens share the JWKS (RFC 9068 typ at+jwt): an access token is no ID token.
    access_token = jwt.encode({**claims, "sub": ALICE.id}, key, algorithm="RS256", headers={"kid": "k1",
                                                                                            "typ": "at+jwt"})
    refused(await world.authorization.authorize(params(prompt="none", id_token_hint=access_token), session_id),
            "invalid_request")
    assert isinstance((await world.authorization.end_session(
        session_id, {"id_token_hint": (access_token,)})).result, Redirect)
    assert secret_hash(session_id) in world.state.sessions  # it did not stand for the session's user


async def test_a_code_is_sent_only_once_its_audit_record_is_kept(world, monkeypatch):
    """As a token is: with the audit spool full, the answer is temporarily_unavailable (503)
    and no code reaches the browser; with the registry down, the same, never a crash."""
    from inboundlib.oauth.errors import TemporarilyUnavailable

    async def full(*event_ids):
        raise TemporarilyUnavailable(detail="spool full")

    monkeypatch.setattr(world.bus, "durable", full)
    page = (await world.authorization.authorize(params(), "")).result
    outcome = await world.authorization.sign_in(page.request_id, "alice", "alice-password", "", context=CONTEXT)
    assert isinstance(outcome.result, ErrorPage) and outcome.result.http_status == 503
    assert outcome.result.error == "temporarily_unavailable"
    # The sign-in itself stood: the page keeps the new session's cookie (else the session is
    # orphaned and the user signs in again), and the request tried again needs no sign-in.
    assert outcome.session and secret_hash(outcome.session.session_id) in world.state.sessions
    monkeypatch.undo()
    again = await world.authorization.authorize(params(), outcome.session.session_id)
    assert "code" in response_of(again.result.location)
    world.state.down = ConnectionError("registry away")
    down = await world.authorization.authorize(params(), "")
    assert isinstance(down.result, ErrorPage) and down.result.http_status in (500, 503)


async def test_a_sign_in_the_registry_cannot_check_now_says_so_on_the_page(world, monkeypatch):
    from inboundlib.batching import Overloaded
    from services.authorization_code.authorize import SIGN_IN_UNAVAILABLE

    page = (await world.authorization.authorize(params(), "")).result

    async def overloaded(sign_ins):
        raise Overloaded("the registry's hashing queue is full")

    monkeypatch.setattr(world.state, "authenticate_users", overloaded)
    outcome = await world.authorization.sign_in(page.request_id, "alice", "alice-password", "", context=CONTEXT)
    assert isinstance(outcome.result, SignInPage) and outcome.result.message == SIGN_IN_UNAVAILABLE
    assert outcome.result.request_id == page.request_id and not world.state.sessions

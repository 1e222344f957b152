"""token_issuer's side of third-party tokens and token exchange: a JWT naming another
issuer goes to ForeignTokens (and only such a JWT), the answer passes checks 4 and 5;
`act` (RFC 8693 §4.1) is signed into our JWTs and shown by introspection; the provider
is in the TokenInfo and the token_issued audit event."""
from __future__ import annotations

import json
import os
import time

import jwt
import pytest

from inboundlib.events import TOKEN_ISSUED
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, ClientCredentials, hash_client_secret
from inboundlib.oauth.errors import KeysPending, ServerError, TemporarilyUnavailable
from services.client_registry.api import RevocationRecord, subject_cut_off
from services.token_issuer.api import FORMAT_JWT, FORMAT_OPAQUE, IssueRequest, TokenInfo
from services.token_issuer.introspection import TokenChecker
from services.token_issuer.issuer import TokenIssuer
from services.token_issuer.keys import KeyEncryptor, KeyRing, new_key_record, open_key_record
from services.token_issuer.revocations import RevocationSet
from tests.fakes import FakeBus, FakeClients, FakeRegistry, client_record

ISSUER = "https://issuer.example"
ENC = KeyEncryptor(os.urandom(32))
KEY = open_key_record(new_key_record("ES256", ENC), ENC)
RING = KeyRing([KEY])
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-s3cret-s3"


class Foreign:
    """ForeignTokens as token_issuer sees it: records what it is asked; answers `info`."""

    def __init__(self, info: TokenInfo | None = None, error: BaseException | None = None):
        self.info = info or TokenInfo(active=False)
        self.error = error
        self.asked: list[str] = []

    async def introspect_foreign(self, token: str, *, request_id: str = "") -> TokenInfo:
        self.asked.append(token)
        if self.error is not None:
            raise self.error
        return self.info


def foreign_info(**overrides) -> TokenInfo:
    now = int(time.time())
    base = dict(active=True, scope="api.read", client_id="idp-app", sub="user-1", username="alice",
                token_type="Bearer", exp=now + 300, iat=now, iss="https://idp.example", aud=("idp-app",),
                jti="x", provider="idp")
    return TokenInfo(**{**base, **overrides})


def checker(foreign: Foreign, revocations: RevocationSet | None = None, clients=()) -> TokenChecker:
    return TokenChecker(issuer=ISSUER, keyring=lambda: RING, revocations=revocations or RevocationSet(),
                        clients=FakeClients(*clients), registry=FakeRegistry(), foreign=foreign)


def idp_token(iss="https://idp.example", **claims) -> str:
    # Signed by anyone: token_issuer only routes by the unverified iss; ForeignTokens verifies.
    return jwt.encode({"iss": iss, "sub": "u", "aud": "idp-app", **claims}, "k" * 32, algorithm="HS256")


def our_token(**claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "app", "aud": "api", "client_id": "app", "scope": "api.read",
            "jti": os.urandom(8).hex(), "iat": now, "exp": now + 600, **claims}
    return jwt.encode(body, KEY.private_key, algorithm="ES256", headers={"kid": KEY.kid, "typ": "at+jwt"})


async def test_a_jwt_of_another_issuer_is_answered_by_foreign_tokens():
    foreign = Foreign(foreign_info())
    info = await checker(foreign).introspect(idp_token(), None, internal=True)
    assert info.active and info.provider == "idp" and info.sub == "user-1"
    assert info.to_json()["provider"] == "idp" and info.to_json()["username"] == "alice"


async def test_only_foreign_jwts_go_there():
    foreign = Foreign(foreign_info())
    c = checker(foreign, clients=(client_record(),))
    assert (await c.introspect(our_token(), None, internal=True)).active
    # ours but not verifiable, opaque junk, a JWT naming our issuer: inactive, never routed.
    for token in (our_token()[:-4] + "AAAA", "ib_opaque", idp_token(iss=ISSUER), idp_token(iss="")):
        assert not (await c.introspect(token, None, internal=True)).active
    assert foreign.asked == []


async def test_an_inactive_or_expired_foreign_answer_is_inactive():
    for info in (TokenInfo(active=False), foreign_info(exp=int(time.time()) - 1)):
        assert not (await checker(Foreign(info)).introspect(idp_token(), None, internal=True)).active


async def test_a_caller_without_the_introspection_scope_does_not_see_a_foreign_token():
    """RFC 7662 §4 as for our tokens: its client_id is the IdP's client, not the caller."""
    caller = client_record(client_id="rs", secret_hash=hash_client_secret(SECRET), scopes=("api.read",))
    creds = ClientCredentials(CLIENT_SECRET_BASIC, "rs", SECRET)
    c = checker(Foreign(foreign_info()), clients=(caller,))
    assert not (await c.introspect(idp_token(), creds, internal=False)).active
    allowed = client_record(client_id="rs", secret_hash=hash_client_secret(SECRET), scopes=("inbound.introspect",))
    c = checker(Foreign(foreign_info()), clients=(allowed,))
    assert (await c.introspect(idp_token(), creds, internal=False)).active


async def test_a_subject_cut_off_makes_the_mapped_users_foreign_tokens_inactive():
    revocations = RevocationSet()
    info = foreign_info()
    revocations.apply(RevocationRecord(**{**subject_cut_off("user-1", (info.iat + 1) * 1000, "op").__dict__,
                                          "id": 1}))
    assert not (await checker(Foreign(info), revocations).introspect(idp_token(), None, internal=True)).active
    assert (await checker(Foreign(foreign_info(sub="user-2"))).introspect(idp_token(), None, internal=True)).active


async def test_keys_being_fetched_is_temporarily_unavailable_for_introspection():
    with pytest.raises(TemporarilyUnavailable) as raised:
        await checker(Foreign(error=KeysPending())).introspect(idp_token(), None, internal=True)
    assert not isinstance(raised.value, KeysPending)


async def test_a_foreign_token_is_no_resource_servers_bearer():
    c = checker(Foreign(foreign_info(sub="idp-app", username="", scope="inbound.introspect")))
    assert await c.resource_server_of(idp_token()) is None


def issuer(bus=None) -> TokenIssuer:
    i = TokenIssuer(FakeRegistry(), ENC, issuer=ISSUER, default_audience="api", events=bus)
    i.keyring = RING
    return i


async def test_act_is_signed_into_the_jwt_and_shown_by_introspection():
    act = {"sub": "svc", "iss": ISSUER, "act": {"sub": "older"}}
    bus = FakeBus()
    token = await issuer(bus).issue(IssueRequest(client_id="app", subject="user-1", scopes=("api.read",),
                                                 format=FORMAT_JWT, lifetime_seconds=60, act_json=json.dumps(act),
                                                 provider="idp", grant_type="x"))
    assert jwt.decode(token.access_token, options={"verify_signature": False})["act"] == act
    info = await checker(Foreign(), clients=(client_record(),)).introspect(token.access_token, None, internal=True)
    assert info.active and info.to_json()["act"] == act
    [event] = bus.events(TOKEN_ISSUED)
    assert event.token_issued.provider == "idp" and event.token_issued.act_sub == "svc"


async def test_no_act_no_claim():
    token = await issuer().issue(IssueRequest(client_id="app", subject="u", scopes=(), format=FORMAT_JWT,
                                              lifetime_seconds=60))
    assert "act" not in jwt.decode(token.access_token, options={"verify_signature": False})
    assert "act" not in TokenInfo(active=True, sub="u").to_json()


@pytest.mark.parametrize("act_json, fmt", [("[1]", FORMAT_JWT), ('{"iss": "x"}', FORMAT_JWT), ("{", FORMAT_JWT),
                                           ('{"sub": "svc"}', FORMAT_OPAQUE)])
async def test_a_bad_act_or_one_for_an_opaque_token_is_refused_before_issuing(act_json, fmt):
    with pytest.raises(ServerError):
        await issuer().issue(IssueRequest(client_id="app", subject="u", scopes=(), format=fmt, lifetime_seconds=60,
                                          act_json=act_json))

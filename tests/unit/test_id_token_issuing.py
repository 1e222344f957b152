"""OpenID Connect ID tokens from token_issuer, in-process (the one-process mode's path):
claims, signature per algorithm, at_hash and c_hash, and what released claims cannot do.
(Over gRPC and against a running system: tests/integration/test_id_tokens.py.)

at_hash and c_hash are computed here from OpenID Connect Core §3.1.3.6 itself (the left
half of the SHA-256 of the ASCII value, base64url without padding), not with the
issuer's own helper, so a wrong helper cannot agree with itself."""
from __future__ import annotations

import base64
import hashlib
import os
import time

import jwt
import pytest

from inboundlib.events import TOKEN_ISSUED
from inboundlib.oauth.errors import InvalidRequest, ServerError, TemporarilyUnavailable
from services.token_issuer.api import IdTokenRequest, IssueRequest
from services.token_issuer.issuer import MAX_AUTHENTICATION_AGE_MS, TokenIssuer
from services.token_issuer.keys import KeyEncryptor
from tests.fakes import FakeBus, FakeOpaqueTokens, FakeSigningKeys

ISSUER = "https://inbound.example"
CLIENT = "web-app"
USER = "user-7f3a"


class Store(FakeSigningKeys, FakeOpaqueTokens):
    def __init__(self):
        FakeSigningKeys.__init__(self)
        FakeOpaqueTokens.__init__(self)


def sha256_left_half(value: str) -> str:
    """Core §3.1.3.6 for a SHA-256 algorithm (RS256, ES256)."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


async def started(**settings) -> tuple[TokenIssuer, Store, FakeBus]:
    store, bus = Store(), FakeBus()
    issuer = TokenIssuer(store, KeyEncryptor(os.urandom(32)), issuer=ISSUER, default_audience=ISSUER + "/api",
                         events=bus, **settings)
    await issuer.start()
    return issuer, store, bus


def request(id_token: IdTokenRequest | None, **overrides) -> IssueRequest:
    fields = dict(client_id=CLIENT, subject=USER, scopes=("openid", "profile"), format="jwt", lifetime_seconds=300,
                  grant_type="authorization_code", id_token=id_token)
    return IssueRequest(**{**fields, **overrides})


def verified(token: str, jwks: dict, alg: str) -> dict:
    """The claims, once the signature checks against the published key named by the header."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg
    key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == header["kid"])
    return jwt.decode(token, key.key, algorithms=[alg], audience=CLIENT, issuer=ISSUER)


async def test_an_id_token_is_signed_rs256_with_every_claim_and_the_access_token_stays_es256():
    issuer, _, _ = await started()
    auth_time = int(time.time()) - 30
    code = "ibc_" + "c" * 43
    issued = await issuer.issue(request(IdTokenRequest(
        nonce="n-0S6_WzA2Mj", auth_time=auth_time, sid="sid-1", code=code, at_hash=True,
        claims={"name": "Jane Doe", "email": "jane@example.com", "email_verified": True})))
    jwks = await issuer.jwks()
    header = jwt.get_unverified_header(issued.id_token)
    signers = {k.alg: k.kid for k in await issuer.list_keys() if k.signing}
    assert (header["typ"], header["kid"]) == ("JWT", signers["RS256"])
    claims = verified(issued.id_token, jwks, "RS256")
    assert claims == {
        "iss": ISSUER, "sub": USER, "aud": [CLIENT], "azp": CLIENT,
        "iat": issued.issued_at, "exp": issued.issued_at + 3600, "auth_time": auth_time,
        "nonce": "n-0S6_WzA2Mj", "sid": "sid-1",
        "at_hash": sha256_left_half(issued.access_token), "c_hash": sha256_left_half(code),
        "name": "Jane Doe", "email": "jane@example.com", "email_verified": True}
    # The access token: ES256, its own key, and the same issue time.
    access = jwt.get_unverified_header(issued.access_token)
    assert (access["alg"], access["typ"], access["kid"]) == ("ES256", "at+jwt", signers["ES256"])
    assert verified_access(issued.access_token, jwks)["iat"] == claims["iat"]


def verified_access(token: str, jwks: dict) -> dict:
    header = jwt.get_unverified_header(token)
    key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == header["kid"])
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=ISSUER + "/api", issuer=ISSUER)


async def test_optional_claims_are_left_out_when_not_asked_for():
    issuer, _, _ = await started()
    issued = await issuer.issue(request(IdTokenRequest()))
    claims = verified(issued.id_token, await issuer.jwks(), "RS256")
    assert not {"nonce", "sid", "at_hash", "c_hash", "auth_time"} & claims.keys()
    assert claims["sub"] == USER and claims["aud"] == [CLIENT]


async def test_without_an_id_token_request_there_is_no_id_token():
    issuer, _, bus = await started()
    issued = await issuer.issue(request(None))
    assert issued.id_token == ""
    assert bus.events(TOKEN_ISSUED)[-1].token_issued.id_token_issued is False


async def test_at_hash_is_of_the_opaque_access_token_when_the_access_token_is_opaque():
    issuer, store, _ = await started()
    issued = await issuer.issue(request(IdTokenRequest(at_hash=True), format="opaque"))
    assert issued.access_token.startswith("ibo_") and store.tokens  # stored as its hash
    claims = verified(issued.id_token, await issuer.jwks(), "RS256")
    assert claims["at_hash"] == sha256_left_half(issued.access_token)


async def test_released_claims_cannot_override_or_forge_registered_claims():
    issuer, _, _ = await started()
    forged = {"sub": "admin", "iss": "https://evil.example", "aud": "other-client", "azp": "other-client",
              "exp": 9_999_999_999, "iat": 1, "nonce": "forged", "sid": "forged", "at_hash": "forged",
              "auth_time": 1, "email": "jane@example.com"}
    issued = await issuer.issue(request(IdTokenRequest(claims=forged)))
    claims = verified(issued.id_token, await issuer.jwks(), "RS256")
    assert (claims["sub"], claims["iss"], claims["aud"], claims["azp"]) == (USER, ISSUER, [CLIENT], CLIENT)
    assert claims["iat"] == issued.issued_at and claims["exp"] == issued.issued_at + 3600
    # Not asked for in this token: absent, not the forged values.
    assert not {"nonce", "sid", "at_hash", "auth_time"} & claims.keys()
    assert claims["email"] == "jane@example.com"


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
async def test_the_id_token_algorithm_is_the_configured_one(alg):
    issuer, _, _ = await started(id_token_alg=alg)
    issued = await issuer.issue(request(IdTokenRequest(nonce="n", at_hash=True)))
    claims = verified(issued.id_token, await issuer.jwks(), alg)
    if alg == "ES256":
        assert claims["at_hash"] == sha256_left_half(issued.access_token)
    else:  # EdDSA with Ed25519: SHA-512's left half (the OpenID Foundation's errata)
        digest = hashlib.sha512(issued.access_token.encode("ascii")).digest()
        assert claims["at_hash"] == base64.urlsafe_b64encode(digest[:32]).decode().rstrip("=")
    assert jwt.get_unverified_header(issued.access_token)["alg"] == "ES256"


async def test_the_id_token_lifetime_is_the_configured_one_or_the_requests_within_bounds():
    issuer, _, _ = await started(id_token_lifetime=600)
    issued = await issuer.issue(request(IdTokenRequest()))
    claims = verified(issued.id_token, await issuer.jwks(), "RS256")
    assert claims["exp"] - claims["iat"] == 600
    issued = await issuer.issue(request(IdTokenRequest(lifetime_seconds=120)))
    claims = verified(issued.id_token, await issuer.jwks(), "RS256")
    assert claims["exp"] - claims["iat"] == 120
    for lifetime in (-1, 86_401):
        with pytest.raises(InvalidRequest):
            await issuer.issue(request(IdTokenRequest(lifetime_seconds=lifetime)))
    with pytest.raises(ValueError):
        TokenIssuer(None, KeyEncryptor(os.urandom(32)), issuer="i", default_audience="a", id_token_lifetime=0)


async def test_oversized_or_non_json_claims_are_refused_and_nothing_is_issued():
    issuer, store, bus = await started()
    before = len(bus.published)
    for claims in ({"name": "x" * 20_000}, {"updated_at": object()}):
        with pytest.raises(ServerError):
            await issuer.issue(request(IdTokenRequest(claims=claims), format="opaque", refresh_token_lifetime=60))
    assert not store.tokens and len(bus.published) == before


async def test_no_active_id_token_key_refuses_before_anything_is_stored():
    issuer, store, _ = await started()
    issuer.keyring.keys = [k for k in issuer.keyring.keys if k.alg != "RS256"]  # as if none had activated
    with pytest.raises(TemporarilyUnavailable):
        await issuer.issue(request(IdTokenRequest(), format="opaque", refresh_token_lifetime=60))
    assert not store.tokens


async def test_the_audit_event_says_an_id_token_was_issued_and_never_holds_it():
    issuer, _, bus = await started()
    issued = await issuer.issue(request(IdTokenRequest(nonce="nonce-value", code="ibc_code", at_hash=True)))
    event = bus.events(TOKEN_ISSUED)[-1]
    assert event.token_issued.id_token_issued is True
    serialized = event.SerializeToString()
    for secret in (issued.id_token, issued.access_token, "ibc_code"):
        assert secret.encode() not in serialized
        for part in secret.split("."):  # no part of a JWT (its signature, say) either
            assert len(part) < 8 or part.encode() not in serialized


async def test_tokens_from_a_code_created_ten_minutes_ago_are_stamped_with_its_creation():
    """A code lives up to 600 s; the access token it buys carries its creation (authenticated_at_ms,
    so a cut-off recorded after the sign-in covers it). The ID token's iat is the time it is
    issued (Core §2): a relying party bounding iat's age must not refuse a late exchange.
    Older than MAX_AUTHENTICATION_AGE_MS is a bug and refused (tests/unit/test_issuer_limits.py)."""
    assert 600_000 < MAX_AUTHENTICATION_AGE_MS <= 660_000
    issuer, _, _ = await started()
    created_ms = int(time.time() * 1000) - 600_000
    # Signed by the keys active now (created at this start, after the code): not refused for want of
    # a key active at the stamp.
    before = int(time.time())
    issued = await issuer.issue(request(IdTokenRequest(at_hash=True), authenticated_at_ms=created_ms,
                                        lifetime_seconds=1800))
    claims = verified(issued.id_token, await issuer.jwks(), "RS256")
    assert issued.issued_at == created_ms // 1000
    assert claims["iat"] >= before and claims["exp"] == claims["iat"] + 3600
    assert verified_access(issued.access_token, await issuer.jwks())["iat"] == created_ms // 1000

"""The authorization code grant's rules (RFC 6749 §4.1.3, RFC 7636 §4.6, OpenID Connect
Core §3.1.3) with in-memory fakes (no gRPC, no DB), through the grant runner as in
production (client authentication and the grant-type check are the runner's). The same
paths run end to end over HTTP in tests/integration/test_code_exchange_http.py."""
from __future__ import annotations

import dataclasses
import logging
import uuid

import grpc
import pytest

from inboundlib.events import TOKEN_DENIED
from inboundlib.grants.api import TokenRequest
from inboundlib.grants.runner import GrantRunner
from inboundlib.oauth import pkce
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, NONE, ClientCredentials, hash_client_secret
from inboundlib.oauth.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    ServerError,
    TemporarilyUnavailable,
    UnauthorizedClient,
)
from services.authorization_code import codes
from services.authorization_code.grant import REFUSED, AuthorizationCodeGrant
from services.client_registry.api import (
    ITEM_INTERNAL,
    ITEM_UNAVAILABLE,
    AuthorizationCodeRecord,
    ClientRecord,
    ItemError,
    UserRecord,
)
from services.token_issuer.api import IssuedToken, IssueRequest
from tests.fakes import FakeAuthorizationCodes, FakeBus, FakeClients, FakeIssuer, FakeUserDirectory, client_record

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-s3cret-s3"
REDIRECT = "https://app.example/callback"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 Appendix B
CHALLENGE = pkce.s256(VERIFIER)
SIGNED_IN_MS = 1_765_000_000_987
ALICE = UserRecord(id="0b7e1d5c-6a3e-4c55-9d0f-6f7e0e2c1a11", username="alice", email="alice@example.com",
                   display_name="Alice Liddell", given_name="Alice", family_name="Liddell", email_verified=True,
                   active=True, roles=(), updated_at=1_700_000_000)


def web(**overrides) -> ClientRecord:
    """A confidential web app, allowed refresh tokens."""
    return client_record(**{"client_id": "web", "secret_hash": hash_client_secret(SECRET),
                            "grant_types": ("authorization_code", "refresh_token"),
                            "scopes": ("openid", "profile", "email", "api.read"), "redirect_uris": (REDIRECT,),
                            "refresh_token_lifetime": 7200, "refresh_token_absolute_lifetime": 86400, **overrides})


def spa(**overrides) -> ClientRecord:
    """A public app (single-page or native): client_id only, PKCE required."""
    return web(**{"client_id": "spa", "public": True, "secret_hash": "", "grant_types": ("authorization_code",),
                  **overrides})


class IdTokenIssuer(FakeIssuer):
    """The issuer port answering a refresh token and an ID token when asked for them (as token_issuer does)."""

    async def issue(self, request: IssueRequest) -> IssuedToken:
        token = await super().issue(request)
        if request.refresh_token_lifetime > 0:
            token = dataclasses.replace(token, refresh_token=f"refresh-{token.jti}")
        if request.id_token is not None:
            token = dataclasses.replace(token, id_token=f"id-{token.jti}")
        return token


@dataclasses.dataclass
class World:
    codes: FakeAuthorizationCodes
    users: FakeUserDirectory
    issuer: IdTokenIssuer
    clients: FakeClients
    bus: FakeBus

    @property
    def runner(self) -> GrantRunner:
        return GrantRunner(AuthorizationCodeGrant(Registry(self.codes, self.users), self.issuer), self.clients,
                           self.bus)

    async def mint(self, client: str = "web", *, scopes=("openid", "profile"), challenge: str = CHALLENGE,
                   redirect_uri: str = REDIRECT, nonce: str = "n-0S6_WzA2Mj", user: UserRecord = ALICE,
                   lifetime: int = 60) -> tuple[str, AuthorizationCodeRecord]:
        """A code as the authorize side mints it (codes.py), stored in the fake registry."""
        code = codes.new_code()
        record = await self.codes.create_authorization_code(AuthorizationCodeRecord(
            code_hash=codes.code_hash(code), client_id=client, redirect_uri=redirect_uri, scopes=tuple(scopes),
            user_id=user.id, username=user.username, sid="sid-1", auth_time_ms=SIGNED_IN_MS, nonce=nonce,
            code_challenge=challenge, code_challenge_method=pkce.S256 if challenge else "",
            grant_id=str(uuid.uuid4()), created_at_ms=SIGNED_IN_MS + 1500), lifetime)
        return code, record


class Registry:
    """The registry's two ports the grant uses, from their fakes."""

    def __init__(self, codes: FakeAuthorizationCodes, users: FakeUserDirectory):
        self.consume_authorization_codes = codes.consume_authorization_codes
        self.get_user = users.get_user


@pytest.fixture
def world() -> World:
    return World(FakeAuthorizationCodes(), FakeUserDirectory(ALICE), IdTokenIssuer(), FakeClients(web(), spa()),
                 FakeBus())


def exchange(code: str | None, *, client: str = "web", secret: str | None = SECRET, redirect_uri: str | None = REDIRECT,
             verifier: str | None = VERIFIER, **extra) -> TokenRequest:
    params = {"code": code, "redirect_uri": redirect_uri, "code_verifier": verifier, **extra}
    creds = ClientCredentials(CLIENT_SECRET_BASIC, client, secret) if secret else ClientCredentials(NONE, client)
    return TokenRequest(grant_type="authorization_code", client=creds, request_id="req-1",
                        params={name: (value,) for name, value in params.items() if value is not None})


async def refused(world: World, request: TokenRequest, error=InvalidGrant) -> str:
    """Refused with `error`, nothing issued; the private detail."""
    with pytest.raises(error) as caught:
        await world.runner.handle(request)
    assert world.issuer.requests == [], "a refused exchange issues nothing"
    if error is InvalidGrant:
        assert caught.value.description == REFUSED, "every refusal of the code reads the same"
    return caught.value.detail


# --- what a good exchange issues -------------------------------------------------------------------

async def test_a_code_is_exchanged_for_the_users_tokens_under_the_codes_grant(world):
    code, record = await world.mint(scopes=("openid", "profile", "api.read"))
    response = await world.runner.handle(exchange(code))
    assert response.to_json() == {"access_token": "token-jti-1", "token_type": "Bearer", "expires_in": 900,
                                  "scope": "openid profile api.read", "refresh_token": "refresh-jti-1",
                                  "id_token": "id-jti-1"}
    [issued] = world.issuer.requests
    assert (issued.client_id, issued.subject, issued.username) == ("web", ALICE.id, "alice")
    assert issued.scopes == ("openid", "profile", "api.read")
    assert (issued.format, issued.lifetime_seconds, issued.grant_type) == ("jwt", 900, "authorization_code")
    assert issued.grant_id == record.grant_id, "a reuse of the code, or a withdrawn consent, revokes by it"
    assert world.users.lookups == [ALICE.id]


async def test_the_tokens_are_stamped_as_of_the_codes_minting(world):
    """A password change or disable recorded after the code was minted covers the tokens,
    however late they are issued (token_issuer accepts such a stamp up to 660 s old)."""
    code, record = await world.mint()
    await world.runner.handle(exchange(code))
    assert world.issuer.requests[0].authenticated_at_ms == record.created_at_ms == SIGNED_IN_MS + 1500


async def test_an_id_token_with_the_codes_nonce_auth_time_sid_and_at_hash(world):
    """Core §3.1.3.3, §3.1.3.6: nonce echoed unchanged, auth_time in seconds, at_hash of the access token."""
    code, _ = await world.mint(scopes=("openid",), nonce="a-nonce/with+odd=chars")
    await world.runner.handle(exchange(code))
    id_token = world.issuer.requests[0].id_token
    assert (id_token.nonce, id_token.auth_time, id_token.sid) == ("a-nonce/with+odd=chars", SIGNED_IN_MS // 1000,
                                                                  "sid-1")
    assert id_token.at_hash is True
    assert id_token.code == "", "c_hash is for codes in a front-channel response, not the token endpoint's"
    assert id_token.claims == {}, "openid alone releases no claims beyond sub"


async def test_an_openid_exchange_the_issuer_answers_without_an_id_token_is_a_server_error(world):
    """A token_issuer replica from before ID tokens (a rolling upgrade) ignores IssueRequest.id_token
    and answers the rest: the relying party gets an error, not a 200 without its ID token."""
    code, _ = await world.mint(scopes=("openid",))
    world.issuer = FakeIssuer()  # answers access (and refresh) tokens only, as such a replica does
    with pytest.raises(ServerError) as caught:
        await world.runner.handle(exchange(code))
    assert "no ID token" in caught.value.detail


async def test_no_id_token_without_the_openid_scope(world):
    code, _ = await world.mint(scopes=("profile", "api.read"))
    response = await world.runner.handle(exchange(code))
    assert world.issuer.requests[0].id_token is None
    assert "id_token" not in response.to_json()


@pytest.mark.parametrize("scopes,claims", [
    (("openid",), {}),
    (("openid", "profile"), {"name": "Alice Liddell", "given_name": "Alice", "family_name": "Liddell",
                             "preferred_username": "alice", "updated_at": 1_700_000_000}),
    (("openid", "email"), {"email": "alice@example.com", "email_verified": True}),
])
async def test_the_id_token_releases_claims_by_scope(world, scopes, claims):
    code, _ = await world.mint(scopes=scopes)
    await world.runner.handle(exchange(code))
    assert world.issuer.requests[0].id_token.claims == claims


async def test_a_refresh_token_only_for_a_client_allowed_the_refresh_token_grant(world):
    world.clients.put(web(grant_types=("authorization_code",)))
    code, _ = await world.mint()
    response = await world.runner.handle(exchange(code))
    assert "refresh_token" not in response.to_json()
    assert (world.issuer.requests[0].refresh_token_lifetime,
            world.issuer.requests[0].refresh_token_absolute_lifetime) == (0, 0)

    world.clients.put(web())
    code, _ = await world.mint()
    response = await world.runner.handle(exchange(code))
    assert response.refresh_token == "refresh-jti-2"
    assert (world.issuer.requests[1].refresh_token_lifetime,
            world.issuer.requests[1].refresh_token_absolute_lifetime) == (7200, 86400)


async def test_a_public_client_sends_only_its_client_id(world):
    """§4.1.3: a public client cannot authenticate; it names itself, and PKCE binds the code to it."""
    code, _ = await world.mint("spa")
    response = await world.runner.handle(exchange(code, client="spa", secret=None))
    assert response.access_token == "token-jti-1"
    assert world.issuer.requests[0].client_id == "spa"


async def test_the_clients_lost_scopes_are_not_issued(world):
    """The client lost `profile` after the code was minted: the tokens carry what it may still have."""
    code, _ = await world.mint(scopes=("openid", "profile", "api.read"))
    world.clients.put(web(scopes=("openid", "api.read")))
    response = await world.runner.handle(exchange(code))
    assert response.scope == "openid api.read"
    assert world.issuer.requests[0].scopes == ("openid", "api.read")
    assert world.issuer.requests[0].id_token.claims == {}


# --- the client ------------------------------------------------------------------------------------

async def test_a_confidential_client_must_authenticate(world):
    code, _ = await world.mint()
    await refused(world, exchange(code, secret=None), InvalidClient)
    await refused(world, exchange(code, secret="wrong"), InvalidClient)
    assert world.codes.consumed == [], "an unauthenticated request never touches the code"


async def test_a_client_without_the_grant_is_unauthorized(world):
    world.clients.put(web(grant_types=("client_credentials",)))
    code, _ = await world.mint()
    await refused(world, exchange(code), UnauthorizedClient)
    assert world.codes.consumed == []


async def test_another_clients_code_is_refused_and_left_for_its_own_client(world):
    world.clients.put(web(client_id="other"))
    code, _ = await world.mint("web")
    detail = await refused(world, exchange(code, client="other"))
    assert "another client" in detail
    # Not consumed: the client it was issued to still redeems it.
    response = await world.runner.handle(exchange(code))
    assert response.access_token == "token-jti-1"


async def test_another_clients_code_is_refused_even_if_the_registry_hands_it_over():
    """The grant checks the record's client itself, not only the registry's lookup."""
    class CarelessCodes(FakeAuthorizationCodes):
        async def consume_authorization_codes(self, items):
            return [self.codes[item.code_hash] for item in items]

    world = World(CarelessCodes(), FakeUserDirectory(ALICE), IdTokenIssuer(),
                  FakeClients(web(), web(client_id="other")), FakeBus())
    code, _ = await world.mint("web")
    assert "another client" in await refused(world, exchange(code, client="other"))


# --- the code ---------------------------------------------------------------------------------------

async def test_a_missing_code_is_an_invalid_request(world):
    await refused(world, exchange(None), InvalidRequest)
    await refused(world, exchange(""), InvalidRequest)
    assert world.codes.consumed == []


@pytest.mark.parametrize("value", ["not-a-code", "ibo_" + "a" * 43, codes.CODE_PREFIX + "a" * 200])
async def test_a_value_that_is_not_our_code_is_refused_without_a_lookup(world, value):
    assert "shape" in await refused(world, exchange(value))
    assert world.codes.consumed == []


async def test_an_unknown_code_is_refused(world):
    await world.mint()
    assert "unknown" in await refused(world, exchange(codes.new_code()))


async def test_an_expired_code_is_refused(world):
    code, _ = await world.mint(lifetime=60)
    world.codes.now += 61
    assert "expired" in await refused(world, exchange(code))


async def test_a_reused_code_is_refused_and_its_grant_revoked(world):
    """§4.1.2: the second use is refused; the registry revokes what the first use got (its grant id)."""
    code, record = await world.mint()
    await world.runner.handle(exchange(code))
    with pytest.raises(InvalidGrant) as caught:
        await world.runner.handle(exchange(code))
    assert caught.value.description == REFUSED
    assert f"grant {record.grant_id} revoked" in caught.value.detail
    assert len(world.issuer.requests) == 1, "the second use issued nothing"
    assert world.codes.revoked_grants == {record.grant_id}
    assert world.codes.consumed[0].code_hash == world.codes.consumed[1].code_hash == codes.code_hash(code)


async def test_the_code_is_consumed_by_a_failed_exchange_too(world):
    """One guess per code: a wrong verifier burns it, and the right one after is a reuse."""
    code, _ = await world.mint()
    await refused(world, exchange(code, verifier="x" * 43))
    detail = await refused(world, exchange(code))
    assert "used before" in detail


# --- the redirect URI -------------------------------------------------------------------------------

@pytest.mark.parametrize("sent", [
    REDIRECT + "/", REDIRECT + "/extra", REDIRECT.upper(), REDIRECT + "?x=1", "https://app.example:443/callback",
    "https://evil.example/callback",
])
async def test_a_redirect_uri_other_than_the_authorization_requests_is_refused(world, sent):
    """§4.1.3: identical, the very string: no normalising of case, port, slash or query."""
    code, _ = await world.mint()
    assert "redirect_uri differs" in await refused(world, exchange(code, redirect_uri=sent))


@pytest.mark.parametrize("sent", [None, ""])
async def test_a_missing_redirect_uri_is_refused(world, sent):
    """Every authorization request here carries a redirect_uri, so every exchange must repeat it."""
    code, _ = await world.mint()
    assert "redirect_uri missing" in await refused(world, exchange(code, redirect_uri=sent))


# --- PKCE ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("verifier", [
    "a" * 43,  # well-formed, another verifier
    VERIFIER[:-1] + "l",  # one character off
    CHALLENGE,  # the challenge itself (the `plain` confusion)
    "short",  # malformed
])
async def test_a_wrong_verifier_is_refused(world, verifier):
    code, _ = await world.mint()
    assert "code_verifier" in await refused(world, exchange(code, verifier=verifier))


@pytest.mark.parametrize("client,secret", [("web", SECRET), ("spa", None)])
async def test_a_missing_verifier_is_refused_when_the_code_has_a_challenge(world, client, secret):
    code, _ = await world.mint(client)
    assert "code_verifier missing" in await refused(world, exchange(code, client=client, secret=secret,
                                                                    verifier=None))


async def test_a_verifier_for_a_code_without_a_challenge_is_refused(world):
    """RFC 9700 §4.8.2: a verifier sent for a code minted without a challenge is a downgrade."""
    code, _ = await world.mint(challenge="")
    assert "without a challenge" in await refused(world, exchange(code))


async def test_a_confidential_client_may_do_without_pkce_unless_required(world):
    code, _ = await world.mint(challenge="")
    response = await world.runner.handle(exchange(code, verifier=None))
    assert response.access_token == "token-jti-1"


@pytest.mark.parametrize("client,secret,record", [("spa", None, spa()), ("web", SECRET, web(pkce_required=True))])
async def test_a_code_without_a_challenge_is_refused_for_a_client_that_needs_pkce(world, client, secret, record):
    world.clients.put(record)
    code, _ = await world.mint(client, challenge="")
    assert "PKCE" in await refused(world, exchange(code, client=client, secret=secret, verifier=None))


# --- the user --------------------------------------------------------------------------------------

async def test_a_disabled_users_code_is_refused(world):
    code, _ = await world.mint()
    world.users.put(dataclasses.replace(ALICE, active=False))
    assert "disabled" in await refused(world, exchange(code))


async def test_a_code_from_a_sign_in_before_a_password_change_is_refused(world):
    """The tokens would be born revoked by the change's cut-off; the ID token would not be."""
    code, record = await world.mint()
    world.users.put(dataclasses.replace(ALICE, password_changed_at=record.auth_time_ms // 1000 + 1))
    assert "changed password" in await refused(world, exchange(code))
    # A password set before the sign-in (in its very second, too) is no reason.
    code, record = await world.mint()
    world.users.put(dataclasses.replace(ALICE, password_changed_at=record.auth_time_ms // 1000))
    assert (await world.runner.handle(exchange(code))).id_token


async def test_a_deleted_users_code_is_refused(world):
    code, _ = await world.mint()
    del world.users.users[ALICE.id]
    assert "no longer exists" in await refused(world, exchange(code))


# --- failures, and secrecy ---------------------------------------------------------------------------

class Unavailable(grpc.aio.AioRpcError):
    def __init__(self):
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "registry down")


@pytest.mark.parametrize("item,error", [(ItemError(ITEM_UNAVAILABLE, "busy"), TemporarilyUnavailable),
                                        (ItemError(ITEM_INTERNAL, "boom"), ServerError)])
async def test_a_registry_item_error_is_no_invalid_grant(world, item, error):
    async def failing(items):
        return [item for _ in items]
    world.codes.consume_authorization_codes = failing
    code, _ = await world.mint()
    await refused(world, exchange(code), error)


async def test_an_unreachable_registry_is_temporarily_unavailable(world):
    code, _ = await world.mint()
    world.codes.down = Unavailable()
    await refused(world, exchange(code), TemporarilyUnavailable)


async def test_the_code_and_verifier_are_never_logged_or_audited(world, caplog):
    caplog.set_level(logging.DEBUG)
    code, _ = await world.mint()
    await refused(world, exchange(code, verifier="V" * 43))
    await refused(world, exchange(code))
    [first, second] = world.bus.events(TOKEN_DENIED)
    for text in [r.getMessage() + repr(r.__dict__) for r in caplog.records] + [str(first), str(second)]:
        for secret in (code, code[len(codes.CODE_PREFIX):], VERIFIER, "V" * 43):
            assert secret not in text
    assert first.token_denied.error == "invalid_grant" and first.token_denied.client_id == "web"


def test_codes_are_prefixed_random_and_stored_by_sha256():
    one, two = codes.new_code(), codes.new_code()
    assert one != two and one.startswith("ibc_") and len(one) == 4 + 43
    assert codes.code_hash(one) == __import__("hashlib").sha256(one.encode()).digest()
    assert codes.is_code_shaped(one) and not codes.is_code_shaped("ibr_" + one[4:])

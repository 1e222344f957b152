"""The UserInfo decision (OpenID Connect Core §5.3, RFC 6750 §3.1 errors) with in-memory
fakes: introspection answers as token_issuer's would, users as the registry's directory.
The same runs over HTTP in tests/integration/test_code_exchange_http.py."""
from __future__ import annotations

import dataclasses
import time

import pytest

from inboundlib.oauth.errors import InsufficientScope, InvalidToken
from services.authorization_code.userinfo import UserInfo
from services.client_registry.api import UserRecord
from services.token_issuer.api import TokenInfo
from tests.fakes import FakeTokens, FakeUserDirectory

ALICE = UserRecord(id="0b7e1d5c-6a3e-4c55-9d0f-6f7e0e2c1a11", username="alice", email="alice@example.com",
                   display_name="Alice Liddell", given_name="Alice", family_name="Liddell", email_verified=False,
                   active=True, roles=(), locale="en-GB", updated_at=1_700_000_000)


def info(scope: str = "openid", **overrides) -> TokenInfo:
    """An active access token of alice's, as introspection answers it."""
    return dataclasses.replace(TokenInfo(active=True, scope=scope, client_id="web", sub=ALICE.id, username="alice",
                                         token_type="Bearer", exp=int(time.time()) + 600, iat=int(time.time())),
                               **overrides)


def userinfo(token_info: TokenInfo | None = None, *users: UserRecord) -> tuple[UserInfo, FakeTokens,
                                                                                FakeUserDirectory]:
    tokens = FakeTokens(infos={"the-token": token_info} if token_info else {})
    directory = FakeUserDirectory(*(users or (ALICE,)))
    return UserInfo(tokens, directory), tokens, directory


@pytest.mark.parametrize("scope,claims", [
    ("openid", {}),
    ("openid profile", {"name": "Alice Liddell", "given_name": "Alice", "family_name": "Liddell",
                        "preferred_username": "alice", "locale": "en-GB", "updated_at": 1_700_000_000}),
    ("openid email", {"email": "alice@example.com", "email_verified": False}),
    ("openid email api.read", {"email": "alice@example.com", "email_verified": False}),
])
async def test_sub_and_the_claims_the_tokens_scopes_release(scope, claims):
    service, tokens, directory = userinfo(info(scope))
    assert await service.claims("the-token", request_id="r1") == {"sub": ALICE.id, **claims}
    assert tokens.introspected == [("the-token", None)], "asked as an internal service, no client credentials"
    assert directory.lookups == [ALICE.id]


async def test_no_token_is_invalid_without_asking():
    service, tokens, _ = userinfo(info())
    with pytest.raises(InvalidToken):
        await service.claims("")
    assert tokens.introspected == []


async def test_an_inactive_token_is_invalid():
    """Unknown, expired, revoked: introspection says inactive, and nothing of the user is read
    (however much else an answer carried: `active` alone decides, RFC 7662 §2.2)."""
    for answer in (None, info("openid profile", active=False)):
        service, _, directory = userinfo(answer)
        with pytest.raises(InvalidToken):
            await service.claims("the-token")
        assert directory.lookups == []


async def test_a_refresh_token_is_no_access_token():
    """Introspection knows refresh tokens (active, token_type refresh_token); they are never bearer credentials."""
    service, _, directory = userinfo(info(token_type="refresh_token"))
    with pytest.raises(InvalidToken):
        await service.claims("the-token")
    assert directory.lookups == []


async def test_a_client_credentials_token_names_no_user():
    """sub is the client itself: no end-user to describe, whatever its scope (invalid_token, see userinfo.py)."""
    service, _, directory = userinfo(info(sub="web", username=""))
    with pytest.raises(InvalidToken) as caught:
        await service.claims("the-token")
    assert "names no user" in caught.value.detail
    assert directory.lookups == []


async def test_a_token_without_openid_has_insufficient_scope():
    service, _, directory = userinfo(info("profile email"))
    with pytest.raises(InsufficientScope):
        await service.claims("the-token")
    assert directory.lookups == []


async def test_a_disabled_users_token_is_invalid():
    service, _, _ = userinfo(info("openid profile"), dataclasses.replace(ALICE, active=False))
    with pytest.raises(InvalidToken) as caught:
        await service.claims("the-token")
    assert "disabled" in caught.value.detail


async def test_a_deleted_users_token_is_invalid():
    service, _, directory = userinfo(info("openid profile"), ALICE)
    del directory.users[ALICE.id]
    with pytest.raises(InvalidToken) as caught:
        await service.claims("the-token")
    assert "no longer exists" in caught.value.detail

"""Issue-time limits of token_issuer, checked before any I/O."""
from __future__ import annotations

import os

import pytest

from inboundlib.oauth.errors import InvalidRequest
from services.token_issuer.api import IssueRequest
from services.token_issuer.issuer import MAX_ACCESS_TOKEN_LIFETIME, TokenIssuer
from services.token_issuer.keys import KeyEncryptor


@pytest.mark.parametrize("lifetime", [0, -1, MAX_ACCESS_TOKEN_LIFETIME + 1, 10 * 365 * 24 * 3600])
async def test_access_token_lifetime_outside_one_second_to_one_day_is_refused(lifetime):
    issuer = TokenIssuer(registry=None, encryptor=KeyEncryptor(os.urandom(32)), issuer="i", default_audience="a")
    with pytest.raises(InvalidRequest):
        await issuer.issue(IssueRequest(client_id="c", subject="c", scopes=(), format="jwt",
                                        lifetime_seconds=lifetime))


async def test_a_sign_in_checked_too_long_ago_is_not_stamped_on_tokens():
    """Tokens are stamped as of the credentials' check (IssueRequest.authenticated_at_ms): a
    password sign-in's is milliseconds old, an authorization code's creation at most 600 s
    (the code's longest life). Older than MAX_AUTHENTICATION_AGE_MS (660 s) is a bug, not a
    reason to backdate a token. (Ten minutes old is accepted:
    tests/unit/test_id_token_issuing.py.)"""
    import time

    from inboundlib.oauth.errors import ServerError
    from services.token_issuer.issuer import MAX_AUTHENTICATION_AGE_MS

    issuer = TokenIssuer(registry=None, encryptor=KeyEncryptor(os.urandom(32)), issuer="i", default_audience="a")
    with pytest.raises(ServerError, match="too long to stamp"):
        await issuer.issue(IssueRequest(
            client_id="c", subject="u", scopes=(), format="jwt", lifetime_seconds=60,
            authenticated_at_ms=int(time.time() * 1000) - MAX_AUTHENTICATION_AGE_MS - 1000))

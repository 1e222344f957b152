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

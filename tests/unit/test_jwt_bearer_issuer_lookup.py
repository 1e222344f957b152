"""The JWT bearer grant looks integrations up by the assertion's unverified `iss`: an iss that
no registered issuer can be (a control character, a lone surrogate, over-long) is refused as
invalid_grant before any lookup. It reached the registry and failed there (Postgres text holds
no NUL; protobuf encodes no lone surrogate): a server_error any client of the grant could cause."""
from __future__ import annotations

import base64
import json

import pytest

from inboundlib.grants.api import RequestContext, TokenRequest
from inboundlib.jose.validator import JwtValidator
from inboundlib.oauth.errors import InvalidGrant
from services.client_registry.api import GRANT_JWT_BEARER
from services.jwt_bearer.client_assertions import AssertionSettings
from services.jwt_bearer.grant import ASSERTION_REFUSED, Integrations, JwtBearerGrant
from tests.fakes import FakeIssuer, client_record


class StrictSource:
    """An integration store that fails on text Postgres or protobuf cannot carry, as the registry does."""

    def __init__(self):
        self.lookups: list[str] = []

    async def find_integrations(self, client_id: str, issuer: str):
        self.lookups.append(issuer)
        issuer.encode("utf-8")  # a lone surrogate: UnicodeEncodeError
        if "\x00" in issuer:
            raise RuntimeError("invalid byte sequence for encoding UTF8: 0x00")
        return []

    async def list_integrations(self):
        return []

    async def get_integration_secrets(self, ids):
        return [b"" for _ in ids]


def unsigned_assertion(iss: str) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256'})}.{part({'iss': iss, 'sub': 's', 'aud': 'a', 'exp': 2_000_000_000})}.c2ln"


@pytest.mark.parametrize("iss", ["https://idp.example\x00/", "\ud800", "https://idp.example/\n", "h" * 2001])
async def test_an_iss_no_issuer_can_be_is_refused_before_the_lookup(iss):
    source = StrictSource()
    grant = JwtBearerGrant(Integrations(source, fetcher=None, opener=None), JwtValidator(), users=None,
                           issuer=FakeIssuer(), settings=AssertionSettings(issuer="https://auth.example.com"))
    request = TokenRequest(grant_type=GRANT_JWT_BEARER, client=None, params={"assertion": (unsigned_assertion(iss),)},
                           context=RequestContext())
    with pytest.raises(InvalidGrant) as caught:
        await grant.handle(request, client_record(grant_types=(GRANT_JWT_BEARER,)))
    assert caught.value.description == ASSERTION_REFUSED
    assert source.lookups == []


async def test_a_plain_unknown_iss_is_still_looked_up():
    source = StrictSource()
    grant = JwtBearerGrant(Integrations(source, fetcher=None, opener=None), JwtValidator(), users=None,
                           issuer=FakeIssuer(), settings=AssertionSettings(issuer="https://auth.example.com"))
    request = TokenRequest(grant_type=GRANT_JWT_BEARER, client=None,
                           params={"assertion": (unsigned_assertion("https://idp.example/é"),)}, context=RequestContext())
    with pytest.raises(InvalidGrant):
        await grant.handle(request, client_record(grant_types=(GRANT_JWT_BEARER,)))
    assert source.lookups == ["https://idp.example/é"]


async def test_an_integration_whose_stored_keys_do_not_parse_is_skipped_not_a_server_error():
    """A record written around the registry's checks (a malformed inline JWKS): KeySet raises
    ValueError, which must leave the integration unusable (invalid_grant), as InvalidJwt does."""
    from services.client_registry.api import JwtBearerIntegration

    class Source(StrictSource):
        async def find_integrations(self, client_id, issuer):
            return [JwtBearerIntegration(id="i1", name="i1", client_id=client_id, issuer=issuer, jwks="not json")]

    grant = JwtBearerGrant(Integrations(Source(), fetcher=None, opener=None), JwtValidator(), users=None,
                           issuer=FakeIssuer(), settings=AssertionSettings(issuer="https://auth.example.com"))
    request = TokenRequest(grant_type=GRANT_JWT_BEARER, client=None,
                           params={"assertion": (unsigned_assertion("https://idp.example"),)}, context=RequestContext())
    with pytest.raises(InvalidGrant) as caught:
        await grant.handle(request, client_record(grant_types=(GRANT_JWT_BEARER,)))
    assert "no active integration" in caught.value.detail

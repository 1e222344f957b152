"""Errors rendered per endpoint (services/edge/errors.py): the status and the
challenge are the endpoint's decision, not the error class's."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from inboundlib.oauth.errors import (
    AccessDenied,
    InsufficientScope,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidToken,
    ServerError,
    TemporarilyUnavailable,
)
from services.edge.errors import BearerErrors, BodyTooLarge, PageErrors, RedirectErrors, TokenEndpointErrors


@pytest.mark.parametrize("error,status", [
    (InvalidRequest(), 400), (InvalidGrant(), 400), (InvalidClient(), 401), (InvalidToken(), 400),
    (ServerError(), 500), (TemporarilyUnavailable(), 503),
])
def test_token_endpoint_statuses(error, status):
    response = TokenEndpointErrors().render(error)
    assert response.status_code == status
    assert json.loads(response.body) == error.to_json()
    assert response.headers["cache-control"] == "no-store"


def test_token_endpoint_401_carries_a_basic_challenge():
    response = TokenEndpointErrors().render(InvalidClient())
    assert response.headers["www-authenticate"].startswith("Basic realm=")


def test_token_endpoint_503_says_when_to_retry():
    assert TokenEndpointErrors().render(TemporarilyUnavailable()).headers["retry-after"] == "1"


@pytest.mark.parametrize("error,status", [
    (InvalidRequest(), 400), (InvalidToken(), 401), (InsufficientScope(), 403), (ServerError(), 500),
])
def test_bearer_statuses_and_challenge(error, status):
    response = BearerErrors().render(error, scope="api.read" if status == 403 else "")
    assert response.status_code == status
    if status < 500:
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="inbound"')
        assert f'error="{error.code}"' in challenge
        if status == 403:
            assert 'scope="api.read"' in challenge


def test_bearer_challenge_without_a_token_has_no_error_code():
    response = BearerErrors().missing_token()
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="inbound"'


def test_bearer_challenge_values_cannot_break_out_of_their_quotes():
    challenge = BearerErrors().challenge(InvalidToken('bad" , error="x'))
    assert challenge.count('"') == 6


def test_redirect_carries_error_state_and_iss_and_keeps_the_uris_query():
    response = RedirectErrors("https://as.example").render(AccessDenied(), "https://app.example/cb?x=1",
                                                           state="s 1")
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    query = parse_qs(location.query)
    assert query == {"x": ["1"], "error": ["access_denied"], "error_description": [AccessDenied().description],
                     "state": ["s 1"], "iss": ["https://as.example"]}


def test_redirect_in_the_fragment_for_the_implicit_grant():
    response = RedirectErrors("https://as.example").render(AccessDenied(), "https://app.example/cb", fragment=True)
    location = urlsplit(response.headers["location"])
    assert location.query == "" and parse_qs(location.fragment)["error"] == ["access_denied"]


def test_error_page_escapes_and_forbids_scripts():
    response = PageErrors().render(InvalidRequest("<script>alert(1)</script>"))
    assert response.status_code == 400
    assert b"<script>" not in response.body and b"&lt;script&gt;" in response.body
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert PageErrors().render(AccessDenied()).status_code == 403


def test_http_errors_keep_their_own_status_in_every_shape():
    for renderer in (TokenEndpointErrors(), BearerErrors(), PageErrors()):
        assert renderer.render(BodyTooLarge()).status_code == 413

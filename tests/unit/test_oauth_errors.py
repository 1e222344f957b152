"""inboundlib.oauth.errors: one class per registered error code (RFC 6749 §5.2, RFC 6750 §3.1, RFC 7009)."""
from __future__ import annotations

import pytest

from inboundlib.oauth import errors
from inboundlib.oauth.errors import (
    BY_CODE,
    AccessDenied,
    InsufficientScope,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidToken,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedTokenType,
    from_code,
)

# (class, registered code, HTTP status the edge renders at the endpoint where the code
# belongs: services/edge/errors.py decides, per endpoint; tests/unit/test_edge_errors.py)
TABLE = [
    (InvalidRequest, "invalid_request", 400),
    (InvalidClient, "invalid_client", 401),
    (InvalidGrant, "invalid_grant", 400),
    (UnauthorizedClient, "unauthorized_client", 400),
    (UnsupportedGrantType, "unsupported_grant_type", 400),
    (InvalidScope, "invalid_scope", 400),
    (AccessDenied, "access_denied", 403),
    (UnsupportedTokenType, "unsupported_token_type", 400),
    (InvalidToken, "invalid_token", 401),
    (InsufficientScope, "insufficient_scope", 403),
    (ServerError, "server_error", 500),
    (TemporarilyUnavailable, "temporarily_unavailable", 503),
    # The authorization endpoint's (RFC 6749 §4.1.2.1, OpenID Connect Core §3.1.2.6): sent to the
    # client's redirect URI, never as a status of ours; 400 where an error page shows one.
    (errors.UnsupportedResponseType, "unsupported_response_type", 400),
    (errors.InteractionRequired, "interaction_required", 400),
    (errors.LoginRequired, "login_required", 400),
    (errors.ConsentRequired, "consent_required", 400),
    (errors.RequestNotSupported, "request_not_supported", 400),
    (errors.RequestUriNotSupported, "request_uri_not_supported", 400),
    (errors.InvalidTarget, "invalid_target", 400),
    # Internal (never rendered as such: the edge retries, then answers temporarily_unavailable).
    (errors.KeysPending, "keys_pending", 503),
]


@pytest.mark.parametrize(("cls", "code", "status"), TABLE, ids=[row[1] for row in TABLE])
def test_code_and_status(cls, code, status):
    assert issubclass(cls, OAuthError)
    assert issubclass(cls, Exception)
    assert cls.code == code
    err = cls()
    assert err.code == code
    # The status is the endpoint's decision, not the error's.
    assert not hasattr(err, "status")


@pytest.mark.parametrize(("cls", "code", "status"), TABLE, ids=[row[1] for row in TABLE])
def test_default_description_is_nonempty_and_used(cls, code, status):
    err = cls()
    assert cls.default_description
    assert err.description == cls.default_description
    assert err.detail == ""


def test_codes_are_unique_per_class():
    codes = [cls.code for cls, _, _ in TABLE]
    assert len(codes) == len(set(codes))


def test_by_code_covers_every_registered_error():
    assert BY_CODE == {code: cls for cls, code, _ in TABLE}


def test_every_oauth_error_subclass_in_module_is_registered():
    subclasses = {
        obj for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, OAuthError) and obj is not OAuthError
    }
    assert subclasses == set(BY_CODE.values())


def test_custom_description_overrides_default():
    err = InvalidRequest("Missing grant_type.")
    assert err.description == "Missing grant_type."
    assert err.to_json() == {"error": "invalid_request", "error_description": "Missing grant_type."}


def test_empty_description_falls_back_to_default():
    assert InvalidGrant("").description == InvalidGrant.default_description


def test_to_json_has_exactly_the_rfc_fields():
    body = InvalidScope().to_json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == "invalid_scope"
    assert body["error_description"] == InvalidScope.default_description


def test_detail_is_private_never_in_json():
    err = InvalidClient(detail="wrong client secret for client 'acme'")
    body = err.to_json()
    assert "acme" not in repr(body)
    assert "wrong client secret" not in repr(body)
    assert err.detail == "wrong client secret for client 'acme'"


def test_detail_is_keyword_only():
    with pytest.raises(TypeError):
        InvalidClient("public", "private")  # type: ignore[misc]


def test_str_carries_code_description_and_detail_for_the_log():
    err = InvalidGrant("Bad code.", detail="code reused")
    assert str(err) == "invalid_grant: Bad code. (code reused)"
    assert str(InvalidGrant("Bad code.")) == "invalid_grant: Bad code."


def test_errors_can_be_raised_and_caught_as_oauth_error():
    with pytest.raises(OAuthError) as info:
        raise UnsupportedGrantType(detail="grant_type=foo")
    assert info.value.code == "unsupported_grant_type"


@pytest.mark.parametrize(("cls", "code", "status"), TABLE, ids=[row[1] for row in TABLE])
def test_from_code_round_trip(cls, code, status):
    err = from_code(code, "some text")
    assert type(err) is cls
    assert err.description == "some text"


def test_from_code_without_description_uses_default():
    err = from_code("invalid_client")
    assert type(err) is InvalidClient
    assert err.description == InvalidClient.default_description
    assert from_code("invalid_client", "").description == InvalidClient.default_description


@pytest.mark.parametrize("code", ["", "bogus", "INVALID_REQUEST", "invalid-request"])
def test_from_code_unknown_becomes_server_error(code):
    err = from_code(code, "x")
    assert type(err) is ServerError
    assert err.code == "server_error"

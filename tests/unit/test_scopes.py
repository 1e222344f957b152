"""inboundlib.oauth.scopes: RFC 6749 §3.3 access token scope."""
from __future__ import annotations

import pytest

from inboundlib import redact
from inboundlib.oauth.errors import InvalidScope
from inboundlib.oauth.scopes import MAX_SCOPES, format_scope, is_valid_scope_token, narrow_scopes, parse_scope

# scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
ALLOWED_CHARS = [chr(c) for c in range(0x21, 0x7F) if c not in (0x22, 0x5C)]
FORBIDDEN_CHARS = ['"', "\\", "\t", "\n", "\r", "\x00", "\x7f", "\x1f", "\u00e9", "\u00a0", "\u3000"]


# --- parse_scope --------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_absent_scope_is_empty_list(value):
    assert parse_scope(value) == []


def test_space_delimited_list():
    assert parse_scope("read write admin:users") == ["read", "write", "admin:users"]


def test_duplicates_collapse_keeping_first_order():
    assert parse_scope("b a b c a") == ["b", "a", "c"]


def test_scope_is_case_sensitive():
    assert parse_scope("read READ Read") == ["read", "READ", "Read"]


@pytest.mark.parametrize("char", ALLOWED_CHARS)
def test_every_allowed_character_is_a_valid_token(char):
    assert is_valid_scope_token(char)
    assert parse_scope(char) == [char]


def test_all_allowed_characters_in_one_token():
    token = "".join(ALLOWED_CHARS)
    assert parse_scope(token) == [token]


def test_url_like_scope_is_valid():
    assert parse_scope("https://api.example.com/read openid") == ["https://api.example.com/read", "openid"]


@pytest.mark.parametrize("char", FORBIDDEN_CHARS, ids=[repr(c) for c in FORBIDDEN_CHARS])
def test_forbidden_character_in_token_is_invalid_scope(char):
    with pytest.raises(InvalidScope) as info:
        parse_scope(f"read{char}x")
    assert info.value.code == "invalid_scope"
    assert not is_valid_scope_token(f"read{char}x")


def test_space_is_a_delimiter_not_part_of_a_token():
    assert not is_valid_scope_token("read x")
    assert parse_scope("read x") == ["read", "x"]


@pytest.mark.parametrize("value", ['"', "\\", 'read "write"', "read\\write", "a b\\"])
def test_quote_and_backslash_are_invalid_scope(value):
    with pytest.raises(InvalidScope):
        parse_scope(value)


@pytest.mark.parametrize("value", [" ", "  ", " read", "read ", "read  write", "read\twrite", "read\nwrite"])
def test_bad_delimiters_are_invalid_scope(value):
    with pytest.raises(InvalidScope):
        parse_scope(value)


@pytest.mark.parametrize("value", ["read\n", "read write\n"])
def test_trailing_newline_is_invalid_scope(value):
    with pytest.raises(InvalidScope):
        parse_scope(value)


def test_is_valid_scope_token_rejects_trailing_newline():
    assert not is_valid_scope_token("read\n")


def test_is_valid_scope_token_rejects_empty():
    assert not is_valid_scope_token("")


def test_max_scopes_accepted():
    assert len(parse_scope(" ".join(f"s{i}" for i in range(MAX_SCOPES)))) == MAX_SCOPES


def test_too_many_scopes_is_invalid_scope():
    with pytest.raises(InvalidScope):
        parse_scope(" ".join(f"s{i}" for i in range(MAX_SCOPES + 1)))


def test_limit_counts_distinct_scopes():
    assert parse_scope(" ".join(["same"] * (MAX_SCOPES * 2))) == ["same"]


# --- narrow_scopes ------------------------------------------------------------------


@pytest.mark.parametrize("requested", [None, ""])
def test_no_request_grants_registered_scopes(requested):
    allowed = ["read", "write"]
    granted = narrow_scopes(requested, allowed)
    assert granted == ["read", "write"]
    assert granted is not allowed  # a copy: callers may not mutate the client record


def test_no_request_and_no_registered_scopes_is_empty():
    assert narrow_scopes(None, []) == []


def test_subset_is_granted_as_requested():
    assert narrow_scopes("write", ["read", "write"]) == ["write"]
    assert narrow_scopes("write read", ["read", "write"]) == ["write", "read"]


def test_duplicates_in_request_collapse():
    assert narrow_scopes("read read", ["read"]) == ["read"]


@pytest.mark.parametrize(("requested", "allowed"), [
    ("admin", ["read", "write"]),
    ("read admin", ["read", "write"]),
    ("read", []),
    ("READ", ["read"]),        # case-sensitive
    ("rea", ["read"]),         # no prefix matching
    ("read:all", ["read"]),
])
def test_scope_outside_allowed_is_invalid_scope(requested, allowed):
    with pytest.raises(InvalidScope) as info:
        narrow_scopes(requested, allowed)
    assert info.value.code == "invalid_scope"


def test_scope_outside_allowed_is_named_only_by_fingerprint_in_private_detail():
    # The caller's value matched nothing: it may be a secret, and detail is logged and audited.
    with pytest.raises(InvalidScope) as info:
        narrow_scopes("read secret-admin", ["read"])
    assert redact.unverified("secret-admin") in info.value.detail
    assert "secret-admin" not in info.value.detail
    assert "secret-admin" not in info.value.description
    assert "secret-admin" not in repr(info.value.to_json())


@pytest.mark.parametrize("requested", ['read"', "read\\", "read  write", " read"])
def test_malformed_request_is_invalid_scope_even_if_allowed_list_is_odd(requested):
    with pytest.raises(InvalidScope):
        narrow_scopes(requested, ['read"', "read\\", "read", "write", ""])


# --- format_scope -------------------------------------------------------------------


def test_format_scope():
    assert format_scope([]) == ""
    assert format_scope(["read"]) == "read"
    assert format_scope(["read", "write"]) == "read write"


def test_format_parse_round_trip():
    scopes = ["openid", "profile", "api:read"]
    assert parse_scope(format_scope(scopes)) == scopes

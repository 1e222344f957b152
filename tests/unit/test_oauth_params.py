"""inboundlib.oauth.params: RFC 6749 §3.1 / §3.2 / Appendix B token request parsing."""
from __future__ import annotations

import pytest

from inboundlib.oauth.errors import InvalidRequest
from inboundlib.oauth.params import FORM_CONTENT_TYPE, MAX_PARAMS, check_content_type, parse_form

# --- Content-Type (§3.2) -------------------------------------------------------------


@pytest.mark.parametrize("header", [
    "application/x-www-form-urlencoded",
    "Application/X-WWW-Form-URLEncoded",
    " application/x-www-form-urlencoded ",
    "application/x-www-form-urlencoded;",
    "application/x-www-form-urlencoded; charset=UTF-8",
    "application/x-www-form-urlencoded;charset=utf-8",
    "application/x-www-form-urlencoded; charset=utf8",
    "application/x-www-form-urlencoded; charset=\"utf-8\"",
    "application/x-www-form-urlencoded; CHARSET=UTF-8",
    "application/x-www-form-urlencoded; foo=bar",
    "application/x-www-form-urlencoded; foo=bar; charset=utf-8",
])
def test_content_type_accepted(header):
    check_content_type(header)


def test_form_content_type_constant():
    assert FORM_CONTENT_TYPE == "application/x-www-form-urlencoded"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_content_type_missing_is_invalid_request(header):
    with pytest.raises(InvalidRequest):
        check_content_type(header)


@pytest.mark.parametrize("header", [
    "application/json",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencodedx",
    "application/x-www-form-urlencoded, text/plain",
    "x-www-form-urlencoded",
    "application/*",
])
def test_content_type_other_media_type_is_invalid_request(header):
    with pytest.raises(InvalidRequest):
        check_content_type(header)


@pytest.mark.parametrize("charset", ["latin1", "ISO-8859-1", "utf-16", "us-ascii", "", "\"\"", "utf-8x"])
def test_content_type_non_utf8_charset_is_invalid_request(charset):
    with pytest.raises(InvalidRequest) as info:
        check_content_type(f"application/x-www-form-urlencoded; charset={charset}")
    assert info.value.code == "invalid_request"


def test_content_type_charset_without_value_is_invalid_request():
    with pytest.raises(InvalidRequest):
        check_content_type("application/x-www-form-urlencoded; charset")


def test_content_type_second_charset_non_utf8_is_rejected():
    with pytest.raises(InvalidRequest):
        check_content_type("application/x-www-form-urlencoded; charset=utf-8; charset=latin1")


# --- Body (§3.1, §3.2, Appendix B) ---------------------------------------------------


def test_parse_simple_form():
    assert parse_form(b"grant_type=client_credentials&scope=read+write") == {
        "grant_type": "client_credentials",
        "scope": "read write",
    }


def test_empty_body_is_empty_dict():
    assert parse_form(b"") == {}


def test_percent_decoding_and_plus_as_space():
    assert parse_form(b"a=%2B%20x+y&b=%26%3D") == {"a": "+ x y", "b": "&="}


def test_percent_encoded_names_are_decoded():
    assert parse_form(b"client%5Fid=abc") == {"client_id": "abc"}


def test_utf8_values_percent_encoded_and_raw():
    assert parse_form(b"u=caf%C3%A9") == {"u": "caf\u00e9"}
    assert parse_form("u=caf\u00e9&v=\u65e5\u672c".encode()) == {"u": "caf\u00e9", "v": "\u65e5\u672c"}


@pytest.mark.parametrize("body", [b"scope=&grant_type=password", b"scope&grant_type=password"])
def test_empty_value_is_treated_as_omitted(body):
    params = parse_form(body)
    assert params == {"grant_type": "password"}
    assert "scope" not in params


def test_all_empty_values_give_empty_dict():
    assert parse_form(b"a=&b=&c=") == {}


@pytest.mark.parametrize("body", [
    b"grant_type=password&grant_type=password",
    b"grant_type=password&grant_type=client_credentials",
    b"client_secret=a&client_id=x&client_secret=b",
    b"scope=a&scope=",          # a repeat is a repeat even if one copy is empty
    b"scope=&scope=a",
    b"scope=&scope=",
    b"a=1&a%3D=2&a=3",
    b"client_id=x&client%5Fid=y",  # same name once decoded
])
def test_repeated_parameter_is_invalid_request(body):
    with pytest.raises(InvalidRequest) as info:
        parse_form(body)
    assert info.value.code == "invalid_request"


def test_repeated_parameter_names_it_only_in_private_detail():
    with pytest.raises(InvalidRequest) as info:
        parse_form(b"password=hunter2&password=hunter3")
    assert "password" in info.value.detail
    assert "hunter" not in info.value.description
    assert "hunter" not in info.value.detail  # values are never echoed


def test_names_are_case_sensitive_not_duplicates():
    assert parse_form(b"scope=a&Scope=b") == {"scope": "a", "Scope": "b"}


@pytest.mark.parametrize("body", [
    b"\xff",
    b"a=\xff",
    b"u=caf\xe9",              # latin-1 encoded body
    b"a=\xc0\xaf",             # overlong encoding
    b"a=\xed\xa0\x80",         # UTF-8 encoded surrogate
    b"\xfe\xff\x00a\x00=\x00b",  # UTF-16
])
def test_non_utf8_raw_body_is_invalid_request(body):
    with pytest.raises(InvalidRequest):
        parse_form(body)


@pytest.mark.parametrize("body", [b"a=%FF", b"a=caf%E9", b"a=%C3", b"%FF=x", b"a=%ED%A0%80", b"a=%C0%AF"])
def test_non_utf8_percent_encoded_is_invalid_request(body):
    with pytest.raises(InvalidRequest):
        parse_form(body)


@pytest.mark.parametrize("body", [b"a=%00", b"a=x%00y", b"a%00=x", b"a=x\x00"])
def test_nul_character_is_invalid_request(body):
    with pytest.raises(InvalidRequest):
        parse_form(body)


def test_max_params_accepted():
    body = "&".join(f"k{i}=v" for i in range(MAX_PARAMS)).encode()
    assert len(parse_form(body)) == MAX_PARAMS


def test_too_many_params_is_invalid_request():
    body = "&".join(f"k{i}=v" for i in range(MAX_PARAMS + 1)).encode()
    with pytest.raises(InvalidRequest):
        parse_form(body)


def test_result_values_are_str():
    params = parse_form(b"a=1&b=two")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())

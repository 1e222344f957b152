"""inboundlib.config: Env helpers fail fast with a ConfigError that names the variable."""
from __future__ import annotations

import base64

import pytest

from inboundlib.config import ConfigError, Env

KEY = bytes(range(32))


# --- str ----------------------------------------------------------------------------


def test_str_present_and_stripped():
    assert Env({"NAME": "  value  "}).str("NAME") == "value"


@pytest.mark.parametrize("environ", [{}, {"NAME": ""}, {"NAME": "   "}, {"NAME": "\n\t"}])
def test_str_required_missing_names_variable(environ):
    with pytest.raises(ConfigError, match="NAME"):
        Env(environ).str("NAME")


@pytest.mark.parametrize("environ", [{}, {"NAME": ""}, {"NAME": "  "}])
def test_str_default_when_unset_or_blank(environ):
    assert Env(environ).str("NAME", "dflt") == "dflt"


def test_str_empty_default_is_allowed():
    assert Env({}).str("NAME", "") == ""


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("INBOUND_TEST_CFG_VAR", "from-os")
    assert Env().str("INBOUND_TEST_CFG_VAR") == "from-os"
    monkeypatch.delenv("INBOUND_TEST_CFG_VAR")
    with pytest.raises(ConfigError, match="INBOUND_TEST_CFG_VAR"):
        Env().str("INBOUND_TEST_CFG_VAR")


# --- int ----------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "value"), [("0", 0), ("42", 42), ("-7", -7), (" 8080 ", 8080), ("+3", 3)])
def test_int_parses(raw, value):
    assert Env({"N": raw}).int("N", 1) == value


def test_int_default():
    assert Env({}).int("N", 5) == 5
    assert Env({"N": " "}).int("N", 5) == 5


@pytest.mark.parametrize("raw", ["abc", "1.5", "0x10", "1e3", "10 20", "--1"])
def test_int_malformed_names_variable(raw):
    with pytest.raises(ConfigError, match="^N must be an integer"):
        Env({"N": raw}).int("N", 1)


def test_int_bounds():
    env = Env({"N": "10"})
    assert env.int("N", 1, minimum=10, maximum=10) == 10
    with pytest.raises(ConfigError, match="^N must be >= 11"):
        env.int("N", 1, minimum=11)
    with pytest.raises(ConfigError, match="^N must be <= 9"):
        env.int("N", 1, maximum=9)


def test_int_bounds_apply_to_default_too():
    with pytest.raises(ConfigError, match="N"):
        Env({}).int("N", 0, minimum=1)


# --- float --------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "value"), [("0", 0.0), ("1.5", 1.5), (" 2 ", 2.0), ("1e-3", 0.001)])
def test_float_parses(raw, value):
    assert Env({"F": raw}).float("F", 9.0) == value


def test_float_default():
    assert Env({}).float("F", 2.5) == 2.5


@pytest.mark.parametrize("raw", ["abc", "1,5", "1.2.3", "one"])
def test_float_malformed_names_variable(raw):
    with pytest.raises(ConfigError, match="^F must be a number"):
        Env({"F": raw}).float("F", 1.0)


def test_float_minimum_defaults_to_zero():
    with pytest.raises(ConfigError, match="^F must be >= 0"):
        Env({"F": "-0.5"}).float("F", 1.0)


def test_float_custom_minimum():
    assert Env({"F": "0.5"}).float("F", 1.0, minimum=0.5) == 0.5
    with pytest.raises(ConfigError, match="F"):
        Env({"F": "0.4"}).float("F", 1.0, minimum=0.5)


@pytest.mark.parametrize("raw", ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999"])
def test_float_nan_and_infinity_are_rejected(raw):
    with pytest.raises(ConfigError, match="^F must be"):
        Env({"F": raw}).float("F", 1.0)


# --- bool ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "yes", "on", " On "])
def test_bool_true(raw):
    assert Env({"B": raw}).bool("B", False) is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "off", " Off "])
def test_bool_false(raw):
    assert Env({"B": raw}).bool("B", True) is False


@pytest.mark.parametrize("default", [True, False])
def test_bool_default(default):
    assert Env({}).bool("B", default) is default


@pytest.mark.parametrize("raw", ["2", "y", "n", "t", "enabled", "truee"])
def test_bool_malformed_names_variable(raw):
    with pytest.raises(ConfigError, match="^B must be true or false"):
        Env({"B": raw}).bool("B", False)


# --- choice -------------------------------------------------------------------------


def test_choice():
    assert Env({"C": "jwt"}).choice("C", "opaque", ("jwt", "opaque")) == "jwt"
    assert Env({}).choice("C", "opaque", ("jwt", "opaque")) == "opaque"


@pytest.mark.parametrize("raw", ["JWT", "other", "jwt opaque"])
def test_choice_outside_set_names_variable(raw):
    with pytest.raises(ConfigError, match="^C must be one of jwt, opaque"):
        Env({"C": raw}).choice("C", "opaque", ("jwt", "opaque"))


# --- addr ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    "localhost:50051",
    "token-issuer:1",
    "svc.ns.svc.cluster.local:65535",
    "10.0.0.1:443",
    "[::1]:50051",
    "[fe80::1:2]:8080",
    "dns:///token_issuer:50051",
    " host:1 ",
])
def test_addr_valid(raw):
    assert Env({"A": raw}).addr("A") == raw.strip()


def test_addr_default():
    assert Env({}).addr("A", "localhost:1") == "localhost:1"


@pytest.mark.parametrize("raw", [
    "localhost",
    "localhost:",
    ":50051",
    "host:0",
    "host:65536",
    "host:99999",
    "host:123456",
    "host:port",
    "host:-1",
    "http://host:80",
    "dns://host:80",
    "host:1:2",
    "::1:50051",
    "[::1]",
    "ho st:1",
    "host:1/path",
])
def test_addr_invalid_names_variable(raw):
    with pytest.raises(ConfigError, match="^A must be host:port"):
        Env({"A": raw}).addr("A")


def test_addr_required_missing():
    with pytest.raises(ConfigError, match="^A is required"):
        Env({}).addr("A")


# --- url ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["http://localhost:8080", "https://auth.example.com/base", "http://[::1]:80/"])
def test_url_valid(raw):
    assert Env({"U": raw}).url("U") == raw


@pytest.mark.parametrize("raw", ["ftp://example.com", "example.com", "http://", "https:///path", "/relative",
                                 "HTTP//x", "nats://localhost:4222"])
def test_url_invalid_names_variable(raw):
    with pytest.raises(ConfigError, match="^U must be a http/https URL"):
        Env({"U": raw}).url("U")


def test_url_custom_schemes():
    assert Env({"U": "nats://localhost:4222"}).url("U", schemes=("nats", "tls")) == "nats://localhost:4222"
    with pytest.raises(ConfigError, match="^U must be a nats/tls URL"):
        Env({"U": "http://localhost"}).url("U", schemes=("nats", "tls"))


def test_url_required_and_default():
    with pytest.raises(ConfigError, match="U"):
        Env({}).url("U")
    assert Env({}).url("U", "https://d.example") == "https://d.example"


@pytest.mark.parametrize("raw", ["http://[::1", "https://[not-ipv6]/"])
def test_url_unparseable_is_config_error(raw):
    with pytest.raises(ConfigError, match="U"):
        Env({"U": raw}).url("U")


# --- key32 --------------------------------------------------------------------------


@pytest.mark.parametrize("encoded", [
    base64.b64encode(KEY).decode(),
    base64.urlsafe_b64encode(KEY).decode(),
    base64.urlsafe_b64encode(KEY).decode().rstrip("="),
    base64.b64encode(KEY).decode().rstrip("="),
])
def test_key32_accepts_standard_and_urlsafe(encoded):
    assert Env({"K": encoded}).key32("K") == KEY


def test_key32_urlsafe_alphabet_characters():
    key = b"\xfb\xff" * 16  # encodes to '+' and '/' (or '-' and '_')
    assert Env({"K": base64.urlsafe_b64encode(key).decode()}).key32("K") == key
    assert Env({"K": base64.b64encode(key).decode()}).key32("K") == key


@pytest.mark.parametrize("length", [0, 1, 16, 31, 33, 64])
def test_key32_wrong_length_names_variable(length):
    encoded = base64.b64encode(b"\x01" * length).decode() or "AA"
    with pytest.raises(ConfigError, match="^K must "):
        Env({"K": encoded}).key32("K")


@pytest.mark.parametrize("raw", ["not base64!", "A", "\u00e9" * 44, "AAAA*AAA"])
def test_key32_not_base64_names_variable(raw):
    with pytest.raises(ConfigError, match="^K must"):
        Env({"K": raw}).key32("K")


def test_key32_required():
    with pytest.raises(ConfigError, match="^K is required"):
        Env({}).key32("K")


# --- addr_map -----------------------------------------------------------------------


def test_addr_map():
    env = Env({"M": "password=pw:50051, jwt_bearer=dns:///jb:50052 ,refresh_token=[::1]:1"})
    assert env.addr_map("M") == {"password": "pw:50051", "jwt_bearer": "dns:///jb:50052",
                                 "refresh_token": "[::1]:1"}


def test_addr_map_empty_and_default():
    assert Env({}).addr_map("M") == {}
    assert Env({"M": " "}).addr_map("M") == {}
    assert Env({"M": ",,"}).addr_map("M") == {}
    assert Env({}).addr_map("M", "a=h:1") == {"a": "h:1"}
    assert Env({"M": "b=h:2"}).addr_map("M", "a=h:1") == {"b": "h:2"}


def test_addr_map_strips_keys():
    assert Env({"M": "a =h:1"}).addr_map("M") == {"a": "h:1"}


@pytest.mark.parametrize("raw", ["h:1", "=h:1", "a=h:1,b"])
def test_addr_map_malformed_item_names_variable(raw):
    with pytest.raises(ConfigError, match="^M must be name=host:port"):
        Env({"M": raw}).addr_map("M")


@pytest.mark.parametrize("raw", ["a=nope", "a=h:0", "a=", "a=h:1,b=h:70000"])
def test_addr_map_bad_address_is_config_error(raw):
    with pytest.raises(ConfigError):
        Env({"M": raw}).addr_map("M")


@pytest.mark.parametrize("raw", ["a=nope", "a="])
def test_addr_map_bad_address_names_variable(raw):
    with pytest.raises(ConfigError, match="GRANT_ADDRS"):
        Env({"GRANT_ADDRS": raw}).addr_map("GRANT_ADDRS")


def test_addr_map_refuses_a_name_given_twice():
    with pytest.raises(ConfigError, match="G names 'a' twice"):
        Env({"G": "a=h:1,a=h:2"}).addr_map("G")

"""inboundlib.oauth.client_auth: RFC 6749 §2.3 client authentication."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import string
from dataclasses import dataclass, field
from urllib.parse import quote_plus

import pytest

from inboundlib.oauth import client_auth
from inboundlib.oauth.client_auth import (
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_POST,
    MAX_CLIENT_ID,
    MAX_CLIENT_SECRET,
    NONE,
    ClientAuthenticator,
    ClientCredentials,
    extract_credentials,
    hash_client_secret,
    new_client_secret,
    require_grant_type,
    verify_client_secret,
)
from inboundlib.oauth.errors import InvalidClient, InvalidRequest, UnauthorizedClient

SECRET = "s3cr3t-value-that-must-not-leak"


def basic(client_id: str, secret: str, *, scheme: str = "Basic", encode: bool = True) -> str:
    """§2.3.1: form-urlencode id and secret, join with ':', base64."""
    if encode:
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    raw = f"{client_id}:{secret}".encode()
    return f"{scheme} {base64.b64encode(raw).decode()}"


def basic_raw(payload: bytes, scheme: str = "Basic") -> str:
    return f"{scheme} {base64.b64encode(payload).decode()}"


@dataclass
class Client:
    client_id: str = "app"
    secret_hash: str = field(default_factory=lambda: hash_client_secret(SECRET))
    public: bool = False
    active: bool = True
    grant_types: list[str] = field(default_factory=lambda: ["client_credentials"])
    token_endpoint_auth_method: str = CLIENT_SECRET_BASIC


# --- ClientCredentials --------------------------------------------------------------


def test_repr_never_shows_secret():
    creds = ClientCredentials(CLIENT_SECRET_BASIC, "app", SECRET)
    assert SECRET not in repr(creds)
    assert SECRET not in str(creds)
    assert SECRET not in f"{creds}"
    assert SECRET not in f"{creds!r}"
    assert SECRET not in repr([creds])
    assert SECRET not in repr({"c": creds})
    assert "app" in repr(creds)
    assert CLIENT_SECRET_BASIC in repr(creds)


def test_credentials_are_frozen():
    creds = ClientCredentials(NONE, "app")
    with pytest.raises(dataclasses.FrozenInstanceError):
        creds.client_secret = "x"  # type: ignore[misc]
    assert creds.client_secret == ""


# --- secrets and hashing ------------------------------------------------------------


def test_new_client_secret_is_256_bit_urlsafe_and_unique():
    secrets_ = {new_client_secret() for _ in range(50)}
    assert len(secrets_) == 50
    alphabet = set(string.ascii_letters + string.digits + "-_")
    for s in secrets_:
        assert len(s) == 43  # 32 bytes, base64url without padding
        assert set(s) <= alphabet
        assert len(base64.urlsafe_b64decode(s + "=")) == 32


def test_hash_format_is_sha256_hex():
    assert hash_client_secret("abc") == "sha256$" + hashlib.sha256(b"abc").hexdigest()
    assert hash_client_secret("caf\u00e9") == "sha256$" + hashlib.sha256("caf\u00e9".encode()).hexdigest()


def test_hash_is_not_the_secret():
    assert SECRET not in hash_client_secret(SECRET)


def test_verify_right_and_wrong_secret():
    stored = hash_client_secret(SECRET)
    assert verify_client_secret(SECRET, stored)
    assert not verify_client_secret(SECRET + "x", stored)
    assert not verify_client_secret("", stored)
    assert not verify_client_secret(SECRET.upper(), stored)


@pytest.mark.parametrize("stored", [
    "",
    SECRET,                                              # plaintext is never accepted
    "sha256$",
    "sha256$" + SECRET,
    "md5$" + hashlib.md5(SECRET.encode()).hexdigest(),
    "SHA256$" + hashlib.sha256(SECRET.encode()).hexdigest(),
    "bcrypt$" + hashlib.sha256(SECRET.encode()).hexdigest(),
    hashlib.sha256(SECRET.encode()).hexdigest(),          # no scheme prefix
])
def test_verify_rejects_other_stored_forms(stored):
    assert not verify_client_secret(SECRET, stored)


# --- extract_credentials: HTTP Basic (§2.3.1) ---------------------------------------


def test_basic_simple():
    params = {"grant_type": "client_credentials"}
    creds = extract_credentials(basic("app", SECRET), params)
    assert creds == ClientCredentials(CLIENT_SECRET_BASIC, "app", SECRET)
    assert params == {"grant_type": "client_credentials"}


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
def test_basic_scheme_is_case_insensitive(scheme):
    creds = extract_credentials(basic("app", SECRET, scheme=scheme), {})
    assert creds is not None and creds.client_id == "app" and creds.client_secret == SECRET


def test_basic_with_surrounding_whitespace():
    creds = extract_credentials("Basic   " + basic("app", SECRET).split(" ", 1)[1] + "  ", {})
    assert creds is not None and creds.client_id == "app"


@pytest.mark.parametrize(("client_id", "secret"), [
    ("my client", "pa ss"),
    ("a:b", "c:d"),
    ("a+b", "x+y=z&w"),
    ("%41", "%"),
    ("caf\u00e9", "\u65e5\u672c"),
    ("app", ""),
])
def test_basic_id_and_secret_are_form_urlencoded(client_id, secret):
    creds = extract_credentials(basic(client_id, secret), {})
    assert creds is not None
    assert (creds.client_id, creds.client_secret) == (client_id, secret)


def test_basic_plus_decodes_to_space_and_percent_escapes_decode():
    creds = extract_credentials(basic_raw(b"my+app:s%2Bx%3Ay"), {})
    assert creds is not None
    assert (creds.client_id, creds.client_secret) == ("my app", "s+x:y")


def test_basic_secret_may_contain_raw_colon():
    creds = extract_credentials(basic_raw(b"app:a:b:c"), {})
    assert creds is not None
    assert (creds.client_id, creds.client_secret) == ("app", "a:b:c")


@pytest.mark.parametrize("header", [
    "Bearer abc.def.ghi",
    "Digest username=app",
    "Basic",
    "Basic ",
    "Basic    ",
    "Basicabc",
    "",
    "Negotiate " + base64.b64encode(b"app:x").decode(),
])
def test_unsupported_or_empty_authorization_is_invalid_client(header):
    with pytest.raises(InvalidClient):
        extract_credentials(header, {})


@pytest.mark.parametrize("header", [
    "Basic !!!notbase64!!!",
    "Basic YXBwOnNlY3JldA",          # missing padding
    "Basic YXBw OnNlY3JldA==",        # inner whitespace
    "Basic " + "\u00e9" * 8,
    basic_raw(b"app-secret-no-colon"),
    basic_raw(b"\xff\xfe:secret"),     # not UTF-8
    basic_raw(b"app:\xe9"),            # latin-1 secret
    basic_raw(b"%FF:secret"),         # percent-encoded non-UTF-8 id
    basic_raw(b"app:%C3"),            # truncated percent-encoded UTF-8 secret
    basic_raw(b":secret"),            # empty client_id
    basic_raw(b":"),
])
def test_malformed_basic_is_invalid_client(header):
    with pytest.raises(InvalidClient):
        extract_credentials(header, {})


def test_basic_client_id_length_limit():
    assert extract_credentials(basic("a" * MAX_CLIENT_ID, "s"), {}) is not None
    with pytest.raises(InvalidClient):
        extract_credentials(basic("a" * (MAX_CLIENT_ID + 1), "s"), {})


def test_basic_client_secret_length_limit():
    assert extract_credentials(basic("app", "s" * MAX_CLIENT_SECRET), {}) is not None
    with pytest.raises(InvalidClient):
        extract_credentials(basic("app", "s" * (MAX_CLIENT_SECRET + 1)), {})


# --- extract_credentials: one method only (§2.3) ------------------------------------


def test_basic_and_body_secret_is_invalid_request():
    params = {"client_secret": SECRET, "grant_type": "client_credentials"}
    with pytest.raises(InvalidRequest):
        extract_credentials(basic("app", SECRET), params)


def test_basic_and_body_id_and_secret_is_invalid_request():
    with pytest.raises(InvalidRequest):
        extract_credentials(basic("app", SECRET), {"client_id": "app", "client_secret": SECRET})


def test_basic_and_matching_body_client_id_is_allowed():
    params = {"client_id": "app", "grant_type": "authorization_code"}
    creds = extract_credentials(basic("app", SECRET), params)
    assert creds == ClientCredentials(CLIENT_SECRET_BASIC, "app", SECRET)
    assert params == {"grant_type": "authorization_code"}


def test_basic_and_different_body_client_id_is_invalid_request():
    with pytest.raises(InvalidRequest):
        extract_credentials(basic("app", SECRET), {"client_id": "other"})


def test_basic_body_client_id_compared_after_decoding():
    creds = extract_credentials(basic("my app", SECRET), {"client_id": "my app"})
    assert creds is not None and creds.client_id == "my app"


# --- extract_credentials: body (§2.3.1 client_secret_post, §3.2.1 public) -----------


def test_client_secret_post():
    params = {"client_id": "app", "client_secret": SECRET, "grant_type": "client_credentials", "scope": "a"}
    creds = extract_credentials(None, params)
    assert creds == ClientCredentials(CLIENT_SECRET_POST, "app", SECRET)
    assert params == {"grant_type": "client_credentials", "scope": "a"}


def test_client_secret_without_client_id_is_invalid_request():
    params = {"client_secret": SECRET}
    with pytest.raises(InvalidRequest):
        extract_credentials(None, params)


def test_public_client_id_only():
    params = {"client_id": "spa", "code": "xyz"}
    creds = extract_credentials(None, params)
    assert creds == ClientCredentials(NONE, "spa", "")
    assert params == {"code": "xyz"}


def test_no_client_at_all_is_none():
    params = {"grant_type": "password"}
    assert extract_credentials(None, params) is None
    assert params == {"grant_type": "password"}


def test_post_length_limits():
    assert extract_credentials(None, {"client_id": "a" * MAX_CLIENT_ID, "client_secret": "s"}) is not None
    with pytest.raises(InvalidClient):
        extract_credentials(None, {"client_id": "a" * (MAX_CLIENT_ID + 1), "client_secret": "s"})
    with pytest.raises(InvalidClient):
        extract_credentials(None, {"client_id": "a", "client_secret": "s" * (MAX_CLIENT_SECRET + 1)})
    with pytest.raises(InvalidClient):
        extract_credentials(None, {"client_id": "a" * (MAX_CLIENT_ID + 1)})


def test_empty_body_client_id_is_invalid_client():
    with pytest.raises(InvalidClient):
        extract_credentials(None, {"client_id": ""})


def test_credentials_removed_from_params_even_on_error():
    params = {"client_id": "other", "client_secret": SECRET, "x": "1"}
    with pytest.raises(InvalidRequest):
        extract_credentials(basic("app", SECRET), params)
    assert params == {"x": "1"}


# --- ClientAuthenticator.verify (§2.3, §3.2.1) -------------------------------------


def authenticate_client(client, creds):
    """The rule under test, from synchronous tests: the authenticator every grant runs."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(ClientAuthenticator(clients=None).verify(client, creds))
    finally:
        loop.close()


def creds_basic(secret: str = SECRET, client_id: str = "app") -> ClientCredentials:
    return ClientCredentials(CLIENT_SECRET_BASIC, client_id, secret)


def creds_post(secret: str = SECRET, client_id: str = "app") -> ClientCredentials:
    return ClientCredentials(CLIENT_SECRET_POST, client_id, secret)


def creds_none(client_id: str = "app") -> ClientCredentials:
    return ClientCredentials(NONE, client_id)


@pytest.mark.parametrize("creds", [creds_basic(), creds_post()], ids=["basic", "post"])
def test_confidential_client_with_right_secret(creds):
    client = Client(token_endpoint_auth_method=creds.method)
    assert authenticate_client(client, creds) is client


@pytest.mark.parametrize("creds", [
    creds_basic(SECRET + "x"),
    creds_post("wrong"),
    creds_basic(""),
    creds_post(SECRET.upper()),
], ids=["basic-suffix", "post-wrong", "basic-empty", "post-case"])
def test_confidential_client_with_wrong_secret_is_invalid_client(creds):
    with pytest.raises(InvalidClient):
        authenticate_client(Client(token_endpoint_auth_method=creds.method), creds)


def test_confidential_client_sending_no_secret_is_invalid_client():
    with pytest.raises(InvalidClient):
        authenticate_client(Client(), creds_none())


@pytest.mark.parametrize("secret_hash", ["", SECRET, "plain$" + SECRET, hash_client_secret("")])
def test_confidential_client_without_usable_hash_is_invalid_client(secret_hash):
    with pytest.raises(InvalidClient):
        authenticate_client(Client(secret_hash=secret_hash), creds_basic(SECRET))


def test_confidential_client_with_empty_hash_rejects_empty_secret():
    with pytest.raises(InvalidClient):
        authenticate_client(Client(secret_hash="", token_endpoint_auth_method=CLIENT_SECRET_POST), creds_post(""))


def test_public_client_with_client_id_only():
    client = Client(public=True, secret_hash="")
    assert authenticate_client(client, creds_none()) is client


@pytest.mark.parametrize("creds", [creds_basic(), creds_post(), creds_basic(""), creds_post("")],
                         ids=["basic", "post", "basic-empty", "post-empty"])
def test_public_client_sending_a_secret_is_invalid_client(creds):
    with pytest.raises(InvalidClient):
        authenticate_client(Client(public=True, secret_hash=""), creds)


def test_public_client_with_a_hash_still_may_not_send_a_secret():
    with pytest.raises(InvalidClient):
        authenticate_client(Client(public=True), creds_basic(SECRET))


@pytest.mark.parametrize(("client", "creds"), [
    (Client(active=False), creds_basic()),
    (Client(active=False), creds_post()),
    (Client(active=False, public=True, secret_hash=""), creds_none()),
], ids=["confidential-basic", "confidential-post", "public"])
def test_disabled_client_is_invalid_client_even_with_right_secret(client, creds):
    with pytest.raises(InvalidClient):
        authenticate_client(client, creds)


@pytest.mark.parametrize("creds", [creds_basic(), creds_post(), creds_none()], ids=["basic", "post", "none"])
def test_unknown_client_is_invalid_client(creds):
    with pytest.raises(InvalidClient):
        authenticate_client(None, creds)


@pytest.mark.parametrize("client", [Client(), Client(public=True, secret_hash=""), None])
def test_no_credentials_is_invalid_client(client):
    with pytest.raises(InvalidClient):
        authenticate_client(client, None)


def test_every_failure_looks_the_same_publicly_but_detail_differs():
    cases = [
        (Client(), None),
        (None, creds_basic()),
        (Client(active=False), creds_basic()),
        (Client(public=True, secret_hash=""), creds_basic()),
        (Client(), creds_none()),
        (Client(), creds_basic("wrong")),
    ]
    details = []
    for client, creds in cases:
        with pytest.raises(InvalidClient) as info:
            authenticate_client(client, creds)
        assert info.value.description == InvalidClient.default_description
        assert info.value.to_json() == {"error": "invalid_client",
                                        "error_description": InvalidClient.default_description}
        assert SECRET not in str(info.value)
        details.append(info.value.detail)
    assert all(details)
    assert len(set(details)) == len(details)


@pytest.mark.parametrize(("client", "creds"), [
    (Client(), creds_basic("wrong")),
    (None, creds_basic("wrong")),
    (None, creds_post("wrong")),
    (None, creds_none()),
    (Client(active=False), creds_basic("wrong")),
    (Client(public=True, secret_hash=""), creds_basic("wrong")),
    (Client(secret_hash=""), creds_basic("wrong")),
    (Client(), creds_none()),
    (Client(), ClientCredentials("private_key_jwt", "app", "wrong")),
], ids=["wrong-secret", "unknown-basic", "unknown-post", "unknown-none", "disabled", "public-with-secret",
        "no-hash", "confidential-without-secret", "unsupported-method"])
def test_every_refusal_checks_the_sent_secret_once_against_a_hash_of_the_real_kind(monkeypatch, client, creds):
    """No timing signal that a client id exists: an unknown (or disabled...) client
    costs the same one secret check as a wrong secret, against a SHA-256 hash like
    every stored one. Counted on the verifier, not timed."""
    checks = []

    def spy(secret, stored):
        checks.append((secret, stored.partition("$")[0]))
        return real_verify(secret, stored)

    real_verify = client_auth.verify_client_secret
    monkeypatch.setattr(client_auth, "verify_client_secret", spy)
    with pytest.raises(InvalidClient) as info:
        authenticate_client(client, creds)
    assert info.value.to_json() == {"error": "invalid_client", "error_description": InvalidClient.default_description}
    assert checks == [(creds.client_secret, "sha256")]


@pytest.mark.parametrize("secret_hash", ["", "plain$" + SECRET, "bcrypt$x", SECRET])
def test_a_client_whose_stored_hash_is_unusable_costs_one_hashing_too(monkeypatch, secret_hash):
    """The equal cost holds for any stored value: the sent secret is hashed once (counted,
    not timed) even when the stored one is of no known kind."""
    hashed = []
    real_hash = client_auth.hash_client_secret
    monkeypatch.setattr(client_auth, "hash_client_secret", lambda secret: hashed.append(secret) or real_hash(secret))
    with pytest.raises(InvalidClient):
        authenticate_client(Client(secret_hash=secret_hash), creds_basic("wrong"))
    assert hashed == ["wrong"]


# --- require_grant_type (§5.2 unauthorized_client) ----------------------------------


def test_registered_grant_type_is_allowed():
    require_grant_type(Client(grant_types=["client_credentials", "refresh_token"]), "refresh_token")


@pytest.mark.parametrize(("grants", "grant"), [
    (["client_credentials"], "password"),
    ([], "client_credentials"),
    (["client_credentials"], "CLIENT_CREDENTIALS"),
    (["client_credentials"], "client"),
])
def test_unregistered_grant_type_is_unauthorized_client(grants, grant):
    with pytest.raises(UnauthorizedClient) as info:
        require_grant_type(Client(grant_types=grants), grant)
    assert info.value.code == "unauthorized_client"

"""Validation of trust material an operator registers (one rule a function): the keys of
private_key_jwt clients and JWT-bearer integrations (an inline JWKS, an https JWKS URL, an
X.509 certificate), JWS algorithm names, and clients' RFC 8693 token-exchange policies.

Only checks here: parsing keys for use is the JWT validator's (inboundlib.jose); what is
checked is that what is stored can be used at all, and holds nothing secret by mistake
(a private JWK pasted instead of the public one is refused, not published to jwt_bearer).
"""
from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from inboundlib.jose.keys import KeySet
from inboundlib.oauth.client_auth import CLIENT_SECRET_JWT, PRIVATE_KEY_JWT
from inboundlib.oauth.scopes import is_valid_scope_token
from services.client_registry.api import InvalidArgument, TokenExchangePolicy, is_plausible_id

# JWS algorithms (RFC 7518 §3.1, RFC 8037) by what verifies them.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
# client_secret_jwt: the registry's secrets are 256 bits (new_client_secret), and RFC 7518 §3.2
# wants an HMAC key at least as long as the hash, so HS384 and HS512 could never verify.
CLIENT_SECRET_JWT_ALGORITHMS = ("HS256",)
# RFC 8693 §3: the subject token types a client may be allowed to exchange.
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
EXCHANGE_TOKEN_TYPES = (TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT)

MAX_URL = 2000
MAX_JWKS_BYTES = 65536
MAX_JWKS_KEYS = 100
MAX_PEM_BYTES = 16384
MAX_LIST = 100
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# JWK members that only a private (or symmetric) key has (RFC 7518 §6.2.2, §6.3.2, §6.4, RFC 8037 §2).
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def check_https_url(label: str, value: str) -> str:
    """An absolute https URL with a host, no user info and no fragment (keys and discovery
    documents are fetched from it: plain http would let anyone on the path swap the keys)."""
    if len(value) > MAX_URL or _CONTROL.search(value):
        raise InvalidArgument(f"{label} is not a URL (at most {MAX_URL} characters, no spaces)")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidArgument(f"{label} must be an https URL with a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidArgument(f"{label} must not carry user information")
    if parts.fragment or "#" in value:
        raise InvalidArgument(f"{label} must not have a fragment")
    return value


def check_jwks(label: str, value: str) -> str:
    """A JWK Set (RFC 7517 §5) of public keys, each one usable by the JWT validator that will
    read it (inboundlib.jose's KeySet: key type, size, use, key_ops, alg): JSON text, at most
    MAX_JWKS_KEYS keys, no private or symmetric key material. Stored as given."""
    if len(value.encode()) > MAX_JWKS_BYTES:
        raise InvalidArgument(f"{label} is larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise InvalidArgument(f"{label} is not JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise InvalidArgument(f'{label} must be a JWK Set: {{"keys": [...]}} with at least one key')
    if len(keys) > MAX_JWKS_KEYS:
        raise InvalidArgument(f"{label} holds more than {MAX_JWKS_KEYS} keys")
    for position, key in enumerate(keys, 1):
        if not isinstance(key, dict):
            raise InvalidArgument(f"{label}: key {position} is not a JSON object")
        if any(member in key for member in _PRIVATE_MEMBERS) or key.get("kty") == "oct":
            raise InvalidArgument(f"{label}: key {position} holds private or symmetric key material"
                                  " (register the public key only)")
        # The validator skips what it cannot use: a stored set must not lose a key there unseen.
        if len(KeySet.from_jwks({"keys": [key]})) != 1:
            raise InvalidArgument(f"{label}: key {position} is not a usable signing key (RSA of 2048 to 8192"
                                  " bits, EC P-256/384/521 or Ed25519/Ed448; use sig; an alg matching the key)")
    return value


def check_certificate_pem(label: str, value: str) -> str:
    """PEM X.509 certificates whose keys the JWT validator accepts (KeySet.from_certificate_pem:
    RSA of 2048 to 8192 bits, EC P-256/384/521, Ed25519/Ed448); their validity dates and chain
    are not checked: the operator pins these very keys."""
    if len(value.encode()) > MAX_PEM_BYTES:
        raise InvalidArgument(f"{label} is larger than {MAX_PEM_BYTES} bytes")
    try:
        KeySet.from_certificate_pem(value)
    except ValueError as exc:  # its message names the problem, never key material
        raise InvalidArgument(f"{label}: {exc}") from None
    return value


def check_algorithms(label: str, algorithms: list[str] | tuple[str, ...], allowed: tuple[str, ...]) -> list[str]:
    bad = [a for a in algorithms if a not in allowed]
    if bad:
        # The names are the operator's own input, but shown only when they are short words.
        shown = [a if len(a) <= 16 and not _CONTROL.search(a) else "?" for a in bad]
        raise InvalidArgument(f"{label}: unsupported algorithms {shown}; use {', '.join(allowed)}")
    return list(dict.fromkeys(algorithms))


def check_auth_signing_alg(method: str, alg: str) -> str:
    """RFC 7591 §2 token_endpoint_auth_signing_alg: "" (any the key allows) or one alg of the
    method's family: HS256 for client_secret_jwt (CLIENT_SECRET_JWT_ALGORITHMS), public-key algorithms for private_key_jwt;
    meaningless for other methods (refused rather than ignored). Never "none"."""
    if not alg:
        return ""
    if method == CLIENT_SECRET_JWT:
        return check_algorithms("token_endpoint_auth_signing_alg", [alg], CLIENT_SECRET_JWT_ALGORITHMS)[0]
    if method == PRIVATE_KEY_JWT:
        return check_algorithms("token_endpoint_auth_signing_alg", [alg], ASYMMETRIC_ALGORITHMS)[0]
    raise InvalidArgument("token_endpoint_auth_signing_alg is for client_secret_jwt and private_key_jwt clients")


def check_client_keys(method: str, jwks: str, jwks_uri: str) -> tuple[str, str]:
    """private_key_jwt needs exactly one key source; other methods have none."""
    if method != PRIVATE_KEY_JWT:
        if jwks or jwks_uri:
            raise InvalidArgument("jwks and jwks_uri are for private_key_jwt clients")
        return "", ""
    if bool(jwks) == bool(jwks_uri):
        raise InvalidArgument("a private_key_jwt client needs exactly one of jwks and jwks_uri")
    return (check_jwks("jwks", jwks) if jwks else "", check_https_url("jwks_uri", jwks_uri) if jwks_uri else "")


def _check_words(label: str, values: tuple[str, ...]) -> list[str]:
    if len(values) > MAX_LIST:
        raise InvalidArgument(f"{label}: at most {MAX_LIST}")
    if any(not is_plausible_id(v) or _CONTROL.search(v) for v in values):
        raise InvalidArgument(f"{label}: each is 1 to 256 characters, without spaces or control characters")
    return list(dict.fromkeys(values))


def check_exchange_policy(policy: TokenExchangePolicy | None, client_scopes: list[str], *,
                          public: bool) -> TokenExchangePolicy | None:
    """RFC 8693: known subject token types, scopes the client itself has (an exchange never
    yields more than the client may hold), plausible provider names and audiences. Only a
    confidential client may have a policy: a public one (method none) authenticates nobody,
    so anyone holding a provider's token could exchange it as that client (RFC 8693 §5)."""
    if policy is None:
        return None
    if public:
        raise InvalidArgument("token exchange: a public client (token_endpoint_auth_method none) cannot have a"
                              " token-exchange policy; clear the policy or use a confidential client")
    unknown = [t for t in policy.subject_token_types if t not in EXCHANGE_TOKEN_TYPES]
    if unknown:
        raise InvalidArgument(f"token exchange: unsupported subject token types; use {', '.join(EXCHANGE_TOKEN_TYPES)}")
    bad_scopes = [s for s in policy.scopes if not is_valid_scope_token(s)]
    if bad_scopes:
        raise InvalidArgument("token exchange: malformed scopes")
    beyond = sorted(set(policy.scopes) - set(client_scopes))
    if beyond:
        raise InvalidArgument(f"token exchange: scopes the client does not have: {beyond}")
    return TokenExchangePolicy(
        subject_token_types=tuple(dict.fromkeys(policy.subject_token_types)),
        providers=tuple(_check_words("token exchange providers", policy.providers)),
        own_tokens=bool(policy.own_tokens),
        scopes=tuple(dict.fromkeys(policy.scopes)),
        audiences=tuple(_check_words("token exchange audiences", policy.audiences)),
        actor_tokens=bool(policy.actor_tokens))


def exchange_policy_to_json(policy: TokenExchangePolicy | None) -> str | None:
    if policy is None:
        return None
    return json.dumps({"subject_token_types": list(policy.subject_token_types), "providers": list(policy.providers),
                       "own_tokens": policy.own_tokens, "scopes": list(policy.scopes),
                       "audiences": list(policy.audiences), "actor_tokens": policy.actor_tokens})


def exchange_policy_from_json(text: str | None) -> TokenExchangePolicy | None:
    if text is None:
        return None
    data = json.loads(text)
    return TokenExchangePolicy(
        subject_token_types=tuple(data.get("subject_token_types", ())), providers=tuple(data.get("providers", ())),
        own_tokens=bool(data.get("own_tokens", False)), scopes=tuple(data.get("scopes", ())),
        audiences=tuple(data.get("audiences", ())), actor_tokens=bool(data.get("actor_tokens", False)))


def check_text(label: str, value: str, limit: int, *, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{label} is required")
    if len(value) > limit:
        raise InvalidArgument(f"{label} is longer than {limit} characters")
    if _TEXT_CONTROL.search(value):
        raise InvalidArgument(f"{label} contains control characters")
    return value.strip()

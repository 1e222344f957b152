"""OpenID Connect rules in one place: which claims each scope releases (Core §5.4),
and the token hashes (`at_hash`, `c_hash`, Core §3.1.3.6, §3.3.2.11).

Both the ID token and the UserInfo response release a user's claims by the
granted scopes; both use `claims_for`, so the two can never disagree.
"""
from __future__ import annotations

import base64
import hashlib

OPENID = "openid"
PROFILE = "profile"
EMAIL = "email"
# Scopes with an OpenID Connect meaning that the catalog always has.
STANDARD_SCOPES = (OPENID, PROFILE, EMAIL)

# Core §5.4. Claims Inbound has no data for (middle_name, nickname, picture, website,
# gender, birthdate, phone, address) are never released.
SCOPE_CLAIMS: dict[str, tuple[str, ...]] = {
    PROFILE: ("name", "given_name", "family_name", "preferred_username", "locale", "zoneinfo", "updated_at"),
    EMAIL: ("email", "email_verified"),
}
SUPPORTED_CLAIMS = ("sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "c_hash", "sid", "azp",
                    *SCOPE_CLAIMS[PROFILE], *SCOPE_CLAIMS[EMAIL])


# The JWS algorithms an ID token may be signed with: the ones token_issuer has keys for
# (services/token_issuer/keys.py ALGORITHMS; a unit test keeps the two equal).
ID_TOKEN_ALGORITHMS = ("ES256", "RS256", "EdDSA")


def id_token_alg(env) -> str:
    """INBOUND_ID_TOKEN_ALG (an inboundlib.config.Env): what ID tokens are signed with, RS256 by
    default (Core §15.1 requires RS256 available). token_issuer signs with it and the edge
    states it (`id_token_signing_alg_values_supported`): both read it here."""
    return env.choice("INBOUND_ID_TOKEN_ALG", "RS256", ID_TOKEN_ALGORITHMS)


def user_claims(user) -> dict:
    """Every claim Inbound can state about a user (services.client_registry.api.UserRecord),
    empty strings left out (Core §5.3.2: a claim without a value is omitted)."""
    claims = {
        "name": user.display_name,
        "given_name": user.given_name,
        "family_name": user.family_name,
        "preferred_username": user.username,
        "locale": user.locale,
        "zoneinfo": user.zoneinfo,
        "updated_at": user.updated_at or None,
        "email": user.email,
        "email_verified": bool(user.email_verified) if user.email else None,
    }
    return {name: value for name, value in claims.items() if value not in ("", None)}


def claims_for(user, scopes) -> dict:
    """The claims `scopes` release about `user` (without `sub`, which every response has)."""
    available = user_claims(user)
    released: dict = {}
    for scope in scopes:
        for name in SCOPE_CLAIMS.get(scope, ()):
            if name in available:
                released[name] = available[name]
    return released


def half_hash(value: str, alg: str) -> str:
    """Core §3.1.3.6: base64url of the left half of the hash of the ASCII value, the
    hash being the one of the JWS algorithm (SHA-256 for RS256 and ES256; SHA-512 for
    EdDSA with Ed25519, as the OpenID Foundation's errata and peers use)."""
    digest = (hashlib.sha512 if alg == "EdDSA" else {"256": hashlib.sha256, "384": hashlib.sha384,
                                                      "512": hashlib.sha512}[alg[-3:]])(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")

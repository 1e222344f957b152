"""PKCE (RFC 7636), S256 only.

`plain` is refused (RFC 9700 §2.1.1: it protects nothing against an attacker who
reads the authorization request). The challenge is checked for its form when the
authorization request arrives (§4.2: 43 characters of base64url for S256), and
the verifier at the token endpoint (§4.1: 43 to 128 unreserved characters),
compared in constant time (§4.6).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re

from inboundlib.oauth.errors import InvalidGrant, InvalidRequest

S256 = "S256"
# RFC 7636 §4.1: code-verifier = 43*128unreserved.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# The S256 challenge is BASE64URL(SHA256(verifier)) without padding: 43 characters.
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")


def s256(verifier: str) -> str:
    """BASE64URL-ENCODE(SHA256(ASCII(code_verifier))) (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_challenge(challenge: str | None, method: str | None) -> tuple[str, str]:
    """The (challenge, method) of an authorization request, "" and "" when it has none.
    Raises InvalidRequest for `plain`, an unknown method, a method without a challenge,
    or a challenge that no S256 verifier can produce."""
    if not challenge:
        if method:
            raise InvalidRequest("code_challenge_method was sent without code_challenge.")
        return "", ""
    method = method or "plain"  # RFC 7636 §4.3: the default is plain, which is refused
    if method != S256:
        raise InvalidRequest("Only the S256 code challenge method is supported.",
                             detail=f"code_challenge_method {method[:16]!r}")
    if not _S256_CHALLENGE.fullmatch(challenge):
        raise InvalidRequest("The code challenge is malformed.")
    return challenge, S256


def verify(verifier: str | None, challenge: str, method: str) -> None:
    """The token endpoint's check (RFC 7636 §4.6). A code bound to a challenge needs a
    verifier that hashes to it; a code without one refuses a verifier (RFC 9700 §4.8.2:
    a PKCE downgrade). Raises InvalidGrant, with the reason as private detail."""
    if not challenge:
        if verifier:
            raise InvalidGrant(detail="code_verifier sent for a code issued without a challenge")
        return
    if not verifier:
        raise InvalidGrant(detail="code_verifier missing")
    if not _VERIFIER.fullmatch(verifier):
        raise InvalidGrant(detail="code_verifier malformed")
    if method != S256 or not hmac.compare_digest(s256(verifier).encode(), challenge.encode()):
        raise InvalidGrant(detail="code_verifier does not match the challenge")

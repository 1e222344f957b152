"""The one JWT validator of Inbound: client assertions and JWT-bearer grants (RFC 7523),
third-party ID and access tokens (OpenID Connect Core §3.1.3.7, RFC 9068), subject and
actor tokens of a token exchange (RFC 8693).

The rules (RFC 8725, the JWT best current practices):
- the algorithm comes from the trusted key, never from the token alone: the header's
  `alg` only picks among what the key allows (inboundlib.jose.keys) and what the policy
  allows; `none` is never accepted;
- the header's `jku`, `x5u`, `x5c` and `jwk` are ignored (a token never names its own key);
  `kid` is only a lookup key into the trusted set, compared as a string;
- required claims (default iss, sub, aud, exp); `iss` one of the policy's, `aud` (a string or
  a list, RFC 7519 §4.1.3) naming one of the policy's audiences; `exp`, `nbf` and `iat`
  with the clock skew; a maximum lifetime (exp − iat, or exp − nbf);
- `jti` replay refused through `UsedJtis` only after every other check passed (a forged or
  expired token never fills the store), remembered until exp + skew.

Failures raise `InvalidJwt(reason)`: the reason is private (log and audit only) and never
carries the token or its claims, only fingerprints (inboundlib.redact). Keys still being
fetched raise `KeysPending` (inboundlib.oauth.errors): the caller answers "try again soon".
"""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from inboundlib.jose.keys import ALL_ALGORITHMS, KeySet
from inboundlib.oauth.errors import KeysPending
from inboundlib.redact import unverified

MAX_TOKEN_BYTES = 32 * 1024  # larger than any ID token seen in practice; parsing stops there
MAX_KID_CHARS = 256
MAX_JTI_CHARS = 256
DEFAULT_SKEW = 300
# A NumericDate (RFC 7519 §2) beyond ±10^11 s (year 5138) is junk; bounding it keeps the
# arithmetic below from overflowing a float (JSON integers are unbounded in Python) and the
# jti store's expiry inside a 64-bit column.
MAX_NUMERIC_DATE = 10**11


class InvalidJwt(Exception):
    """The token is refused. `reason` is private: safe to log, never shown to the caller."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class UsedJtis(Protocol):
    async def first_use(self, namespace: str, jti: str, expires_at: int) -> bool:
        """True when (namespace, jti) was not seen before; remembered until `expires_at` (epoch s)."""
        ...


class KeySource(Protocol):
    def keys(self) -> KeySet:
        """The trusted keys now; may raise KeysPending (being fetched) or InvalidJwt (unusable)."""
        ...

    def refetch(self) -> bool:
        """An unknown kid: True when a refetch started (the caller raises KeysPending), False
        when none may run now (rate limit; or nothing to fetch): the kid is then refused."""
        ...


@dataclass(frozen=True)
class JwtPolicy:
    """What one trust (a client, an integration, a provider) accepts."""
    issuers: tuple[str, ...]
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = ()  # () = every algorithm the key allows
    skew: int = DEFAULT_SKEW
    max_lifetime: int | None = 3600  # exp − (iat or nbf); None: no maximum
    require_jti: bool = False  # jti required and claimed once (replay refused)
    jti_namespace: str = ""  # client:<id>, integration:<id>, provider:<name>
    subject: str | None = None  # sub must equal it when set (client assertions: the client id)
    required: tuple[str, ...] = ("iss", "sub", "aud", "exp")


def _decode_error(exc: Exception) -> InvalidJwt:
    return InvalidJwt(f"malformed token ({type(exc).__name__})")


def _check_size(token: object) -> str:
    if isinstance(token, bytes):
        token = token.decode("ascii", "replace")
    if not isinstance(token, str) or not token:
        raise InvalidJwt("malformed token (empty or not text)")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidJwt(f"token too large ({len(token)} bytes)")
    return token


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, UNVERIFIED: for routing (which client, which method) only."""
    token = _check_size(token)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise _decode_error(exc) from None
    if not isinstance(header, dict):
        raise InvalidJwt("malformed token (header is not an object)")
    return header


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims, UNVERIFIED (no signature, no dates checked): for routing only (which
    client sent an assertion, whose `iss` a token carries)."""
    token = _check_size(token)
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise _decode_error(exc) from None
    if not isinstance(claims, dict):
        raise InvalidJwt("malformed token (claims are not an object)")
    _check_text(claims)
    return claims


# An issuer identifier is a URL (RFC 8414 §2); one longer than this, or with a control
# character, names no trust we store and is refused before any lookup.
MAX_ISSUER = 2000
_NOT_ISSUER_TEXT = re.compile(r"[\x00-\x1f\x7f]")


def unverified_issuer(token: str) -> str:
    """The token's `iss`, UNVERIFIED: for routing only (which integration or provider should
    vouch for it). InvalidJwt when there is none usable: absent, not a non-empty string, too
    long, or holding a control character (a NUL would reach a database lookup)."""
    issuer = unverified_claims(token).get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise InvalidJwt("the token has no iss")
    if len(issuer) > MAX_ISSUER or _NOT_ISSUER_TEXT.search(issuer):
        raise InvalidJwt(f"the token's iss is no issuer ({unverified(issuer)})")
    return issuer


def _check_text(claims: dict) -> None:
    """RFC 7519 §7.2 (claims are UTF-8 JSON), RFC 8259 §8.2: a \\uD800 escape decodes to a lone
    surrogate, which no UTF-8 text, database or protobuf string can hold; such claims reached
    the registry (a user, a jti, an issuer looked up) and failed there as a server error."""
    try:
        json.dumps(claims, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJwt("malformed token (claims are not valid Unicode)") from None
    except (TypeError, ValueError):  # (cannot happen for what json.loads made; refuse rather than raise)
        raise InvalidJwt("malformed token (claims)") from None


def _is_number(value: object) -> bool:
    """A usable NumericDate: an int or a finite float (not a bool) within ±MAX_NUMERIC_DATE."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return -MAX_NUMERIC_DATE <= value <= MAX_NUMERIC_DATE


# Signature only: the claims are checked below, with reasons of our own and the policy's skew.
_SIGNATURE_ONLY = {
    "verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
    "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False,
    "require": [], "enforce_minimum_key_length": True,
}


class JwtValidator:
    """Validates JWTs against a policy and a key source; stateless apart from the jti store."""

    def __init__(self, jtis: UsedJtis | None = None, clock: Callable[[], float] = time.time):
        self.jtis = jtis
        self.clock = clock

    async def validate(self, token: str, policy: JwtPolicy, keys: KeySource) -> dict:
        """The verified claims, or InvalidJwt(reason) / KeysPending."""
        header = unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALL_ALGORITHMS:
            # `none` and anything unknown end here, whatever the key set holds.
            raise InvalidJwt(f"algorithm not accepted ({unverified(str(alg))})")
        if policy.algorithms and alg not in policy.algorithms:
            raise InvalidJwt(f"algorithm {alg} not allowed by the policy")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_CHARS):
            raise InvalidJwt("malformed kid")
        # jku, x5u, x5c, jwk: deliberately never read. The key comes from the trusted set alone.
        key_set = keys.keys()
        candidates = key_set.find(kid, alg)
        if not candidates:
            if kid is not None and not key_set.has_kid(kid):
                if keys.refetch():
                    raise KeysPending(detail="unknown kid: keys being refetched")
                raise InvalidJwt(f"unknown kid ({unverified(kid)})")
            raise InvalidJwt(f"no trusted key for algorithm {alg}")
        claims = self._verify_signature(token, alg, candidates)
        self._check_claims(claims, policy)
        if policy.require_jti:
            await self._claim_jti(claims, policy)
        return claims

    @staticmethod
    def _verify_signature(token: str, alg: str, candidates) -> dict:
        for key in candidates:
            try:
                claims = jwt.decode(token, key.key, algorithms=[alg], options=_SIGNATURE_ONLY)
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidKeyError:
                continue  # e.g. below pyjwt's minimum length for this algorithm
            except jwt.PyJWTError as exc:
                raise _decode_error(exc) from None
            if not isinstance(claims, dict):
                raise InvalidJwt("malformed token (claims are not an object)")
            _check_text(claims)
            return claims
        raise InvalidJwt(f"bad signature ({len(candidates)} candidate key(s))")

    def _check_claims(self, claims: dict, policy: JwtPolicy) -> None:
        now = self.clock()
        skew = policy.skew
        for name in policy.required:
            if claims.get(name) is None:
                raise InvalidJwt(f"missing claim {name}")
        # A present iss/sub is a non-empty string (RFC 7519 §4.1.1-2 StringOrURI): an empty
        # subject would name nobody, and a user or client looked up by it must not match "".
        for name in ("iss", "sub"):
            if name in claims and not isinstance(claims[name], str):
                raise InvalidJwt(f"{name} is not a string")
            if name in claims and not claims[name]:
                raise InvalidJwt(f"{name} is empty")
        iss = claims.get("iss")
        if iss is not None or "iss" in policy.required:
            if iss not in policy.issuers:
                raise InvalidJwt(f"issuer not accepted ({unverified(str(iss))})")
        sub = claims.get("sub")
        if policy.subject is not None and sub != policy.subject:
            raise InvalidJwt(f"subject not accepted ({unverified(str(sub))})")
        aud = claims.get("aud")
        if aud is not None or "aud" in policy.required:
            audiences = [aud] if isinstance(aud, str) else aud
            if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
                raise InvalidJwt("aud is not a string or a list of strings")
            if not set(audiences) & set(policy.audiences):
                raise InvalidJwt(f"audience not accepted ({', '.join(unverified(a) for a in audiences[:5])})")
        times = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            # A date that is present must be a NumericDate (RFC 7519 §2): null is malformed, not absent.
            if name in claims and not _is_number(value):
                raise InvalidJwt(f"{name} is not a number")
            times[name] = value
        exp, nbf, iat = times["exp"], times["nbf"], times["iat"]
        if exp is not None and now > exp + skew:
            raise InvalidJwt(f"expired {int(now - exp)} s ago (skew {skew} s)")
        if nbf is not None and nbf > now + skew:
            raise InvalidJwt(f"not valid for another {int(nbf - now)} s (nbf, skew {skew} s)")
        if iat is not None and iat > now + skew:
            raise InvalidJwt(f"issued {int(iat - now)} s in the future (iat, skew {skew} s)")
        if policy.max_lifetime is not None and exp is not None:
            start = iat if iat is not None else nbf if nbf is not None else now
            if exp - start > policy.max_lifetime:
                raise InvalidJwt(f"lifetime {int(exp - start)} s exceeds the maximum {policy.max_lifetime} s")

    async def _claim_jti(self, claims: dict, policy: JwtPolicy) -> None:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise InvalidJwt("missing jti")
        if len(jti) > MAX_JTI_CHARS:
            raise InvalidJwt("jti too long")
        if self.jtis is None:
            raise InvalidJwt("jti replay check unavailable (no store configured)")  # fail closed
        if not policy.jti_namespace:
            # One shared namespace would let one trust's jti block another's: fail closed.
            raise InvalidJwt("jti replay check without a namespace (client:, integration:, provider:)")
        exp = claims.get("exp")
        if exp is None:  # a policy that drops exp from `required` still bounds the memory
            exp = self.clock() + (policy.max_lifetime or 3600)
        expires_at = int(math.ceil(exp)) + policy.skew
        if not await self.jtis.first_use(policy.jti_namespace, jti, expires_at):
            raise InvalidJwt(f"jti replayed ({unverified(jti)})")

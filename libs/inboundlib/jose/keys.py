"""Trusted sets of JWS verification keys, and which algorithms each key may verify.

The key decides the algorithm, never the token (RFC 8725 §2.1, §3.1): an RSA key
verifies RS256/384/512 and PS256/384/512, an EC key only the ES algorithm of its
curve (RFC 7518 §3.4), an Ed25519/Ed448 key EdDSA (RFC 8037 §3.1), and an HMAC
key (`oct`) only HS256/384/512 and only when it was registered as a shared
secret (`KeySet.from_secret`). `oct` keys inside a JWKS are skipped: a JWKS is
published, and HS256 keyed with anything public is the classic forgery. A JWK
naming an `alg` is held to it; one marked `use: enc` or whose `key_ops` lack
`verify` is skipped (RFC 7517 §4.2, §4.3).

Parsing is pyjwt's (`PyJWK`) and cryptography's; nothing here reads JOSE by hand.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

log = logging.getLogger(__name__)

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHM_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
EDDSA = "EdDSA"
# HMAC: RFC 7518 §3.2, the key at least as long as the hash output.
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHM_BY_CURVE.values()) | {EDDSA}
ALL_ALGORITHMS = ASYMMETRIC_ALGORITHMS | frozenset(HMAC_MIN_BYTES)
MIN_RSA_BITS = 2048  # NIST SP 800-131A; smaller RSA keys are skipped
# Verifying costs the event loop time in the modulus size and the public exponent's length: a
# 3072-bit key with a 3000-bit exponent takes ~5 ms a verify, times every candidate key. Real
# keys use e = 65537 (NIST SP 800-56B: 2^16 < e < 2^256) and at most 8192 bits.
MAX_RSA_BITS = 8192
MAX_RSA_EXPONENT = 2**32
MAX_KEYS = 100  # a JWKS with more is cut there (a verifier tries candidates in turn)


@dataclass(frozen=True)
class Key:
    """One verification key: `kid` (None: none given), its JWK key type, the algorithms
    it may verify, and the key itself (a cryptography public key, or bytes for HMAC)."""
    kid: str | None
    kty: str
    algorithms: frozenset[str]
    key: object

    def __repr__(self) -> str:  # never print key material (an HMAC secret)
        return f"Key(kid={self.kid!r}, kty={self.kty!r}, algorithms={sorted(self.algorithms)})"


def _public_algorithms(public_key: object) -> tuple[str, frozenset[str]] | None:
    """(kty, algorithms) for an asymmetric public key, or None when it is not usable."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= public_key.key_size <= MAX_RSA_BITS:
            return None
        if public_key.public_numbers().e > MAX_RSA_EXPONENT:
            return None
        return "RSA", RSA_ALGORITHMS
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        alg = EC_ALGORITHM_BY_CURVE.get(public_key.curve.name)
        return ("EC", frozenset({alg})) if alg else None
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "OKP", frozenset({EDDSA})
    return None


def _as_public(key: object) -> object:
    """The public half: a JWK that carries private parameters still verifies with its public part."""
    public = getattr(key, "public_key", None)
    if callable(public) and not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey,
                                                 ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return public()
    return key


def _from_jwk(jwk: object, index: int) -> Key | None:
    """One JWK as a Key, or None (logged: why) when it cannot verify signatures here."""
    if not isinstance(jwk, dict):
        log.warning("JWKS key %d skipped: not an object", index)
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        log.warning("JWKS key %d skipped: kid is not a string", index)
        return None
    kty = jwk.get("kty")
    if kty == "oct":
        log.warning("JWKS key %d skipped: a symmetric (oct) key is never trusted from a JWKS", index)
        return None
    if jwk.get("use") not in (None, "sig"):
        log.info("JWKS key %d skipped: use is not sig", index)
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        log.info("JWKS key %d skipped: key_ops does not allow verify", index)
        return None
    alg = jwk.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS):  # a list: unhashable
        log.warning("JWKS key %d skipped: alg not accepted", index)
        return None
    try:
        # Only to build the key: which algorithms it may verify is decided below from its type.
        parsed = jwt.PyJWK(jwk, algorithm=alg)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        log.warning("JWKS key %d skipped: %s", index, type(exc).__name__)
        return None
    public = _as_public(parsed.key)
    usable = _public_algorithms(public)
    if usable is None:
        log.warning("JWKS key %d skipped: key type, curve or size not accepted", index)
        return None
    key_type, algorithms = usable
    if alg is not None:
        if alg not in algorithms:
            log.warning("JWKS key %d skipped: alg does not match the key", index)
            return None
        algorithms = frozenset({alg})
    return Key(kid, key_type, algorithms, public)


class KeySet:
    """An immutable trusted set of verification keys."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[Key] = ()):
        self._keys: tuple[Key, ...] = tuple(keys)[:MAX_KEYS]

    @property
    def keys(self) -> tuple[Key, ...]:
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeySet({list(self._keys)!r})"

    @classmethod
    def from_jwks(cls, jwks: dict | str) -> KeySet:
        """A JWK Set (RFC 7517 §5), as a dict or JSON text. Keys it cannot use are skipped
        (each logged with its position, never its material); a malformed set raises ValueError."""
        if isinstance(jwks, (str, bytes)):
            try:
                jwks = json.loads(jwks)
            except ValueError:
                raise ValueError("JWKS is not JSON") from None
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError("JWKS must be an object with a keys array")
        keys = []
        for i, jwk in enumerate(jwks["keys"]):
            if len(keys) == MAX_KEYS:
                # Parsing stops here: each EC key costs a point check, and a 256 KiB set holds ~1800.
                log.warning("JWKS has more than %d usable keys: only the first %d are used", MAX_KEYS, MAX_KEYS)
                break
            key = _from_jwk(jwk, i)
            if key is not None:
                keys.append(key)
        return cls(keys)

    @classmethod
    def from_certificate_pem(cls, pem: str) -> KeySet:
        """The public keys of one or more PEM certificates. Such a key has no kid and is a
        candidate whatever the token's kid says. The certificate's dates and chain are not
        checked: it is a container for a key the operator registered (RFC 7523 §3 trusts keys, not PKI)."""
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ValueError("not a PEM certificate") from None
        keys = []
        for certificate in certificates:
            usable = _public_algorithms(certificate.public_key())
            if usable is None:
                raise ValueError("the certificate's key type, curve or size is not accepted")
            keys.append(Key(None, usable[0], usable[1], certificate.public_key()))
        return cls(keys)

    @classmethod
    def from_secret(cls, secret: bytes, kid: str = "") -> KeySet:
        """A shared HMAC secret (client_secret_jwt, RFC 7523 §2.2 with RFC 7518 §3.2; or an
        integration the operator allowed HS256 for): HS256, and HS384 / HS512 when it is long
        enough. kid "" matches any token kid."""
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        algorithms = frozenset(alg for alg, size in HMAC_MIN_BYTES.items() if len(secret) >= size)
        if not algorithms:
            raise ValueError(f"an HMAC secret needs at least {HMAC_MIN_BYTES['HS256']} bytes")
        return cls([Key(kid or None, "oct", algorithms, bytes(secret))])

    def pinned(self, kid: str) -> KeySet:
        """Only the key with this kid (an integration pinned to one key)."""
        return KeySet(k for k in self._keys if k.kid == kid)

    def has_kid(self, kid: str) -> bool:
        return any(k.kid == kid for k in self._keys)

    def find(self, kid: str | None, alg: str) -> list[Key]:
        """The keys that may verify a token with this header: those allowed `alg` whose kid
        equals the token's (compared as strings, nothing else), or that have no kid. A token
        without a kid is tried against every key allowed `alg`."""
        return [k for k in self._keys
                if alg in k.algorithms and (kid is None or k.kid is None or k.kid == kid)]


class StaticKeys:
    """A KeySource (inboundlib.jose.validator) over a fixed set: an inline JWKS, a PEM
    certificate or a shared secret. There is nothing to refetch."""

    def __init__(self, key_set: KeySet):
        self._key_set = key_set

    def keys(self) -> KeySet:
        return self._key_set

    def refetch(self) -> bool:
        return False

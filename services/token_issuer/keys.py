"""Signing keys: generation, encryption at rest, JWKS, and which key signs now.

Private keys are encrypted here (AES-256-GCM under the key-encryption key,
with the kid as associated data) before they are stored through
client_registry, so every replica signs with the same keys and the database
never holds one in clear. `kid` is the RFC 7638 JWK thumbprint.

The key-encryption key is a list so it can rotate without downtime: the first
encrypts, every one decrypts (as MultiFernet does). Rotation: put the new key
first on every replica, then rewrap (re-encrypt every stored key under it),
then drop the old one.

One key signs per algorithm: access tokens use INBOUND_SIGNING_ALG's (ES256 by
default), ID tokens INBOUND_ID_TOKEN_ALG's (RS256 by default; OpenID Connect Core
§15.1 requires RS256 available).

Rotation (RFC 7517 practice, hydra#2535): a new key is published in the JWKS
at once but signs only from `activates_at`, so resource servers' JWKS caches
learn it before the first token signed with it arrives. Older keys stay in
the JWKS so tokens they signed keep verifying.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from inboundlib.kek import KeyEncryptor
from services.client_registry.api import SigningKeyRecord

log = logging.getLogger(__name__)

ALGORITHMS = ("ES256", "RS256", "EdDSA")
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def generate_private_key(alg: str):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported signing algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")


def public_jwk(alg: str, private_key) -> dict[str, Any]:
    """The public JWK (RFC 7517) with kid = RFC 7638 thumbprint."""
    public = private_key.public_key()
    codec = {"ES256": ECAlgorithm, "RS256": RSAAlgorithm, "EdDSA": OKPAlgorithm}[alg]
    jwk = codec.to_jwk(public, as_dict=True)
    required = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(required, separators=(",", ":"), sort_keys=True).encode()).digest()
    jwk.update(kid=base64.urlsafe_b64encode(digest).rstrip(b"=").decode(), use="sig", alg=alg)
    return jwk


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: Any
    jwk: dict[str, Any]
    created_at: int
    activates_at: int

    @cached_property
    def public_key(self):
        return self.private_key.public_key()


def new_key_record(alg: str, encryptor: KeyEncryptor, activates_at: int | None = None) -> SigningKeyRecord:
    private_key = generate_private_key(alg)
    jwk = public_jwk(alg, private_key)
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    now = int(time.time())
    return SigningKeyRecord(kid=jwk["kid"], alg=alg, encrypted_private_key=encryptor.encrypt(jwk["kid"], pem),
                            public_jwk_json=json.dumps(jwk), created_at=now,
                            activates_at=now if activates_at is None else activates_at)


class UnreadableKey(Exception):
    """A stored key this replica cannot use; the message says why (never any key material)."""


def open_key_record(record: SigningKeyRecord, encryptor: KeyEncryptor) -> SigningKey:
    """The stored key, decrypted and checked: a private key of its `alg` whose
    thumbprint is its kid (so a stored record cannot pair one key with another's
    kid or public JWK). The JWK published is the one derived from the private key."""
    try:
        pem = encryptor.decrypt(record.kid, record.encrypted_private_key)
    except InvalidTag:
        raise UnreadableKey("does not decrypt with any key-encryption key") from None
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
        jwk = public_jwk(record.alg, private_key)
    except Exception:  # anything wrong in stored bytes: not a key of this algorithm
        raise UnreadableKey(f"decrypts, but is not a {record.alg} private key") from None
    if jwk["kid"] != record.kid:
        raise UnreadableKey("decrypts, but its thumbprint is not its kid")
    return SigningKey(kid=record.kid, alg=record.alg, private_key=private_key, jwk=jwk,
                      created_at=record.created_at, activates_at=record.activates_at)


class KeyRing:
    """The keys this replica knows, newest activation last. Keys that activate in
    the same second keep the order given (the registry's creation order).

    One key signs per algorithm (access tokens with INBOUND_SIGNING_ALG's, ID tokens
    with INBOUND_ID_TOKEN_ALG's): rotating one algorithm's key leaves the other's
    signing, and each algorithm's retired keys are published while their tokens live."""

    def __init__(self, keys: list[SigningKey] | None = None):
        self.keys: list[SigningKey] = sorted(keys or [], key=lambda k: k.activates_at)

    def signing_key(self, alg: str, now: float | None = None) -> SigningKey | None:
        """The newest key of `alg` active at `now`."""
        now = time.time() if now is None else now
        active = [k for k in self.keys if k.alg == alg and k.activates_at <= now]
        return active[-1] if active else None

    def signing_keys(self, now: float | None = None) -> dict[str, SigningKey]:
        """The key that signs now, by algorithm (algorithms with no active key left out)."""
        now = time.time() if now is None else now
        return {k.alg: k for k in self.keys if k.activates_at <= now}  # the newest of each alg wins

    def algorithms(self) -> set[str]:
        return {k.alg for k in self.keys}

    def by_kid(self, kid: str) -> SigningKey | None:
        return next((k for k in self.keys if k.kid == kid), None)

    def published(self, max_token_lifetime: int, now: float | None = None) -> list[SigningKey]:
        """Keys to publish: the signing one of each algorithm, every future one (so caches
        learn them before they sign), and retired ones until the last token they signed
        expires. A key retires when a newer key of ITS algorithm activates: a rotation of
        another algorithm's key leaves it signing and published."""
        now = time.time() if now is None else now
        result = []
        for i, key in enumerate(self.keys):
            successor = next((k for k in self.keys[i + 1:] if k.alg == key.alg and k.activates_at <= now), None)
            if successor is None or successor.activates_at + max_token_lifetime > now:
                result.append(key)
        return result

    def jwks(self, max_token_lifetime: int = 24 * 3600) -> dict[str, Any]:
        return {"keys": [k.jwk for k in self.published(max_token_lifetime)]}

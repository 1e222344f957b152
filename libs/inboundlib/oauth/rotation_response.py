"""The answer to a refresh-token rotation, kept for retries (RFC 9700 §4.14.2).

A client that sends the same refresh token twice within the grace window (a
mobile app retrying over a flaky network) gets the very tokens the first request
produced, so the registry keeps that first answer beside the consumed token. The
answer holds live bearer credentials (an access token and the successor refresh
token), so it is stored sealed: AES-256-GCM under a key derived with HKDF-SHA256
from the presented refresh token itself, which the registry never sees (it keeps
only its SHA-256). Only the holder of the consumed token can open it; a database
leak, a backup or an operator reading the table yields nothing usable. The
token's 256 random bits make a fast KDF enough (nothing to brute-force).
The consumed token's hash is bound in as associated data, so a blob moved to
another row does not open there.
"""
from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from inboundlib.grants.api import TokenResponse

VERSION = b"\x01"
NONCE_BYTES = 12
_INFO = b"inbound refresh-token rotation response v1"


class UnreadableResponse(Exception):
    """The blob does not open with this token (another token, tampered, or not ours)."""


def _key(refresh_token: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        refresh_token.encode("utf-8", "surrogatepass"))


def seal(refresh_token: str, token_hash: bytes, response: TokenResponse) -> bytes:
    """`response` encrypted for the holder of `refresh_token` (whose SHA-256 is `token_hash`)."""
    plaintext = json.dumps(response.to_json(), separators=(",", ":")).encode()
    nonce = os.urandom(NONCE_BYTES)
    return VERSION + nonce + AESGCM(_key(refresh_token)).encrypt(nonce, plaintext, VERSION + token_hash)


def open_sealed(refresh_token: str, token_hash: bytes, blob: bytes) -> TokenResponse:
    """The response `seal` stored; UnreadableResponse if this token cannot open it."""
    if len(blob) <= len(VERSION) + NONCE_BYTES or blob[:1] != VERSION:
        raise UnreadableResponse("not a sealed rotation response")
    nonce = blob[1:1 + NONCE_BYTES]
    try:
        plaintext = AESGCM(_key(refresh_token)).decrypt(nonce, blob[1 + NONCE_BYTES:], VERSION + token_hash)
    except InvalidTag:
        raise UnreadableResponse("the rotation response does not open with this token") from None
    body = json.loads(plaintext)
    return TokenResponse(access_token=body["access_token"], token_type=body["token_type"],
                         expires_in=int(body["expires_in"]), scope=body.get("scope", ""),
                         refresh_token=body.get("refresh_token", ""))

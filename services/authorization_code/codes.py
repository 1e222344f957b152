"""Authorization codes (RFC 6749 §4.1.2): their shape and the SHA-256 they are stored and
looked up by. One place, shared by the authorize side (which mints them) and the
code-for-token exchange (grant.py, which recognises ours by shape before asking the
registry), so the two can never hash differently.

A code is `ibc_` + 256 random bits (43 base64url characters): the prefix lets secret
scanners spot one (as `ibo_`/`ibr_` tokens), the randomness makes guessing hopeless
(RFC 6749 §10.10). The registry keeps only `code_hash(code)`.
"""
from __future__ import annotations

import hashlib
import secrets

CODE_PREFIX = "ibc_"
# ibc_ + 43 characters; anything much longer is not one of ours, and is refused unhashed.
MAX_CODE_LENGTH = 128


def new_code() -> str:
    return CODE_PREFIX + secrets.token_urlsafe(32)


def code_hash(code: str) -> bytes:
    """What the registry keys a code by (AuthorizationCodeRecord.code_hash). Any text
    hashes (lone surrogates too), so junk is simply not found."""
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).digest()


def is_code_shaped(value: str) -> bool:
    """Could `value` be a code we minted? (A cheap refusal before any lookup.)"""
    return value.startswith(CODE_PREFIX) and len(value) <= MAX_CODE_LENGTH

"""Opaque tokens (opaque access tokens and refresh tokens): their shape, and the
SHA-256 they are stored and looked up by. One place, shared by token_issuer (which
makes the first ones and introspects them) and the refresh_token grant (which makes
each successor and recognises ours by shape before asking the registry)."""
from __future__ import annotations

import hashlib
import secrets

OPAQUE_PREFIX = "ibo_"
REFRESH_PREFIX = "ibr_"


def _new(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)  # 256 random bits, 43 base64url characters


def new_opaque_token() -> str:
    return _new(OPAQUE_PREFIX)


def new_refresh_token() -> str:
    return _new(REFRESH_PREFIX)


def token_hash(token: str) -> bytes:
    """What the registry keys opaque tokens by: only this is ever stored. Any text hashes
    (lone surrogates too), so a lookup of junk is simply not found."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

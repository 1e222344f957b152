"""Time-ordered token ids: a jti is a UUIDv7 (RFC 9562 §5.7), whose first 48 bits
are the issue time in Unix milliseconds and the other 74 are random.

JWT `iat` stays a whole number of seconds (RFC 7519 allows fractions, but
client libraries dislike them), so the jti is where a JWT carries its precise
issue time: revocation cut-offs compare at the millisecond. The jti is inside
the signed claims, so the time in it is as trustworthy as `iat`.
"""
from __future__ import annotations

import re
import secrets
import uuid

_UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def new_jti(now_ms: int) -> str:
    rand = secrets.randbits(74)
    value = (now_ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | rand & (2**62 - 1)
    return str(uuid.UUID(int=value))


def issued_at_ms(jti: str, iat: int) -> int:
    """The issue time in ms from a time-ordered jti, when it agrees with `iat` (seconds);
    otherwise (a jti from before these ids, or from elsewhere) the start of iat's second."""
    if len(jti) == 36 and _UUID7.match(jti):
        ms = int(jti[:8] + jti[9:13], 16)
        if ms // 1000 == iat:
            return ms
    return iat * 1000

"""How a caller-supplied value that matched nothing known may be logged or audited.

A client id that names no client, a `grant_type` nobody serves, a parameter
name we do not know: any of them may be a secret pasted into the wrong field,
and the audit table keeps what it is given for good. Such values are written
only as `unverified(value)`: a few leading characters (printable ASCII only)
and a SHA-256 prefix, enough to tell "the same junk again" and to find it
when its owner reports it, never enough to use it.
Values that matched (a registered client's id, a supported grant type) are
ours and are written as they are.
"""
from __future__ import annotations

import hashlib

KEEP_CHARS = 4
HASH_HEX = 12
# The longest fingerprint `unverified` returns: fits any column sized for ids.
MAX_LENGTH = KEEP_CHARS + 1 + len("sha256:") + HASH_HEX


def unverified(value: str) -> str:
    """`abcd…sha256:0123456789ab`; the empty string stays empty."""
    if not value:
        return ""
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]
    head = "".join(c if " " < c < "\x7f" else "?" for c in value[:KEEP_CHARS])
    return f"{head}…sha256:{digest}"

"""Access token scope: RFC 6749 §3.3."""
from __future__ import annotations

import re

from inboundlib import redact
from inboundlib.oauth.errors import InvalidScope

# scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
MAX_SCOPES = 100


def parse_scope(value: str | None) -> list[str]:
    """A space-delimited, case-sensitive list; order is not significant, duplicates collapse."""
    if value is None or value == "":
        return []
    tokens = value.split(" ")
    if any(not SCOPE_TOKEN.fullmatch(token) for token in tokens):
        raise InvalidScope("The scope parameter is malformed.")
    unique = list(dict.fromkeys(tokens))
    if len(unique) > MAX_SCOPES:
        raise InvalidScope("Too many scopes were requested.")
    return unique


def is_valid_scope_token(token: str) -> bool:
    return bool(SCOPE_TOKEN.fullmatch(token))


def narrow_scopes(requested: str | None, allowed: list[str]) -> list[str]:
    """§3.3: grant what was asked if the client may have all of it; with no
    request, grant the client's registered scopes (the pre-defined default)."""
    wanted = parse_scope(requested)
    if not wanted:
        return list(allowed)
    allowed_set = set(allowed)
    beyond = [scope for scope in wanted if scope not in allowed_set]
    if beyond:
        # The caller's values, matched by nothing the client holds: maybe a secret
        # sent in the wrong field. The log and the audit table get fingerprints only.
        raise InvalidScope(detail=f"{len(beyond)} scope(s) not allowed for client: "
                                  f"{[redact.unverified(scope) for scope in beyond]}")
    return wanted


def format_scope(scopes: list[str]) -> str:
    return " ".join(scopes)

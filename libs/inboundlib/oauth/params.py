"""Token endpoint request parsing: RFC 6749 §3.2 and Appendix B.

- The body is application/x-www-form-urlencoded, UTF-8 (§3.2, Appendix B).
- A parameter sent without a value is treated as omitted (§3.1).
- Parameters must not be included more than once (§3.1, §3.2), except those an
  extension defines as repeatable at the token endpoint: `resource` (RFC 8707
  §2) and `audience` (RFC 8693 §2.1).
"""
from __future__ import annotations

from urllib.parse import parse_qsl

from inboundlib import redact
from inboundlib.oauth.errors import InvalidRequest

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_BODY_BYTES = 16 * 1024
MAX_PARAMS = 64
# Parameter names of the OAuth endpoints (RFC 6749, 7009, 7523, 7636, 7662, 8693, 8707):
# a known name may be logged as it is; any other is the caller's text, fingerprinted.
KNOWN_PARAMS = frozenset({
    "grant_type", "scope", "client_id", "client_secret", "code", "redirect_uri", "code_verifier", "username",
    "password", "refresh_token", "assertion", "client_assertion", "client_assertion_type", "resource", "audience",
    "subject_token", "subject_token_type", "actor_token", "actor_token_type", "requested_token_type", "token",
    "token_type_hint", "state", "response_type", "nonce"})
# The token endpoint's parameters that may repeat; each grant then declares which
# of them it takes (inboundlib.grants.api.GrantParameters).
REPEATABLE_TOKEN_PARAMS = frozenset({"resource", "audience"})


def check_content_type(header: str | None) -> None:
    """§3.2: the token endpoint takes form-encoded bodies only (a charset, if given, must be UTF-8)."""
    if not header:
        raise InvalidRequest("Content-Type must be application/x-www-form-urlencoded.")
    media_type, _, rest = header.partition(";")
    if media_type.strip().lower() != FORM_CONTENT_TYPE:
        raise InvalidRequest("Content-Type must be application/x-www-form-urlencoded.")
    for param in rest.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise InvalidRequest("The request body must be UTF-8.")


def parse_form(body: bytes) -> dict[str, str]:
    """Decode a form body into single-valued parameters; empty values count as omitted."""
    return {name: values[0] for name, values in parse_form_multi(body).items()}


def parse_form_multi(body: bytes, repeatable: frozenset[str] = frozenset()) -> dict[str, tuple[str, ...]]:
    """Decode a form body: each parameter with its values in the order sent. A
    repeat is refused unless the name is in `repeatable`; empty values count as
    omitted (a parameter all of whose values are empty is left out)."""
    try:
        text = body.decode("utf-8", errors="strict")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, encoding="utf-8",
                          errors="strict", max_num_fields=MAX_PARAMS)
    except UnicodeDecodeError:
        raise InvalidRequest("The request body must be UTF-8.") from None
    except ValueError:
        raise InvalidRequest("Too many parameters.") from None
    params: dict[str, list[str]] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen and name not in repeatable:
            shown = name if name in KNOWN_PARAMS else redact.unverified(name)  # unknown: maybe a secret
            raise InvalidRequest("A parameter was repeated.", detail=f"repeated parameter {shown}")
        seen.add(name)
        if "\x00" in name or "\x00" in value:
            raise InvalidRequest("The request contains an invalid character.")
        if value != "":
            params.setdefault(name, []).append(value)
    return {name: tuple(values) for name, values in params.items()}

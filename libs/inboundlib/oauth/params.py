"""Token endpoint request parsing: RFC 6749 §3.2 and Appendix B.

- The body is application/x-www-form-urlencoded, UTF-8 (§3.2, Appendix B).
- A parameter sent without a value is treated as omitted (§3.1).
- Parameters must not be included more than once (§3.1, §3.2).
"""
from __future__ import annotations

from urllib.parse import parse_qsl

from inboundlib.oauth.errors import InvalidRequest

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_BODY_BYTES = 16 * 1024
MAX_PARAMS = 64


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
    try:
        text = body.decode("utf-8", errors="strict")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, encoding="utf-8",
                          errors="strict", max_num_fields=MAX_PARAMS)
    except UnicodeDecodeError:
        raise InvalidRequest("The request body must be UTF-8.") from None
    except ValueError:
        raise InvalidRequest("Too many parameters.") from None
    params: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raise InvalidRequest("A parameter was repeated.", detail=f"repeated parameter {name!r}")
        seen.add(name)
        if "\x00" in name or "\x00" in value:
            raise InvalidRequest("The request contains an invalid character.")
        if value != "":
            params[name] = value
    return params

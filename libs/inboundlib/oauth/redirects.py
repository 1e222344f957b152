"""Redirect URIs at the authorization endpoint, and where its answer goes.

- RFC 9700 §4.1.3 (and §2.1): a redirect URI is accepted only when it is exactly,
  character for character, one of the client's registered ones (RFC 3986 §6.2.1
  simple string comparison): no normalisation, no prefix or pattern, no default
  when it is missing (OAuth 2.1 §4.1.1 requires it).
- RFC 6749 §4.1.2 / §4.2.2 and OAuth 2.0 Multiple Response Type Encoding Practices
  §2.1: the response's parameters go in the redirect URI's query (its own query
  kept, §3.1.2) or in its fragment; RFC 9207 §2 adds `iss`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

from inboundlib.oauth.errors import InvalidRequest

# Longer than any URI the registry accepts (services/client_registry/clients.py).
MAX_REDIRECT_URI_LENGTH = 2000
QUERY = "query"
FRAGMENT = "fragment"
RESPONSE_MODES = (QUERY, FRAGMENT)


def registered_redirect_uri(value: str | None, registered: Sequence[str]) -> str:
    """`value` when it is exactly one of `registered`; else InvalidRequest (missing, too
    long, or not registered: a different path, an extra path segment, another port or
    case, a trailing slash all count as not registered). The caller shows an error page:
    such a URI is never redirected to (RFC 6749 §4.1.2.1)."""
    if not value:
        raise InvalidRequest("The redirect_uri parameter is missing.", detail="no redirect_uri")
    if len(value) > MAX_REDIRECT_URI_LENGTH:
        raise InvalidRequest("The redirect_uri is not registered for this client.", detail="redirect_uri too long")
    if value not in registered:
        raise InvalidRequest("The redirect_uri is not registered for this client.",
                             detail="redirect_uri is not one of the client's")
    return value


def response_location(redirect_uri: str, params: Iterable[tuple[str, str]], mode: str) -> str:
    """The redirect URI with the response's parameters (empty values left out) in its
    query (after its own query parameters) or in its fragment."""
    if mode not in RESPONSE_MODES:
        raise ValueError(f"response mode {mode!r}")
    encoded = urlencode([(name, value) for name, value in params if value])
    scheme, netloc, path, query, _ = urlsplit(redirect_uri)
    if mode == FRAGMENT:
        return urlunsplit((scheme, netloc, path, query, encoded))
    return urlunsplit((scheme, netloc, path, f"{query}&{encoded}" if query else encoded, ""))

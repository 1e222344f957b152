"""OAuth errors: one class per registered error code.

Services raise these and carry them as data (common.v1.OAuthError); only the
edge turns them into HTTP. An error is a code and its public text, nothing
about HTTP: the status, the challenge header or the redirect is each
endpoint's decision (services/edge/errors.py), since one code answers
differently at the token endpoint (RFC 6749 §5.2), a protected resource
(RFC 6750 §3.1) and a browser endpoint (RFC 6749 §4.1.2.1).
`description` is the public, generic text; `detail` is private and goes to
the log only.
"""
from __future__ import annotations


class OAuthError(Exception):
    code = "server_error"
    default_description = "The request could not be processed."

    def __init__(self, description: str | None = None, *, detail: str = ""):
        self.description = description or self.default_description
        self.detail = detail
        super().__init__(f"{self.code}: {self.description}" + (f" ({detail})" if detail else ""))

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "error_description": self.description}


class InvalidRequest(OAuthError):
    """RFC 6749 §5.2: missing, repeated or malformed parameter, or more than one auth method."""
    code = "invalid_request"
    default_description = "The request is missing a parameter or is otherwise malformed."


class InvalidClient(OAuthError):
    """RFC 6749 §5.2: client authentication failed (unknown client, bad secret, no auth)."""
    code = "invalid_client"
    default_description = "Client authentication failed."


class InvalidGrant(OAuthError):
    """RFC 6749 §5.2: the grant or refresh token is invalid, expired, revoked or mismatched."""
    code = "invalid_grant"
    default_description = "The provided authorization grant is invalid."


class UnauthorizedClient(OAuthError):
    """RFC 6749 §5.2: the client may not use this grant type."""
    code = "unauthorized_client"
    default_description = "The client is not authorized to use this grant type."


class UnsupportedGrantType(OAuthError):
    """RFC 6749 §5.2: the server does not support the grant type."""
    code = "unsupported_grant_type"
    default_description = "The grant type is not supported."


class InvalidScope(OAuthError):
    """RFC 6749 §5.2: the scope is invalid, unknown, malformed or beyond what the client may have."""
    code = "invalid_scope"
    default_description = "The requested scope is invalid or exceeds the scope granted to the client."


class AccessDenied(OAuthError):
    """RFC 6749 §4.1.2.1: the resource owner or server denied the request."""
    code = "access_denied"
    default_description = "Access denied."


class UnsupportedTokenType(OAuthError):
    """RFC 7009 §2.2.1: the server cannot revoke this token type."""
    code = "unsupported_token_type"
    default_description = "The token type is not supported."


class InvalidToken(OAuthError):
    """RFC 6750 §3.1: the access token is expired, revoked, malformed or invalid."""
    code = "invalid_token"
    default_description = "The access token is invalid."


class InsufficientScope(OAuthError):
    """RFC 6750 §3.1: the token lacks the scope the resource needs."""
    code = "insufficient_scope"
    default_description = "The access token does not carry the required scope."


class ServerError(OAuthError):
    """RFC 6749 §4.1.2.1 (used at the token endpoint too): an unexpected condition."""
    code = "server_error"
    default_description = "The server encountered an unexpected condition."


class TemporarilyUnavailable(OAuthError):
    """RFC 6749 §4.1.2.1: overloaded or a dependency is down; retry later."""
    code = "temporarily_unavailable"
    default_description = "The service is temporarily unavailable; retry later."


class KeysPending(TemporarilyUnavailable):
    """Not an RFC code: an internal outcome that never reaches HTTP as such. The answer
    needs keys that are being fetched in the background (a JWKS or discovery document of
    a client, an integration or a provider): nobody waits for outgoing HTTP inside a
    batch, where other clients' requests wait with it. The edge, where each request has
    a task of its own, sends such a request again shortly, within its budget; a caller
    that cannot (gRPC introspection) answers temporarily_unavailable, which it is."""
    code = "keys_pending"
    default_description = TemporarilyUnavailable.default_description


class InvalidTarget(OAuthError):
    """RFC 8707 §2, RFC 8693 §2.2.2: a `resource` or `audience` the server will not issue a token for."""
    code = "invalid_target"
    default_description = "The requested resource or audience is not allowed."


class UnsupportedResponseType(OAuthError):
    """RFC 6749 §4.1.2.1: the server does not offer this response_type (or not to this client)."""
    code = "unsupported_response_type"
    default_description = "The response type is not supported."


class InteractionRequired(OAuthError):
    """OpenID Connect Core §3.1.2.6: prompt=none, but the user must interact."""
    code = "interaction_required"
    default_description = "The user must interact with the authorization server."


class LoginRequired(OAuthError):
    """OpenID Connect Core §3.1.2.6: prompt=none, and no session (or too old for max_age)."""
    code = "login_required"
    default_description = "The user must sign in."


class ConsentRequired(OAuthError):
    """OpenID Connect Core §3.1.2.6: prompt=none, and the user has not consented."""
    code = "consent_required"
    default_description = "The user must consent."


class RequestNotSupported(OAuthError):
    """OpenID Connect Core §3.1.2.6, §6: the `request` parameter (a request object) is not supported."""
    code = "request_not_supported"
    default_description = "The request parameter is not supported."


class RequestUriNotSupported(OAuthError):
    """OpenID Connect Core §3.1.2.6, §6: the `request_uri` parameter is not supported."""
    code = "request_uri_not_supported"
    default_description = "The request_uri parameter is not supported."


BY_CODE: dict[str, type[OAuthError]] = {
    cls.code: cls
    for cls in (InvalidRequest, InvalidClient, InvalidGrant, UnauthorizedClient, UnsupportedGrantType,
                InvalidScope, AccessDenied, UnsupportedTokenType, InvalidToken, InsufficientScope,
                ServerError, TemporarilyUnavailable, UnsupportedResponseType, InteractionRequired, LoginRequired,
                ConsentRequired, RequestNotSupported, RequestUriNotSupported, KeysPending, InvalidTarget)
}


def from_code(code: str, description: str = "") -> OAuthError:
    """Rebuild an error carried as data; an unknown code becomes server_error."""
    cls = BY_CODE.get(code, ServerError)
    return cls(description or None)

"""token_issuer's interface as plain Python; issuer.py implements it, client.py calls it over gRPC."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from inboundlib.oauth.errors import OAuthError
from inboundlib.oauth.token_exchange import parse_act_json

FORMAT_JWT = "jwt"
FORMAT_OPAQUE = "opaque"
# The released user claims of one ID token, as JSON (a user's profile and email claims are
# a few hundred bytes; the bound keeps a bug from minting megabyte tokens).
MAX_ID_TOKEN_CLAIMS_BYTES = 16_384


@dataclass(frozen=True)
class IdTokenRequest:
    """An OpenID Connect ID token to issue beside the access token (Core §2): audience the
    client, subject the request's, signed with the ID-token algorithm's active key
    (INBOUND_ID_TOKEN_ALG, RS256 by default)."""
    nonce: str = ""
    auth_time: int = 0  # unix seconds
    sid: str = ""
    # The claims the granted scopes release (inboundlib.oauth.oidc.claims_for).
    claims: dict = field(default_factory=dict, hash=False)
    # The code sent with it, for c_hash ("" for none).
    code: str = field(default="", repr=False)
    # Add at_hash of the access token issued with it.
    at_hash: bool = False
    lifetime_seconds: int = 0  # 0: the configured default


@dataclass(frozen=True)
class IssueRequest:
    client_id: str
    subject: str
    scopes: tuple[str, ...]
    format: str
    lifetime_seconds: int
    audience: tuple[str, ...] = ()
    username: str = ""
    request_id: str = ""
    grant_type: str = ""
    # Tokens from one authorization grant share it; empty starts a new grant.
    grant_id: str = ""
    # > 0: issue a refresh token with this lifetime too.
    refresh_token_lifetime: int = 0
    # With a refresh token: its family ends this many seconds from now whatever its rotations (0: never).
    refresh_token_absolute_lifetime: int = 0
    # > 0: when the user's credentials were checked (ms, the registry's clock; UserRecord.verified_at_ms).
    # The tokens are stamped with it when earlier than now: a subject cut-off recorded after the
    # check (a password change racing the sign-in) then covers them.
    authenticated_at_ms: int = 0
    id_token: IdTokenRequest | None = None
    # RFC 8693 §4.1 `act` (the acting party), a JSON object as text; "" for none.
    act_json: str = ""
    # The OpenID provider whose token was exchanged for this one, for the audit record ("" for none).
    provider: str = ""


@dataclass(frozen=True)
class IssuedToken:
    access_token: str = field(repr=False)
    expires_in: int
    jti: str
    issued_at: int
    token_type: str = "Bearer"
    refresh_token: str = field(default="", repr=False)
    grant_id: str = ""
    id_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    alg: str
    created_at: int
    activates_at: int
    signing: bool


@dataclass(frozen=True)
class RewrapReport:
    """What `inboundctl keys rewrap` did, by kid."""
    rewrapped: tuple[str, ...] = ()  # re-encrypted under the first key-encryption key now
    current: tuple[str, ...] = ()  # already under it
    unreadable: tuple[str, ...] = ()  # opens with none of the key-encryption keys: left as stored


@dataclass(frozen=True)
class TokenInfo:
    """RFC 7662 §2.2 answer; inactive answers carry nothing else."""
    active: bool
    scope: str = ""
    client_id: str = ""
    sub: str = ""
    username: str = ""
    token_type: str = ""
    exp: int = 0
    iat: int = 0
    iss: str = ""
    aud: tuple[str, ...] = field(default=())
    jti: str = ""
    act_json: str = ""  # RFC 8693 §4.1 `act` (JSON object text)
    # A third-party token accepted as-is: the registered provider's name (sub/username: the mapped user).
    provider: str = ""

    def to_json(self) -> dict:
        if not self.active:
            return {"active": False}
        body = {"active": True, "scope": self.scope, "client_id": self.client_id, "sub": self.sub,
                "token_type": self.token_type, "exp": self.exp, "iat": self.iat, "iss": self.iss,
                "aud": self.aud[0] if len(self.aud) == 1 else list(self.aud), "jti": self.jti}
        if self.username:
            body["username"] = self.username
        act = parse_act_json(self.act_json)
        if act is not None:
            body["act"] = act  # RFC 8693 §4.1, as the object it is in the token
        if self.provider:
            body["provider"] = self.provider
        return body


class TokenIssuerApi(Protocol):
    async def issue(self, request: IssueRequest) -> IssuedToken:
        """Raises OAuthError when the token cannot be issued."""
        ...

    async def jwks(self) -> dict: ...
    async def list_keys(self) -> list[KeyInfo]: ...
    async def rotate_key(self, alg: str = "", activation_delay: int | None = None) -> KeyInfo: ...
    async def rewrap_keys(self) -> RewrapReport: ...


__all__ = ["IdTokenRequest", "IssueRequest", "IssuedToken", "KeyInfo", "RewrapReport", "TokenIssuerApi", "OAuthError", "FORMAT_JWT", "FORMAT_OPAQUE"]

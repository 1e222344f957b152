"""Token requests and responses as plain Python (RFC 6749 §4, §5.1)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from inboundlib.oauth.client_auth import ClientCredentials


@dataclass(frozen=True)
class TokenRequest:
    grant_type: str
    client: ClientCredentials | None
    # Form parameters other than the client credentials, single-valued.
    params: dict[str, str] = field(default_factory=dict, repr=False)
    request_id: str = ""


@dataclass(frozen=True)
class TokenResponse:
    """RFC 6749 §5.1 successful response; empty fields are left out of the JSON."""
    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str = ""
    refresh_token: str = field(default="", repr=False)
    id_token: str = field(default="", repr=False)
    issued_token_type: str = ""

    def to_json(self) -> dict:
        body: dict = {"access_token": self.access_token, "token_type": self.token_type,
                      "expires_in": self.expires_in}
        for name in ("scope", "refresh_token", "id_token", "issued_token_type"):
            value = getattr(self, name)
            if value:
                body[name] = value
        return body


class GrantHandler(Protocol):
    """One grant type's logic (fosite-style: one handler per grant). Raises OAuthError."""

    grant_type: str

    async def handle(self, request: TokenRequest) -> TokenResponse: ...

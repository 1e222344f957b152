"""Token requests and responses as plain Python (RFC 6749 §4, §5.1)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from inboundlib import redact
from inboundlib.oauth.client_auth import AuthenticatableClient, ClientCredentials
from inboundlib.oauth.errors import InvalidRequest


@dataclass(frozen=True)
class RequestContext:
    """Where the HTTP request came from, as the edge saw it (common.v1.RequestContext)."""
    client_address: str = ""
    user_agent: str = ""
    endpoint_url: str = ""


NO_CONTEXT = RequestContext()


@dataclass(frozen=True)
class TokenRequest:
    grant_type: str
    client: ClientCredentials | None
    # Form parameters other than grant_type and the client credentials, each with
    # its values in the order sent (several only for the repeatable ones).
    params: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    request_id: str = ""
    context: RequestContext = NO_CONTEXT

    def param(self, name: str) -> str | None:
        """A single-valued parameter (the grant runner refused a repeat of it)."""
        values = self.params.get(name)
        return values[0] if values else None

    def values(self, name: str) -> tuple[str, ...]:
        """Every value of a repeatable parameter (RFC 8707 `resource`, RFC 8693 `audience`)."""
        return self.params.get(name, ())


@dataclass(frozen=True)
class GrantParameters:
    """The parameters a grant takes, besides grant_type and client authentication,
    and which of them may repeat. The grant runner drops the others (RFC 6749 §3.1:
    unrecognised parameters are ignored) and refuses a repeat of a single-valued
    one (§3.1: parameters MUST NOT be included more than once)."""
    single: frozenset[str] = frozenset()
    repeatable: frozenset[str] = frozenset()

    def __post_init__(self):
        if self.single & self.repeatable:
            raise ValueError(f"parameters both single and repeatable: {sorted(self.single & self.repeatable)}")

    def select(self, params: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        selected: dict[str, tuple[str, ...]] = {}
        for name, values in params.items():
            if name in self.single:
                if len(values) > 1:
                    raise InvalidRequest("A parameter was repeated.", detail=f"repeated parameter {name}")
                selected[name] = tuple(values)
            elif name in self.repeatable:
                selected[name] = tuple(values)
        return selected

    def ignored(self, params: Mapping[str, tuple[str, ...]]) -> list[str]:
        """The names `select` drops, fingerprinted for a debug log (they are the caller's, unchecked)."""
        return [redact.unverified(name) for name in params if name not in self.single | self.repeatable]


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
    """One grant type's logic (fosite-style: one handler per grant). Raises OAuthError.

    The grant runner (runner.py) authenticates the client (RFC 6749 §2.3) and
    checks that it is active and may use this grant (§5.2) before `handle` runs,
    and gives `handle` only the parameters declared in `parameters`. A grant
    whose client proves itself inside the grant (a client assertion, RFC 7521
    §4.2, RFC 7523 §2.2) sets `authenticates_client = True` and provides
    `async def authenticate(self, request) -> AuthenticatableClient`, which
    raises InvalidClient when the proof fails (the runner refuses, when it is
    built, such a grant without it). The runner still refuses a disabled client,
    verifies any client credentials sent beside the proof against the same
    client, and applies the allowed-grant check. `handle` always gets the
    authenticated client's record.
    """

    grant_type: str
    parameters: GrantParameters
    authenticates_client: bool

    async def handle(self, request: TokenRequest, client: AuthenticatableClient) -> TokenResponse: ...


class ClientAuthenticatingGrant(GrantHandler, Protocol):
    """A grant with `authenticates_client = True`: its client proves itself in the request."""

    async def authenticate(self, request: TokenRequest) -> AuthenticatableClient:
        """The proven client's record (active or not: the runner checks); InvalidClient if the proof fails."""
        ...

"""The registry's interface as plain Python: domain records and the calls on them.

`Registry` (registry.py) implements it over Postgres; `RegistryClient`
(client.py) implements it over gRPC. Callers depend only on this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_ACCESS_TOKEN_LIFETIME = 1800
DEFAULT_REFRESH_TOKEN_LIFETIME = 8_640_000
# Access tokens are bearer credentials: a day at most (and retired signing keys
# stay in the JWKS that long after their last token).
MAX_ACCESS_TOKEN_LIFETIME = 24 * 3600
# Refresh tokens at most, and so how long a client-wide cut-off must be kept.
MAX_LIFETIME = 10 * 365 * 24 * 3600
TOKEN_FORMATS = ("jwt", "opaque")

GRANT_AUTHORIZATION_CODE = "authorization_code"
GRANT_IMPLICIT = "implicit"
GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_PASSWORD = "password"
GRANT_REFRESH_TOKEN = "refresh_token"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
KNOWN_GRANT_TYPES = (GRANT_AUTHORIZATION_CODE, GRANT_IMPLICIT, GRANT_CLIENT_CREDENTIALS, GRANT_PASSWORD,
                     GRANT_REFRESH_TOKEN, GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE)


class RegistryError(Exception):
    """Base of the registry's own errors (not OAuth errors)."""


class InvalidArgument(RegistryError):
    """A client spec or update breaks a rule; the message says which."""


class NotFound(RegistryError):
    """No client with that id."""


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    name: str
    secret_hash: str  # "" for public clients
    public: bool
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    access_token_lifetime: int
    refresh_token_lifetime: int
    token_format: str
    pkce_required: bool
    active: bool
    logo_url: str
    comments: str
    created_at: int
    updated_at: int
    secret_rotated_at: int = 0


@dataclass
class ClientSpec:
    """What an operator sets when registering a client; None takes the default."""
    name: str
    public: bool = False
    grant_types: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    redirect_uris: list[str] = field(default_factory=list)
    access_token_lifetime: int | None = None
    refresh_token_lifetime: int | None = None
    token_format: str | None = None
    pkce_required: bool | None = None
    logo_url: str = ""
    comments: str = ""


@dataclass
class ClientUpdate:
    """A partial update: None leaves a field as it is."""
    active: bool | None = None
    name: str | None = None
    grant_types: list[str] | None = None
    scopes: list[str] | None = None
    redirect_uris: list[str] | None = None
    access_token_lifetime: int | None = None
    refresh_token_lifetime: int | None = None
    token_format: str | None = None
    pkce_required: bool | None = None
    logo_url: str | None = None
    comments: str | None = None


@dataclass(frozen=True)
class SigningKeyRecord:
    kid: str
    alg: str
    encrypted_private_key: bytes
    public_jwk_json: str
    created_at: int
    activates_at: int


@dataclass(frozen=True)
class OpaqueTokenRecord:
    token_hash: bytes
    jti: str
    client_id: str
    subject: str
    username: str
    scopes: tuple[str, ...]
    audience: tuple[str, ...]
    issued_at: int
    expires_at: int
    kind: str = "access"  # access | refresh
    grant_id: str = ""


REVOKE_JTI = "jti"
REVOKE_GRANT = "grant"
REVOKE_CLIENT = "client"


@dataclass(frozen=True)
class RevocationRecord:
    """One revoked thing: a token (by jti), a grant (by grant id) or all of a
    client's tokens issued at or before `revoked_before`."""
    kind: str
    value: str
    client_id: str
    expires_at: int
    revoked_before: int = 0
    revoked_by: str = ""
    id: int = 0


def client_cut_off(client_id: str, now: int, revoked_by: str) -> RevocationRecord:
    """Every token of the client issued until `now` is revoked (disabling a client,
    `inboundctl client revoke-tokens`); kept as long as any such token can live."""
    return RevocationRecord(kind=REVOKE_CLIENT, value=client_id, client_id=client_id, revoked_before=now,
                            expires_at=now + MAX_LIFETIME, revoked_by=revoked_by)


class ClientRegistryApi(Protocol):
    async def create_client(self, spec: ClientSpec) -> tuple[ClientRecord, str]: ...
    async def get_clients(self, client_ids: list[str]) -> list[ClientRecord | None]: ...
    async def list_clients(self) -> list[ClientRecord]: ...
    async def update_client(self, client_id: str, update: ClientUpdate) -> ClientRecord: ...
    async def delete_client(self, client_id: str) -> bool: ...
    async def rotate_client_secret(self, client_id: str) -> tuple[ClientRecord, str]: ...
    async def list_signing_keys(self) -> list[SigningKeyRecord]: ...
    async def add_signing_key(self, key: SigningKeyRecord, only_if_none: bool) -> bool: ...
    async def store_opaque_tokens(self, tokens: list[OpaqueTokenRecord]) -> list[str | None]: ...
    async def get_opaque_tokens(self, token_hashes: list[bytes]) -> list[OpaqueTokenRecord | None]: ...
    async def add_revocations(self, revocations: list[RevocationRecord]) -> list[int]: ...
    async def list_revocations(self, after_id: int = 0, limit: int = 10_000) -> list[RevocationRecord]: ...

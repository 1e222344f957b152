"""Client authentication at the token endpoint: RFC 6749 §2.3.

The edge extracts credentials (`extract_credentials`); the grant runner,
beside the client records, checks them (`ClientAuthenticator`), once for
every grant. Each authentication method is a plug-in (`ClientAuthMethod`):
the secret-based ones are here; `private_key_jwt` / `client_secret_jwt`
(RFC 7523 §2.2) plug in the same way, with the request context they need.
Client secrets are 256-bit random values, so a fast hash (SHA-256) is as safe
as a slow one and keeps the token endpoint fast (see ory/hydra#1477).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote_plus

from inboundlib import redact
from inboundlib.oauth.errors import InvalidClient, InvalidRequest, UnauthorizedClient

if TYPE_CHECKING:
    from inboundlib.grants.api import RequestContext

NONE = "none"
CLIENT_SECRET_BASIC = "client_secret_basic"
CLIENT_SECRET_POST = "client_secret_post"
# RFC 7523 §2.2: a JWT in client_assertion (client_assertion_type JWT_ASSERTION_TYPE),
# HMAC-signed with the client's secret, or signed with the client's private key.
CLIENT_SECRET_JWT = "client_secret_jwt"
PRIVATE_KEY_JWT = "private_key_jwt"
JWT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AUTH_METHODS = (NONE, CLIENT_SECRET_BASIC, CLIENT_SECRET_POST, CLIENT_SECRET_JWT, PRIVATE_KEY_JWT)
MAX_CLIENT_ID = 255
MAX_CLIENT_SECRET = 512


@dataclass(frozen=True)
class ClientCredentials:
    method: str
    client_id: str
    client_secret: str = ""
    client_assertion: str = ""  # the JWT of client_secret_jwt / private_key_jwt

    def __repr__(self) -> str:  # never print the secret or the assertion
        return f"ClientCredentials(method={self.method!r}, client_id={self.client_id!r})"


class AuthenticatableClient(Protocol):
    client_id: str
    secret_hash: str
    public: bool
    active: bool
    grant_types: Sequence[str]
    token_endpoint_auth_method: str  # the one method it may use (AUTH_METHODS)


def new_client_secret() -> str:
    """256 bits from the OS CSPRNG, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_client_secret(secret: str) -> str:
    return "sha256$" + hashlib.sha256(secret.encode("utf-8")).hexdigest()


def verify_client_secret(secret: str, stored: str) -> bool:
    # Hashed whatever is stored: a record with an unusable hash costs what any other does.
    computed = hash_client_secret(secret)
    scheme, _, _ = stored.partition("$")
    if scheme != "sha256":
        return False
    return hmac.compare_digest(computed, stored)


# The hash of a secret nobody knows, of the same kind as every stored one.
_UNMATCHABLE_SECRET_HASH = hash_client_secret(new_client_secret())


def check_secret_in_vain(creds: ClientCredentials | None) -> None:
    """Spend what checking a secret costs on a refusal decided without a real check
    (an unknown or disabled client, a client with no usable hash): an unknown
    client id answers in the time a wrong secret does, so the time of a refusal
    does not tell whether a client id exists. (The public text is the same
    `invalid_client` for every refusal already.)"""
    verify_client_secret(creds.client_secret if creds else "", _UNMATCHABLE_SECRET_HASH)


def _decode_basic(header_value: str) -> tuple[str, str]:
    """§2.3.1: Basic credentials whose id and secret are form-urlencoded first."""
    scheme, _, encoded = header_value.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise InvalidClient("Malformed client authentication.")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidClient("Malformed client authentication.") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("Malformed client authentication.")
    return unquote_plus(client_id, errors="strict"), unquote_plus(secret, errors="strict")


def extract_credentials(authorization: str | None, params: dict[str, str]) -> ClientCredentials | None:
    """Find the one authentication method used (§2.3: a client MUST NOT use more
    than one). Removes client_id / client_secret from `params`. Returns None when
    the request names no client at all."""
    body_id = params.pop("client_id", None)
    body_secret = params.pop("client_secret", None)
    if authorization is not None:
        if not authorization.lower().startswith("basic "):
            # Some other scheme (Bearer, Digest...): not a client authentication we accept.
            raise InvalidClient("Unsupported client authentication method.")
        try:
            client_id, secret = _decode_basic(authorization)
        except UnicodeDecodeError:
            raise InvalidClient("Malformed client authentication.") from None
        if body_secret is not None:
            raise InvalidRequest("Only one client authentication method may be used.")
        if body_id is not None and body_id != client_id:
            raise InvalidRequest("client_id does not match the authenticated client.")
        creds = ClientCredentials(CLIENT_SECRET_BASIC, client_id, secret)
    elif body_secret is not None:
        if body_id is None:
            raise InvalidRequest("client_secret was sent without client_id.")
        creds = ClientCredentials(CLIENT_SECRET_POST, body_id, body_secret)
    elif body_id is not None:
        creds = ClientCredentials(NONE, body_id)
    else:
        return None
    if not is_valid_client_id(creds.client_id) or len(creds.client_secret) > MAX_CLIENT_SECRET:
        raise InvalidClient("Malformed client authentication.")
    return creds


def is_valid_client_id(client_id: str) -> bool:
    """1-255 printable characters (Appendix A.1 allows only visible ASCII and space;
    other printable text is let through to a lookup that finds nothing). A control
    or format character, a NUL say, names no client and never reaches a lookup,
    a database or a log."""
    return 0 < len(client_id) <= MAX_CLIENT_ID and client_id.isprintable()


def require_grant_type(client: AuthenticatableClient, grant_type: str) -> None:
    """§5.2 unauthorized_client: the client is not registered for this grant type."""
    if grant_type not in client.grant_types:
        raise UnauthorizedClient(detail=f"grant {grant_type} not allowed for client")


# --- the authenticator the grant runner uses -------------------------------------------------------

class ClientSource(Protocol):
    """The one thing client authentication needs of the registry (a cache of it, in practice)."""

    async def get_client(self, client_id: str) -> AuthenticatableClient | None: ...


class ClientAuthMethod(Protocol):
    """One way for a client to prove itself (RFC 6749 §2.3; RFC 7523 §2.2 later).
    Raises InvalidClient when the proof fails; the record is known and active."""

    name: str

    async def verify(self, client: AuthenticatableClient, creds: ClientCredentials,
                     context: RequestContext | None) -> None: ...


class NoAuthentication:
    """§2.1, §3.2.1: a public client names itself with client_id only."""
    name = NONE

    async def verify(self, client, creds, context) -> None:
        if not client.public:
            check_secret_in_vain(creds)
            raise InvalidClient(detail="confidential client sent no secret")


class ClientSecret:
    """§2.3.1: a client secret, in the Basic header or the body."""

    def __init__(self, name: str):
        self.name = name

    async def verify(self, client, creds, context) -> None:
        if client.public:
            check_secret_in_vain(creds)
            raise InvalidClient(detail="public client sent a secret")
        if not client.secret_hash:
            check_secret_in_vain(creds)
            raise InvalidClient(detail="wrong client secret")
        if not verify_client_secret(creds.client_secret, client.secret_hash):
            raise InvalidClient(detail="wrong client secret")


DEFAULT_METHODS: tuple[ClientAuthMethod, ...] = (NoAuthentication(), ClientSecret(CLIENT_SECRET_BASIC),
                                                 ClientSecret(CLIENT_SECRET_POST))


class ClientAuthenticator:
    """§2.3 for every grant: find the client (`find`), then check its proof
    (`verify`). Every failure is the same public `invalid_client`; the reason is
    private detail. Split in two so a caller can tell, for its log and audit
    record, whether the client id it was given names a client at all."""

    def __init__(self, clients: ClientSource, methods: Sequence[ClientAuthMethod] = DEFAULT_METHODS):
        self.clients = clients
        self.methods: Mapping[str, ClientAuthMethod] = {method.name: method for method in methods}

    async def find(self, creds: ClientCredentials | None) -> AuthenticatableClient | None:
        """The client record `creds` names, or None. Malformed ids are not looked up."""
        if creds is None or not is_valid_client_id(creds.client_id):
            return None
        return await self.clients.get_client(creds.client_id)

    async def verify(self, client: AuthenticatableClient | None, creds: ClientCredentials | None,
                     context: RequestContext | None = None) -> AuthenticatableClient:
        if creds is None:
            raise InvalidClient(detail="no client authentication")
        # Every refusal costs one secret check, real or in vain: the same time, the same text.
        if client is None:
            check_secret_in_vain(creds)
            raise InvalidClient(detail="unknown client")
        if not client.active:
            check_secret_in_vain(creds)
            raise InvalidClient(detail="client is disabled")
        method = self.methods.get(creds.method)
        if method is None:
            check_secret_in_vain(creds)
            raise InvalidClient(detail=f"authentication method {redact.unverified(creds.method)} not supported")
        await method.verify(client, creds, context)
        return client

    async def authenticate(self, creds: ClientCredentials | None,
                           context: RequestContext | None = None) -> AuthenticatableClient:
        return await self.verify(await self.find(creds), creds, context)

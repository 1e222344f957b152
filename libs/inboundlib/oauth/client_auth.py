"""Client authentication at the token endpoint: RFC 6749 §2.3.

The edge extracts credentials (`extract_credentials`); the grant runner and
token_issuer (introspection, revocation), beside the client records, check
them (`ClientAuthenticator`). Each authentication method is a plug-in
(`ClientAuthMethod`): the secret-based ones, and `private_key_jwt` /
`client_secret_jwt` (RFC 7523 §2.2, `JwtClientAuth`), which hand the
assertion to a `ClientAssertionVerifier` (jwt_bearer's: only it fetches
clients' keys and opens their sealed secrets). Each client may use the one
method it is registered for (RFC 7591 §2 token_endpoint_auth_method).
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote_plus

import jwt

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
# RFC 7523 §2.1: the grant of the service (jwt_bearer) that also verifies client assertions.
JWT_BEARER_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
AUTH_METHODS = (NONE, CLIENT_SECRET_BASIC, CLIENT_SECRET_POST, CLIENT_SECRET_JWT, PRIVATE_KEY_JWT)
JWT_AUTH_METHODS = (CLIENT_SECRET_JWT, PRIVATE_KEY_JWT)
MAX_CLIENT_ID = 255
MAX_CLIENT_SECRET = 512
# A client assertion is a compact JWS of a few claims: RS512 with a 4096-bit key and a
# certificate thumbprint stays under 2 KiB. Anything far larger is not parsed at all.
MAX_CLIENT_ASSERTION = 8192
# The token endpoint's path (RFC 6749 §3.2) under the issuer: an assertion's aud may name it
# wherever the assertion is presented (RFC 7523 §3 item 3).
TOKEN_ENDPOINT_PATH = "/oauth/token"


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
    than one). Removes client_id / client_secret / client_assertion_type /
    client_assertion from `params`. Returns None when the request names no client at all."""
    body_id = params.pop("client_id", None)
    body_secret = params.pop("client_secret", None)
    assertion_type = params.pop("client_assertion_type", None)
    assertion = params.pop("client_assertion", None)
    if assertion_type is not None or assertion is not None:
        if authorization is not None or body_secret is not None:
            raise InvalidRequest("Only one client authentication method may be used.")
        creds = assertion_credentials(assertion_type, assertion, body_id)
    elif authorization is not None:
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


def assertion_credentials(assertion_type: str | None, assertion: str | None,
                          client_id: str | None) -> ClientCredentials:
    """RFC 7521 §4.2, RFC 7523 §2.2: client_assertion_type (the JWT bearer URN) and
    client_assertion, with client_id optional. Nothing here is verified: the method is what
    the header's alg suggests (HS*: client_secret_jwt; any other: private_key_jwt), the
    client is the one the claims name (iss and sub, RFC 7523 §3 items 1-2, equal), or
    client_id, which must then name the same client. The client's own method and keys
    decide later (ClientAuthenticator, JwtClientAuth). Parsed by pyjwt, never by hand."""
    if not assertion_type or not assertion:
        # RFC 6749 §5.2: a required parameter missing.
        raise InvalidRequest("client_assertion_type and client_assertion go together.")
    if assertion_type != JWT_ASSERTION_TYPE:
        # RFC 6749 §5.2 invalid_client: an authentication method we do not support.
        raise InvalidClient("Unsupported client assertion type.",
                            detail=f"client_assertion_type {redact.unverified(assertion_type)}")
    if len(assertion) > MAX_CLIENT_ASSERTION:
        raise InvalidClient("Malformed client assertion.", detail=f"client_assertion of {len(assertion)} characters")
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})  # (no claim is checked either)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise InvalidClient("Malformed client assertion.", detail="client_assertion is not a JWT") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg or alg.lower() == "none":
        # RFC 7515 §4.1.1: alg is required; `none` proves nothing (RFC 7523 §3 item 9: signed).
        raise InvalidClient("Malformed client assertion.", detail="client_assertion without a usable alg")
    issuer, subject = claims.get("iss"), claims.get("sub")
    if not isinstance(issuer, str) or not isinstance(subject, str):
        raise InvalidClient("Malformed client assertion.", detail="client_assertion without iss and sub")
    if issuer != subject:
        raise InvalidClient(detail="client_assertion's iss and sub differ (both must be the client id)")
    if client_id is not None and client_id != subject:
        raise InvalidClient(detail="client_id names another client than the client_assertion")
    if not is_valid_client_id(subject):
        raise InvalidClient("Malformed client assertion.", detail="client_assertion's sub is no client id")
    method = CLIENT_SECRET_JWT if alg.upper().startswith("HS") else PRIVATE_KEY_JWT
    return ClientCredentials(method, subject, client_assertion=assertion)


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
    """One way for a client to prove itself (RFC 6749 §2.3; RFC 7523 §2.2).
    Raises InvalidClient when the proof fails; the record is known, active, and
    registered for this method."""

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


@dataclass(frozen=True)
class ClientAssertion:
    """One client assertion to verify (federation.v1 VerifyClientAssertionRequest)."""
    client_id: str  # the client whose record the caller found and checked (active, registered for `method`)
    method: str  # CLIENT_SECRET_JWT | PRIVATE_KEY_JWT
    assertion: str = field(repr=False)
    endpoint_url: str = ""  # where it was presented: one of the accepted audiences
    request_id: str = ""


class ClientAssertionVerifier(Protocol):
    """RFC 7523 §3 for client authentication (§2.2), as jwt_bearer answers it: the
    signature with the client's keys (its JWKS or jwks_uri; its sealed secret for
    client_secret_jwt), iss = sub = client_id, aud, exp and the lifetime, jti once.
    Returns when the assertion proves the client; raises InvalidClient (the reason in
    `detail`) or KeysPending (its keys are being fetched: ask again shortly)."""

    async def verify_client_assertion(self, assertion: ClientAssertion) -> None: ...


class JwtClientAuth:
    """RFC 7523 §2.2: private_key_jwt or client_secret_jwt, verified by the verifier."""

    def __init__(self, name: str, verifier: ClientAssertionVerifier):
        if name not in JWT_AUTH_METHODS:
            raise ValueError(f"not a JWT client authentication method: {name}")
        self.name = name
        self.verifier = verifier

    async def verify(self, client, creds, context) -> None:
        if client.public:
            raise InvalidClient(detail="public client sent a client assertion")
        if not creds.client_assertion:
            raise InvalidClient(detail=f"{self.name} without a client assertion")
        await self.verifier.verify_client_assertion(ClientAssertion(
            client_id=client.client_id, method=self.name, assertion=creds.client_assertion,
            endpoint_url=context.endpoint_url if context is not None else ""))


DEFAULT_METHODS: tuple[ClientAuthMethod, ...] = (NoAuthentication(), ClientSecret(CLIENT_SECRET_BASIC),
                                                 ClientSecret(CLIENT_SECRET_POST))


def jwt_methods(verifier: ClientAssertionVerifier) -> tuple[ClientAuthMethod, ...]:
    return (JwtClientAuth(CLIENT_SECRET_JWT, verifier), JwtClientAuth(PRIVATE_KEY_JWT, verifier))


def registered_method(client: AuthenticatableClient) -> str:
    """The one method the client may use: `none` for a public client whatever its record
    says (it has no credential, RFC 6749 §2.1), else its token_endpoint_auth_method
    (a record from before the field existed: client_secret_basic, the RFC 7591 default)."""
    if client.public:
        return NONE
    return getattr(client, "token_endpoint_auth_method", "") or CLIENT_SECRET_BASIC


class ClientAuthenticator:
    """§2.3 for every grant and for introspection and revocation: find the client
    (`find`), then check its proof (`verify`). Every failure is the same public
    `invalid_client`; the reason is private detail. Split in two so a caller can tell,
    for its log and audit record, whether the client id it was given names a client at all.
    With a `verifier`, private_key_jwt and client_secret_jwt are accepted too."""

    def __init__(self, clients: ClientSource, methods: Sequence[ClientAuthMethod] = DEFAULT_METHODS, *,
                 verifier: ClientAssertionVerifier | None = None):
        self.clients = clients
        if verifier is not None:
            methods = (*methods, *jwt_methods(verifier))
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
        registered = registered_method(client)
        if creds.method != registered:
            # One method per client (RFC 7591 §2): a client registered for private_key_jwt
            # cannot fall back to a secret, nor a secret_basic client have its secret tried in
            # a form body (or an HS256 assertion made with it).
            check_secret_in_vain(creds)
            raise InvalidClient(detail=f"client is registered for {registered}, sent {creds.method}")
        await method.verify(client, creds, context)
        return client

    async def authenticate(self, creds: ClientCredentials | None,
                           context: RequestContext | None = None) -> AuthenticatableClient:
        return await self.verify(await self.find(creds), creds, context)

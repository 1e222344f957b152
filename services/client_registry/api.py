"""The registry's interface as plain Python: domain records, domain errors, and
one narrow Protocol per domain (clients, signing keys, opaque tokens,
revocations), the way fosite splits its storage.

Each domain has one Postgres repository (clients.py, keys.py, tokens.py,
revocations.py, users.py, refresh_tokens.py, scopes.py, authorizations.py), one
gRPC service (server.py) and one gRPC client (client.py);
callers depend only on the Protocol they need. A new domain (users, grants,
trust stores) follows the same pattern: records and a Protocol here, a
repository, a servicer and a client, one row in server.DOMAINS.

Errors: storage raises the errors below and nothing else of its own; only the
servicers map them to gRPC status codes and the clients map them back. Batched
calls never raise for one item: each item answers a value or an `ItemError`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_ACCESS_TOKEN_LIFETIME = 1800
DEFAULT_REFRESH_TOKEN_LIFETIME = 8_640_000
# Access tokens are bearer credentials: a day at most (and retired signing keys
# stay in the JWKS that long after their last token).
MAX_ACCESS_TOKEN_LIFETIME = 24 * 3600
# How long a grant revocation (a refresh-token family's end) must be kept: the grant's access
# tokens live a day at most, and the refresh_token grant may still be issuing one for a
# rotation the registry answered just before the revocation (stamped after it: an Issue call
# can take seconds). Its refresh tokens need no more: their rows are marked revoked for good
# in the same write (revocations.insert_revocations), and every check reads that mark.
GRANT_REVOCATION_LIFETIME = MAX_ACCESS_TOKEN_LIFETIME + 300
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
    """A record or request breaks a rule; the message says which."""


class NotFound(RegistryError):
    """No such entity (the message names it)."""


class AlreadyExists(RegistryError):
    """An entity with that identity exists already."""


# What an item of a batched call answers when it could not be done (its
# neighbours are unaffected). Codes: the error classes above, by name.
ITEM_INVALID = "invalid_argument"
ITEM_NOT_FOUND = "not_found"
ITEM_INTERNAL = "internal"
# Not done for want of capacity (a sign-in past the registry's queue): try again later.
ITEM_UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class ItemError:
    code: str
    message: str

    def __str__(self) -> str:
        return self.message or self.code


# Ids a client, jti, grant or subject can have: printable, bounded. A lookup by
# anything else is answered "not found" (or an ItemError for a write) without
# touching Postgres, whose text type refuses NUL.
MAX_ID_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_plausible_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_LENGTH and not _CONTROL.search(value)


def has_control_characters(value: str) -> bool:
    return bool(_CONTROL.search(value))


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
    # RFC 6749 §4.3.2: a public client may use the password grant only when the operator allows it.
    allow_public_password_grant: bool = False
    # A refresh-token family ends this many seconds after its first token, whatever
    # its rotations (0: only the sliding refresh_token_lifetime applies).
    refresh_token_absolute_lifetime: int = 0
    # OpenID Connect RP-Initiated Logout: where the browser may go after sign-out (exact match).
    post_logout_redirect_uris: tuple[str, ...] = ()
    # The one way this client proves itself at every endpoint that authenticates clients
    # (RFC 7591 §2 token_endpoint_auth_method): none (public clients), client_secret_basic,
    # client_secret_post, client_secret_jwt or private_key_jwt (RFC 7523 §2.2).
    token_endpoint_auth_method: str = "client_secret_basic"
    # private_key_jwt: the client's public keys, inline (a JWKS as JSON text) or by URL (HTTPS).
    jwks: str = ""
    jwks_uri: str = ""
    # The one JWS alg its assertions must use ("": any the key type allows; RFC 7591 §2).
    token_endpoint_auth_signing_alg: str = ""
    # RFC 8693 token exchange: what this client may exchange (None: it may not).
    token_exchange: TokenExchangePolicy | None = None


@dataclass(frozen=True)
class TokenExchangePolicy:
    """Per client: what it may turn into an Inbound access token (RFC 8693). Empty tuples
    allow nothing of that kind, except `audiences`/`scopes`, where empty means "no extra
    limit beyond the client's own". `providers` names registered OIDC providers whose
    tokens it may exchange; `own_tokens` lets it exchange Inbound's own access tokens."""
    subject_token_types: tuple[str, ...] = ()  # RFC 8693 §3 URNs: id_token, access_token, jwt
    providers: tuple[str, ...] = ()
    own_tokens: bool = False
    scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    actor_tokens: bool = False  # may send actor_token (delegation, `act`); else only impersonation


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
    allow_public_password_grant: bool | None = None
    refresh_token_absolute_lifetime: int | None = None
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    token_endpoint_auth_method: str | None = None  # None: none for public, client_secret_basic otherwise
    jwks: str = ""
    jwks_uri: str = ""
    token_endpoint_auth_signing_alg: str = ""
    token_exchange: TokenExchangePolicy | None = None


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
    allow_public_password_grant: bool | None = None
    refresh_token_absolute_lifetime: int | None = None
    post_logout_redirect_uris: list[str] | None = None
    # A change to client_secret_jwt (whose secret must be sealed when it is made: the registry
    # holds only a hash of the current one), or to basic/post for a client without a secret
    # (private_key_jwt), is refused here: ClientAdmin.rotate_client_secret(client_id, method)
    # moves the client and answers its new secret once. A change away from client_secret_jwt
    # drops the sealed copy (the hash stays); to private_key_jwt, the hash too.
    token_endpoint_auth_method: str | None = None
    jwks: str | None = None
    jwks_uri: str | None = None
    token_endpoint_auth_signing_alg: str | None = None
    token_exchange: TokenExchangePolicy | None = None
    clear_token_exchange: bool = False


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
    # issued_at to the millisecond (0 from an older writer: taken as issued_at * 1000).
    issued_at_ms: int = 0
    # Refresh tokens, as the registry reads them (ignored on writes): rotated already,
    # or of a revoked family; and when the family ends whatever its rotations (0: never).
    consumed: bool = False
    revoked: bool = False
    family_expires_at: int = 0

    @property
    def issued_at_precise_ms(self) -> int:
        return self.issued_at_ms or self.issued_at * 1000


REVOKE_JTI = "jti"
REVOKE_GRANT = "grant"
REVOKE_CLIENT = "client"
REVOKE_SUBJECT = "subject"
REVOCATION_KINDS = (REVOKE_JTI, REVOKE_GRANT, REVOKE_CLIENT, REVOKE_SUBJECT)
# Kinds that revoke every token issued up to a cut-off, rather than one token or grant.
CUT_OFF_KINDS = (REVOKE_CLIENT, REVOKE_SUBJECT)


@dataclass(frozen=True)
class RevocationRecord:
    """One revoked thing: a token (by jti), a grant (by grant id), or every token
    of a client, or of a subject (user) across clients, issued at or before
    `revoked_before_ms` (Unix milliseconds; see `client_cut_off` for whose clock)."""
    kind: str
    value: str
    client_id: str
    expires_at: int
    revoked_before_ms: int = 0
    revoked_by: str = ""
    id: int = 0

    @property
    def revoked_before(self) -> int:
        """The cut-off in whole seconds (what older readers and the audit trail show)."""
        return self.revoked_before_ms // 1000


def client_cut_off(client_id: str, now_ms: int, revoked_by: str) -> RevocationRecord:
    """Every token of the client issued until `now_ms` is revoked (disabling or deleting
    a client, `inboundctl client revoke-tokens`); kept as long as any such token can live.

    The cut-off is read from the wall clock of the process that makes it (token_issuer
    for revoke-tokens, client_registry for disable and delete), never the database's:
    tokens are stamped by token_issuer's clock without touching the database (JWTs), so
    a database timestamp would add a third clock and its skew to the comparison. Hosts
    run NTP; skew between replicas (milliseconds) is the only imprecision left."""
    return RevocationRecord(kind=REVOKE_CLIENT, value=client_id, client_id=client_id, revoked_before_ms=now_ms,
                            expires_at=now_ms // 1000 + 1 + MAX_LIFETIME, revoked_by=revoked_by)


def subject_cut_off(subject: str, now_ms: int, revoked_by: str) -> RevocationRecord:
    """Every token of one subject (a user, for every client) issued until `now_ms` is revoked."""
    return RevocationRecord(kind=REVOKE_SUBJECT, value=subject, client_id="", revoked_before_ms=now_ms,
                            expires_at=now_ms // 1000 + 1 + MAX_LIFETIME, revoked_by=revoked_by)


@dataclass(frozen=True)
class RevocationCursor:
    """Where a reader of the revocations stands (opaque: pass back what a page answered).
    Every row of a transaction with id below `txid` has been read, and those of `txid`
    up to row `id`."""
    txid: int = 0
    id: int = 0


@dataclass(frozen=True)
class RevocationPage:
    records: list[RevocationRecord]
    # Where the next read (the next resync) starts: past finished transactions only.
    next: RevocationCursor
    more: bool = False  # the page was full: read on at once, from `read_on_from`
    # Past the last row of this page: where this same read goes on, even while `next`
    # is held back by a transaction still open somewhere. None: the same as `next`.
    scan: RevocationCursor | None = None

    @property
    def read_on_from(self) -> RevocationCursor:
        return self.scan if self.scan is not None else self.next


# --- users ----------------------------------------------------------------------------------------

ROLE_OAUTH_ADMIN = "oauth_admin"
ROLE_MI_ADMIN = "mi_admin"
ROLE_ADMIN = "admin"
BUILT_IN_ROLES = (ROLE_OAUTH_ADMIN, ROLE_MI_ADMIN, ROLE_ADMIN)

# AuthenticateUser's purposes (for the audit trail; counters are shared by all).
PURPOSE_PASSWORD_GRANT = "password_grant"
PURPOSE_BROWSER_SIGN_IN = "browser_sign_in"


@dataclass(frozen=True)
class UserRecord:
    """A user as the directory holds it; never the password hash (it stays in the registry)."""
    id: str
    username: str
    email: str
    display_name: str
    active: bool
    roles: tuple[str, ...]
    given_name: str = ""
    family_name: str = ""
    email_verified: bool = False
    locale: str = ""
    zoneinfo: str = ""
    created_at: int = 0
    updated_at: int = 0
    password_changed_at: int = 0  # 0: no password
    locked_until: int = 0  # for operators: the latest lock or back-off end in force (0: none)
    # A sign-in's outcome only: when the password was checked (the registry's clock, ms), the
    # user's row held against changes meanwhile. The sign-in's tokens are stamped with it
    # (IssueRequest.authenticated_at_ms): a password change, disable or delete that waited for
    # the check records a cut-off at or after it, which then covers them however late they are
    # issued. Not part of the record's identity (compare=False).
    verified_at_ms: int = field(default=0, compare=False)


@dataclass
class UserSpec:
    """What an operator sets when creating a user. `password` "" creates it without one."""
    username: str
    email: str = ""
    display_name: str = ""
    roles: list[str] = field(default_factory=list)
    given_name: str = ""
    family_name: str = ""
    email_verified: bool = False
    locale: str = ""
    zoneinfo: str = ""
    active: bool = True
    password: str = field(default="", repr=False)


@dataclass
class UserUpdate:
    """A partial update: None leaves a field as it is. active=False revokes the user's tokens."""
    username: str | None = None
    email: str | None = None
    display_name: str | None = None
    active: bool | None = None
    given_name: str | None = None
    family_name: str | None = None
    email_verified: bool | None = None
    locale: str | None = None
    zoneinfo: str | None = None


@dataclass(frozen=True)
class UserPage:
    users: list[UserRecord]
    next: str = ""  # pass as `after` for the next page; "" after the last


@dataclass(frozen=True)
class SignIn:
    """One AuthenticateUser item. The password never appears in a repr."""
    username: str
    password: str = field(repr=False)
    client_address: str = ""
    purpose: str = PURPOSE_PASSWORD_GRANT
    request_id: str = ""


@dataclass(frozen=True)
class Invalid:
    """Wrong username or wrong password: one answer for both (and for a user without a
    password, or a disabled one: see UserAuthenticator)."""


@dataclass(frozen=True)
class Locked:
    locked_until: int  # Unix seconds


SignInOutcome = UserRecord | Invalid | Locked | ItemError


# --- refresh-token rotation -----------------------------------------------------------------------

REFUSED_UNKNOWN = "unknown"
REFUSED_EXPIRED = "expired"
REFUSED_OTHER_CLIENT = "other_client"
REFUSED_REVOKED = "revoked"
REFUSED_USER_INACTIVE = "user_inactive"
REFUSED_CLIENT_INACTIVE = "client_inactive"
REFUSED_REUSED = "reused"


@dataclass(frozen=True)
class Rotation:
    """One RotateRefreshToken item: the presented token's hash, the client presenting it,
    the successor's hash and jti, and the grace window for retries."""
    token_hash: bytes
    client_id: str
    new_token_hash: bytes
    new_jti: str
    grace_seconds: int
    request_id: str = ""


@dataclass(frozen=True)
class Rotated:
    consumed: OpaqueTokenRecord
    successor: OpaqueTokenRecord


@dataclass(frozen=True)
class Replay:
    """A retry inside the grace window: the first rotation's encrypted response
    (b"" while it has not been stored yet), and when the grace window ends (Unix ms,
    the registry's clock; 0: not said): presented after that, the token is a reuse."""
    encrypted_response: bytes
    consumed: OpaqueTokenRecord
    replay_until_ms: int = 0


@dataclass(frozen=True)
class Refused:
    reason: str  # one of REFUSED_*
    grant_id: str = ""
    revocation: RevocationRecord | None = None  # for REFUSED_REUSED: the family's revocation


RotationOutcome = Rotated | Replay | Refused | ItemError


# --- the scope catalog ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ScopeRecord:
    """A scope of the catalog: the words the consent page shows, and whether it needs consent."""
    name: str
    description: str
    consent_required: bool
    created_at: int = 0
    updated_at: int = 0


@dataclass
class ScopeUpdate:
    description: str | None = None
    consent_required: bool | None = None


class InUse(RegistryError):
    """The entity is still referenced (a scope a client has); the message says by what."""


# --- the authorization endpoint's state -----------------------------------------------------------

@dataclass(frozen=True)
class BrowserSession:
    """A signed-in browser. `id_hash` is SHA-256 of the cookie's value; `sid` the OIDC session id."""
    id_hash: bytes = field(repr=False)
    sid: str
    user_id: str
    username: str
    auth_time_ms: int = 0
    created_at: int = 0
    expires_at: int = 0
    client_address: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class PendingAuthorization:
    """A validated authorization request waiting for sign-in or consent; `request_json`
    is the authorization_code service's own serialisation."""
    id_hash: bytes = field(repr=False)
    client_id: str
    request_json: str
    created_at: int = 0
    expires_at: int = 0


@dataclass(frozen=True)
class ConsentRecord:
    user_id: str
    client_id: str
    scopes: tuple[str, ...]
    granted_at: int = 0
    updated_at: int = 0


@dataclass(frozen=True)
class AuthorizationCodeRecord:
    """RFC 6749 §4.1.2: a code and everything it is bound to. `code_hash` is SHA-256 of the
    code. created_at_ms and expires_at are set by the registry."""
    code_hash: bytes = field(repr=False)
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    user_id: str
    username: str
    sid: str
    auth_time_ms: int
    nonce: str
    code_challenge: str
    code_challenge_method: str
    grant_id: str
    created_at_ms: int = 0
    expires_at: int = 0


@dataclass(frozen=True)
class CodeToConsume:
    code_hash: bytes = field(repr=False)
    client_id: str = ""


@dataclass(frozen=True)
class CodeReused:
    """The code was consumed before: its grant is revoked now (RFC 6749 §4.1.2)."""
    grant_id: str = ""


@dataclass(frozen=True)
class CodeNotFound:
    """Unknown, expired, or issued to another client (then left unconsumed)."""


CodeOutcome = AuthorizationCodeRecord | CodeReused | CodeNotFound | ItemError


# --- federation (RFC 7523, OpenID Connect providers, RFC 8693) --------------------------------

# What a user claim of a foreign token or a JWT-bearer `sub` is matched against.
USER_FIELDS = ("username", "email", "id")
CLAIM_OPERATORS = ("equals", "not_equals", "in", "contains")


@dataclass(frozen=True)
class ClaimRule:
    """An extra condition on an assertion's claims: `claim` (a top-level claim name)
    `operator` `value` (for `in`: a comma-separated list; `contains`: the claim is a
    list holding value, or a string with value as a space-separated word)."""
    claim: str
    operator: str
    value: str


@dataclass(frozen=True)
class JwtBearerIntegration:
    """RFC 7523 §2.1: one integration's trust: whose assertions (iss), signed with which keys,
    for which client, standing for whom. Exactly one key source is set: `jwks_uri`, `jwks`
    (inline JWKS JSON), `certificate_pem` (one X.509 certificate's public key), or, only when
    `allow_hs256`, a shared HMAC secret (kept encrypted under the key-encryption key; it never
    travels in this record: `IntegrationSecrets.get_integration_secrets`)."""
    id: str
    name: str
    client_id: str  # the client that may present this integration's assertions
    issuer: str  # the assertions' `iss`
    jwks_uri: str = ""
    jwks: str = ""
    certificate_pem: str = ""
    kid: str = ""  # pinned: only the key with this kid is trusted ("": any key of the source)
    algorithms: tuple[str, ...] = ()  # accepted JWS algs ("": every alg the key types allow)
    allow_hs256: bool = False
    subject_kind: str = "user"  # user | client (sub must be the client's id)
    user_field: str = "username"  # one of USER_FIELDS, for subject_kind user
    claim_rules: tuple[ClaimRule, ...] = ()
    scopes: tuple[str, ...] = ()  # the most its tokens may carry ("": the client's scopes)
    max_assertion_lifetime: int = 3600  # seconds from iat (or nbf) to exp
    require_jti: bool = True
    active: bool = True
    created_at: int = 0
    updated_at: int = 0


@dataclass(frozen=True)
class OidcProvider:
    """A trusted external OpenID provider (Azure AD / Entra ID, Okta, Auth0, Google...).
    Its keys come from the `jwks_uri` of its discovery document; its tokens are
    accepted as-is (introspection, bearer use) or exchanged (RFC 8693)."""
    name: str
    issuer: str
    discovery_url: str
    audiences: tuple[str, ...]  # a token's aud must hold one of them
    algorithms: tuple[str, ...] = ("RS256",)
    cache_lifespan: int = 3600  # seconds: the longest its keys are cached, whatever its headers say
    clock_skew: int = 300
    user_claim: str = "sub"  # sub, oid, email, upn, preferred_username ...
    user_field: str = "username"  # one of USER_FIELDS
    check_jti: bool = False
    active: bool = True
    provision_users: bool = False  # create an unknown user (no password) on first use
    provision_roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()  # what its tokens carry when accepted as-is or exchanged, at most
    template: str = ""  # the template it was made from (azure, okta, auth0, google), for display
    created_at: int = 0
    updated_at: int = 0


@dataclass(frozen=True)
class JtiClaim:
    """One use of a `jti`: refused while another use of the same (namespace, jti) is
    stored; stored until `expires_at` (unix seconds: the token's exp plus the skew), then
    purged. namespace: "client:<client_id>", "integration:<id>" or "provider:<name>"."""
    namespace: str
    jti: str
    expires_at: int


# --- one narrow interface per domain ----------------------------------------------------------

class ClientReader(Protocol):
    """The hot path: client records by id (None: no such client)."""
    async def get_client(self, client_id: str) -> ClientRecord | None: ...
    async def get_clients(self, client_ids: list[str]) -> list[ClientRecord | None]: ...


class ClientAdmin(Protocol):
    async def create_client(self, spec: ClientSpec) -> tuple[ClientRecord, str]: ...
    async def list_clients(self) -> list[ClientRecord]: ...
    async def update_client(self, client_id: str, update: ClientUpdate) -> ClientRecord: ...
    async def delete_client(self, client_id: str) -> bool: ...
    async def rotate_client_secret(self, client_id: str,
                                   token_endpoint_auth_method: str | None = None) -> tuple[ClientRecord, str]:
        """A new secret, answered once; with a (secret) method, the client moves to it in the same step."""
        ...
    async def rewrap_sealed_secrets(self) -> SecretRewrap:
        """Every sealed shared secret re-encrypted under the first key-encryption key."""
        ...


class ClientStore(ClientReader, ClientAdmin, Protocol):
    pass


class SigningKeyStore(Protocol):
    async def list_signing_keys(self) -> list[SigningKeyRecord]: ...
    async def add_signing_key(self, key: SigningKeyRecord, only_if_none: bool) -> bool:
        """Stores `key`; with `only_if_none`, only when no key of `key.alg` is stored yet."""
        ...
    async def rewrap_signing_key(self, kid: str, expected: bytes, encrypted_private_key: bytes) -> bool: ...


class TokenStore(Protocol):
    """Opaque tokens by hash. store answers None per stored token, or its ItemError."""
    async def store_opaque_tokens(self, tokens: list[OpaqueTokenRecord]) -> list[ItemError | None]: ...
    async def get_opaque_tokens(self, token_hashes: list[bytes]) -> list[OpaqueTokenRecord | None]: ...


class RevocationStore(Protocol):
    """add answers the stored row's id per revocation, or its ItemError."""
    async def add_revocations(self, revocations: list[RevocationRecord]) -> list[int | ItemError]: ...
    async def list_revocations(self, after: RevocationCursor = RevocationCursor(),
                               limit: int = 10_000) -> RevocationPage: ...


class UserAuthenticator(Protocol):
    """The hot path of every sign-in (the password grant, the browser's sign-in page).

    One outcome per item, in order: the user, Invalid, Locked, or an ItemError.
    Unknown username, wrong password, no password and a disabled user are all
    Invalid, answered in the same time (an unknown user is checked against a dummy
    hash); a locked username or (username, address) answers Locked even for the
    right password. Counting, back-off and locks happen in the same transaction
    as the check, so concurrent guesses cannot slip past a lock. Items beyond the
    room left in the registry's queue answer ItemError(ITEM_UNAVAILABLE), unchecked
    and uncounted; with no room at all, the whole call is refused (Overloaded)."""
    async def authenticate_users(self, sign_ins: list[SignIn]) -> list[SignInOutcome]: ...


class UserDirectory(Protocol):
    """Operators' management of users. A password change, disabling or deleting a user
    revokes every token the user holds (a subject cut-off, published over NATS)."""
    async def create_user(self, spec: UserSpec) -> UserRecord: ...
    async def get_user(self, *, id: str = "", username: str = "") -> UserRecord | None: ...
    async def list_users(self, after: str = "", limit: int = 1000, query: str = "") -> UserPage: ...
    async def update_user(self, user_id: str, update: UserUpdate) -> UserRecord: ...
    async def delete_user(self, user_id: str) -> bool: ...
    async def set_user_password(self, user_id: str, password: str) -> UserRecord: ...
    async def unlock_user(self, user_id: str) -> UserRecord: ...
    async def change_user_roles(self, user_id: str, add: list[str], remove: list[str]) -> UserRecord: ...


class UserStore(UserAuthenticator, UserDirectory, Protocol):
    pass


class RefreshTokenStore(Protocol):
    """Refresh-token rotation, atomic in the registry (RFC 9700 §4.14.2).

    rotate: per item, in one transaction: the presented token (by hash) must be a
    refresh token of this client, unexpired (its own expiry and its family's),
    not revoked (its family, or a client or subject cut-off at or after its issue),
    its user active, its client active. Unconsumed: it is consumed and the
    successor stored (same client, subject, username, scopes and grant id; expiry
    min(now + client's refresh_token_lifetime, family end)) -> Rotated. Consumed,
    by the same client, within grace_seconds of its rotation -> Replay. Consumed
    otherwise -> Refused(reused): the family's refresh tokens are revoked and a
    grant revocation stored and published, in the same transaction.
    store_responses: (consumed token hash, encrypted response) pairs; None or ItemError each."""
    async def rotate_refresh_tokens(self, rotations: list[Rotation]) -> list[RotationOutcome]: ...
    async def store_rotation_responses(self, responses: list[tuple[bytes, bytes]]) -> list[ItemError | None]: ...


class ScopeCatalog(Protocol):
    """The scope catalog. A client's scopes must all be in it (ClientAdmin refuses others);
    delete raises InUse while a client has the scope."""
    async def create_scope(self, name: str, description: str, consent_required: bool) -> ScopeRecord: ...
    async def get_scopes(self, names: list[str]) -> list[ScopeRecord | None]: ...
    async def list_scopes(self) -> list[ScopeRecord]: ...
    async def update_scope(self, name: str, update: ScopeUpdate) -> ScopeRecord: ...
    async def delete_scope(self, name: str) -> bool: ...


class AuthorizationStore(Protocol):
    """The authorization endpoint's state, for the authorization_code service alone.

    Sessions: get answers None for an unknown, ended or expired session, and for one
    whose user is disabled, deleted, or changed password after the session began.
    create refuses (InvalidArgument) a session whose sign-in (`verified_at_ms`) is older
    than the user's last password change or disable. Pending requests: get answers None
    once expired or completed; complete answers False when it was completed already.
    Codes: create stores the code and records its grant id under (user, client);
    consume, per item in one transaction: unconsumed, unexpired and of this client ->
    the record, consumed now; consumed before -> CodeReused, with the grant revoked
    (stored and published) in the same transaction; otherwise CodeNotFound.
    withdraw_consent deletes the consent and revokes every grant recorded under
    (user, client), returning how many."""
    async def create_session(self, session: BrowserSession, lifetime_seconds: int,
                             verified_at_ms: int) -> BrowserSession: ...
    async def get_session(self, id_hash: bytes) -> BrowserSession | None: ...
    async def end_session(self, *, id_hash: bytes = b"", sid: str = "") -> bool: ...
    async def create_authorization_request(self, request: PendingAuthorization,
                                           lifetime_seconds: int) -> PendingAuthorization: ...
    async def get_authorization_request(self, id_hash: bytes) -> PendingAuthorization | None: ...
    async def complete_authorization_request(self, id_hash: bytes) -> bool: ...
    async def get_consent(self, user_id: str, client_id: str) -> ConsentRecord | None: ...
    async def grant_consent(self, user_id: str, client_id: str, scopes: list[str]) -> ConsentRecord: ...
    async def list_consents(self, user_id: str) -> list[ConsentRecord]: ...
    async def withdraw_consent(self, user_id: str, client_id: str, actor: str) -> tuple[bool, int]: ...
    async def create_authorization_code(self, code: AuthorizationCodeRecord,
                                        lifetime_seconds: int) -> AuthorizationCodeRecord: ...
    async def consume_authorization_codes(self, codes: list[CodeToConsume]) -> list[CodeOutcome]: ...
    async def record_user_grant(self, user_id: str, client_id: str, grant_id: str) -> None: ...


class ClientSecretReader(Protocol):
    """client_secret_jwt (RFC 7523 §2.2): the secrets of clients registered for that method,
    encrypted under the key-encryption key (AES-GCM, associated data "client:<client_id>");
    b"" for any other client or an unknown one. Only jwt_bearer may call it."""
    async def get_client_secrets(self, client_ids: list[str]) -> list[bytes]: ...


@dataclass(frozen=True)
class SecretRewrap:
    """What a rewrap of the sealed shared secrets did: how many it re-encrypted under the first
    key-encryption key, how many were under it already, and the labels ("client:<id>",
    "integration:<id>") of those no listed key opens (left as stored)."""
    rewrapped: int = 0
    current: int = 0
    unreadable: tuple[str, ...] = ()


class IntegrationStore(Protocol):
    """JWT-bearer integrations (RFC 7523 §2.1)."""
    async def create_integration(self, integration: JwtBearerIntegration, hmac_secret: bytes = b"") -> JwtBearerIntegration: ...
    async def get_integration(self, id: str) -> JwtBearerIntegration | None: ...
    async def find_integrations(self, client_id: str, issuer: str) -> list[JwtBearerIntegration]: ...
    async def list_integrations(self) -> list[JwtBearerIntegration]: ...
    async def update_integration(self, integration: JwtBearerIntegration, hmac_secret: bytes | None = None) -> JwtBearerIntegration: ...
    async def delete_integration(self, id: str) -> bool: ...
    async def get_integration_secrets(self, ids: list[str]) -> list[bytes]:
        """The HS256 secrets, encrypted ("integration:<id>"); b"" when none. jwt_bearer only."""
        ...


class ProviderStore(Protocol):
    """The OpenID provider registry."""
    async def create_provider(self, provider: OidcProvider) -> OidcProvider: ...
    async def get_provider(self, name: str) -> OidcProvider | None: ...
    async def list_providers(self) -> list[OidcProvider]: ...
    async def update_provider(self, provider: OidcProvider) -> OidcProvider: ...
    async def delete_provider(self, name: str) -> bool: ...


class JtiStore(Protocol):
    """The used-jti store (batched): True when the use is the first one (now recorded),
    False when (namespace, jti) was used before and has not expired, an ItemError on failure."""
    async def claim_jtis(self, claims: list[JtiClaim]) -> list[bool | ItemError]: ...


class FederatedUsers(Protocol):
    """Users by the field a foreign identity maps to, and provisioning of unknown ones."""
    async def find_user(self, field: str, value: str) -> UserRecord | None:
        """`field` in USER_FIELDS; exact match (email case-insensitively); None when none,
        or when more than one user has that email (ambiguous: never guess)."""
        ...
    async def find_users(self, keys: list[tuple[str, str]]) -> list[UserRecord | None]:
        """find_user for each (field, value), batched (the hot path of foreign tokens)."""
        ...
    async def provision_user(self, field: str, value: str, roles: list[str], provider: str) -> UserRecord:
        """Create a user without a password whose `field` is `value` (the username derived
        from it when field is email), or return the one that exists (idempotent)."""
        ...


class ClientRegistryApi(ClientStore, SigningKeyStore, TokenStore, RevocationStore, UserStore, RefreshTokenStore,
                        ScopeCatalog, AuthorizationStore, ClientSecretReader, IntegrationStore, ProviderStore,
                        JtiStore, FederatedUsers, Protocol):
    """Every domain at once: what the registry process hosts (and what a test or the
    one-process mode may hand around). Callers should ask for the narrow one they use."""

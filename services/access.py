"""THE access table: which callers may call which RPC of Inbound's gRPC services.

Every gRPC server checks every call against it (inboundlib.grpcx with
inboundlib.authz): the caller is the SPIFFE ID in its client certificate
(inboundlib.identity), and a call this table does not allow is PERMISSION_DENIED
with an `access_denied` audit event. An RPC without a row is refused; the
contract test (tests/contract/test_access_table.py) checks that every RPC in
proto/ has a row and every row names a real RPC.

Who calls what (read from the code; keep it so when a call is added):
- edge: a grant service's Token (it routes every grant); token_issuer's
  Introspect, Revoke and GetJwks (it serves /introspect, /revoke and /jwks).
- grant services (the module table's rows with a grant type): the registry's
  GetClients (their client cache authenticates the client) and token_issuer's Issue;
  the refresh_token grant also the registry's RefreshTokens (rotation) and
  GetOpaqueTokens (the presented token's scope, read before it is consumed).
- edge: also the authorization_code service's Authorization (the browser's pages).
- authorization_code: the registry's Authorizations (sessions, pending requests,
  consents, codes), GetScopes (the consent page's words), AuthenticateUsers (the
  sign-in page) and GetUser (ID token and UserInfo claims); token_issuer's
  Introspect (UserInfo) and GetJwks (an id_token_hint at RP-initiated logout).
- token_issuer: the registry's GetClients (it authenticates introspecting and
  revoking clients), SigningKeys, Tokens (opaque tokens) and Revocations;
  third_party_token's ForeignTokens.Introspect (JWTs of other issuers).
- third_party_token: as a grant service, and token_issuer's Introspect (Inbound's
  own tokens presented for an exchange).
- grant services and token_issuer: jwt_bearer's ClientAssertions.Verify (a client
  authenticating by private_key_jwt or client_secret_jwt), when their row says they
  call jwt_bearer (never jwt_bearer itself: its own grant checks them in process).
- jwt_bearer: as a grant service, and the registry's integrations (FindIntegrations,
  ListIntegrations to prefetch their keys, GetIntegrationSecrets for HS256),
  FindUsers (an assertion's subject), ClaimJtis (replay) and GetClientSecrets
  (client_secret_jwt).
- operators (inboundctl; later the admin API): every administrative RPC: the
  registry's client management, token_issuer's key listing and rotation and
  client-wide revocation, the audit log's Tail and Search.
- resource servers (outside Inbound, with a `resource_server` certificate, or
  on the introspection port with a client-credentials token carrying
  `inbound.introspect`): Introspect and GetJwks.
- `service/all_in_one` (every service in one process, one certificate) may do
  whatever any of Inbound's services may.
- anyone: the standard health service's Check and List (probes carry no
  certificate); its Watch, a stream held open for as long as the caller likes,
  only for authenticated callers (the introspection port takes anonymous peers).
"""
from __future__ import annotations

from inboundlib import authz, identity
from inboundlib.authz import Allowed
from services import modules

OPERATORS = authz.kinds(identity.OPERATOR)
RESOURCE_SERVERS = authz.kinds(identity.RESOURCE_SERVER)
AUTHENTICATED = authz.kinds(*identity.KINDS)
ALL_IN_ONE = identity.service(modules.ALL_IN_ONE)


def services(*names: str) -> Allowed:
    """These services of the module table, and the one-process mode that hosts them all."""
    unknown = set(names) - set(modules.NAMES)
    if unknown:
        raise ValueError(f"not in the module table: {sorted(unknown)}")
    return authz.callers(*(identity.service(n) for n in names), ALL_IN_ONE)


GRANT_SERVICES = services(*(m.name for m in modules.MODULES if m.grant_type))
GRANT_ROUTERS = services(*(m.name for m in modules.MODULES if m.calls_grants))
EDGE = services("edge")
ISSUER = services("token_issuer")

# Callers that verify client secrets (RFC 6749 §2.3.1) and so get clients' secret
# hashes from the registry: grant services (the grant runner authenticates the
# client) and token_issuer (introspecting and revoking clients). Everyone else
# (operators, resource servers, ...) gets client records without them.
SECRET_VERIFIERS = GRANT_SERVICES | ISSUER

# Callers of jwt_bearer's ClientAssertions.Verify (RFC 7523 §2.2): the services that
# authenticate clients (grant services, token_issuer) once their module row says they call
# jwt_bearer; never jwt_bearer itself (its own grant checks assertions in process).
ASSERTION_VERIFIERS = services(*(m.name for m in modules.MODULES if "jwt_bearer" in (*m.depends_on, *m.calls_later)))

# Callers whose `x-inbound-actor` metadata is believed: they pass on the actor of
# work they do for someone else. token_issuer: an operator's key rotation adds the
# key through the registry, whose change event must name that operator, not the
# issuer. No other caller relays today: operators are the operator their
# certificate names (the admin API, acting for users, will need a row here).
RELAYS = frozenset({identity.service("token_issuer"), ALL_IN_ONE})

_ISSUER = "/inbound.issuer.v1.TokenIssuer/"
_CLIENTS = "/inbound.registry.v1.Clients/"
_KEYS = "/inbound.registry.v1.SigningKeys/"
_TOKENS = "/inbound.registry.v1.Tokens/"
_REVOCATIONS = "/inbound.registry.v1.Revocations/"
_USERS = "/inbound.registry.v1.Users/"
_REFRESH = "/inbound.registry.v1.RefreshTokens/"
_SCOPES = "/inbound.registry.v1.Scopes/"
_AUTHZ_STATE = "/inbound.registry.v1.Authorizations/"
_USED_JTIS = "/inbound.registry.v1.UsedJtis/"
_INTEGRATIONS = "/inbound.registry.v1.Integrations/"
_PROVIDERS = "/inbound.registry.v1.Providers/"
_FEDERATED_USERS = "/inbound.registry.v1.FederatedUsers/"
_AUTHORIZE = "/inbound.authorize.v1.Authorization/"
_AUDIT = "/inbound.audit.v1.AuditLog/"
_CLIENT_ASSERTIONS = "/inbound.federation.v1.ClientAssertions/"
_FOREIGN_TOKENS = "/inbound.federation.v1.ForeignTokens/"
_HEALTH = "/grpc.health.v1.Health/"

RULES: dict[str, Allowed] = {
    "/inbound.grant.v1.GrantService/Token": GRANT_ROUTERS,

    _ISSUER + "Issue": GRANT_SERVICES,
    # authorization_code: UserInfo introspects the bearer token; RP-initiated logout checks
    # an id_token_hint's signature against the JWKS.
    # authorization_code: UserInfo; third_party_token: Inbound's own subject and actor tokens of an exchange.
    _ISSUER + "Introspect": EDGE | RESOURCE_SERVERS | services("authorization_code", "third_party_token"),
    _ISSUER + "GetJwks": EDGE | RESOURCE_SERVERS | services("authorization_code"),
    _ISSUER + "Revoke": EDGE,
    _ISSUER + "RevokeClientTokens": OPERATORS,
    _ISSUER + "ListKeys": OPERATORS,
    _ISSUER + "RotateKey": OPERATORS,
    _ISSUER + "RewrapKeys": OPERATORS,  # inboundctl keys rewrap (the key-encryption key rotated)

    _CLIENTS + "GetClients": SECRET_VERIFIERS | OPERATORS,
    _CLIENTS + "ListClients": OPERATORS,
    _CLIENTS + "CreateClient": OPERATORS,
    _CLIENTS + "UpdateClient": OPERATORS,
    _CLIENTS + "DeleteClient": OPERATORS,
    _CLIENTS + "RotateClientSecret": OPERATORS,
    _CLIENTS + "RewrapSecrets": OPERATORS,  # inboundctl keys rewrap: sealed secrets under the first KEK
    # Sealed client_secret_jwt secrets: jwt_bearer alone checks those assertions (and holds the KEK).
    _CLIENTS + "GetClientSecrets": services("jwt_bearer"),
    # Replay refusal of JWTs from outside: the two services that validate them (jwt_bearer: client
    # assertions, for every grant service and token_issuer, and JWT-bearer grants; third_party_token:
    # providers' tokens). No other may spend a jti of someone else's namespace.
    _USED_JTIS + "ClaimJtis": services("jwt_bearer", "third_party_token"),

    # JWT-bearer integrations: operators manage them (inboundctl integration ...); jwt_bearer reads
    # them for its grant, and alone gets their sealed HS256 secrets (it alone holds what opens them).
    **{_INTEGRATIONS + rpc: OPERATORS for rpc in ("CreateIntegration", "UpdateIntegration", "DeleteIntegration")},
    **{_INTEGRATIONS + rpc: OPERATORS | services("jwt_bearer") for rpc in (
        "GetIntegration", "FindIntegrations", "ListIntegrations")},
    _INTEGRATIONS + "GetIntegrationSecrets": services("jwt_bearer"),
    # OpenID providers: operators manage them (inboundctl provider ...); third_party_token uses them
    # (token_issuer routes every JWT of another issuer to it, so needs no provider list).
    **{_PROVIDERS + rpc: OPERATORS for rpc in ("CreateProvider", "UpdateProvider", "DeleteProvider")},
    **{_PROVIDERS + rpc: OPERATORS | services("third_party_token") for rpc in (
        "GetProvider", "ListProviders")},
    # Users named by a foreign identity: the subjects of JWT-bearer assertions and of providers'
    # tokens; provisioning only for providers that may (third_party_token decides by the provider).
    _FEDERATED_USERS + "FindUsers": services("jwt_bearer", "third_party_token"),
    _FEDERATED_USERS + "ProvisionUser": services("third_party_token"),

    # Stored signing keys (encrypted private keys) are token_issuer's alone: operators list
    # and rotate keys through token_issuer (ListKeys, RotateKey), which makes and checks them.
    _KEYS + "ListSigningKeys": ISSUER,
    _KEYS + "AddSigningKey": ISSUER,
    _KEYS + "RewrapSigningKey": ISSUER,  # only token_issuer holds the key-encryption keys

    _TOKENS + "StoreOpaqueTokens": ISSUER,
    # The refresh_token grant reads the presented token's scope before rotating it (a scope
    # beyond it is refused with the token left unconsumed).
    _TOKENS + "GetOpaqueTokens": ISSUER | services("refresh_token"),

    _REVOCATIONS + "AddRevocations": ISSUER,
    _REVOCATIONS + "ListRevocations": ISSUER,

    _USERS + "CreateUser": OPERATORS,
    # authorization_code: the claims of ID tokens and of UserInfo.
    _USERS + "GetUser": OPERATORS | services("authorization_code"),
    _USERS + "ListUsers": OPERATORS,
    _USERS + "UpdateUser": OPERATORS,
    _USERS + "DeleteUser": OPERATORS,
    _USERS + "SetUserPassword": OPERATORS,
    _USERS + "UnlockUser": OPERATORS,
    _USERS + "ChangeUserRoles": OPERATORS,
    # Sign-ins: the password grant and the browser's sign-in page.
    _USERS + "AuthenticateUsers": services("password", "authorization_code"),

    # Refresh-token rotation: the refresh_token grant alone.
    _REFRESH + "RotateRefreshTokens": services("refresh_token"),
    _REFRESH + "StoreRotationResponses": services("refresh_token"),

    # The scope catalog: operators manage it (inboundctl scope ...).
    _SCOPES + "CreateScope": OPERATORS,
    # authorization_code: the words of the consent page, and which scopes need consent.
    _SCOPES + "GetScopes": OPERATORS | services("authorization_code"),
    _SCOPES + "ListScopes": OPERATORS,
    _SCOPES + "UpdateScope": OPERATORS,
    _SCOPES + "DeleteScope": OPERATORS,

    # The authorization endpoint's state (sessions, pending requests, consents, codes): the
    # authorization_code service alone (it keeps them; nobody else reads a session or a code).
    **{_AUTHZ_STATE + rpc: services("authorization_code") for rpc in (
        "CreateSession", "GetSession", "EndSession", "CreateAuthorizationRequest", "GetAuthorizationRequest",
        "CompleteAuthorizationRequest", "GetConsent", "GrantConsent", "ListConsents", "WithdrawConsent",
        "CreateAuthorizationCode", "ConsumeAuthorizationCodes", "RecordUserGrant")},
    # The authorize contract: the edge renders its outcomes for the browser.
    **{_AUTHORIZE + rpc: EDGE for rpc in (
        "Authorize", "SignIn", "Consent", "GetAccount", "WithdrawConsent", "EndSession", "UserInfo")},

    # RFC 7523 §2.2 client assertions, checked by jwt_bearer for whoever authenticates clients.
    _CLIENT_ASSERTIONS + "Verify": ASSERTION_VERIFIERS,
    # Third-party tokens accepted as-is: token_issuer routes foreign JWTs' introspection here.
    _FOREIGN_TOKENS + "Introspect": ISSUER,

    _AUDIT + "Tail": OPERATORS,
    _AUDIT + "Search": OPERATORS,

    _HEALTH + "Check": authz.ANYONE,
    # Probes use Check; an anonymous peer could hold any number of Watch streams open.
    _HEALTH + "Watch": AUTHENTICATED,
    _HEALTH + "List": authz.ANYONE,
}


POLICY = authz.Policy(rules=RULES, relays=RELAYS)

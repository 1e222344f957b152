"""The access table (services/access.py) against the contracts in proto/: every RPC
has a row, every row names a real RPC, and the rules the issue asks for hold."""
from __future__ import annotations

import importlib
from pathlib import Path

from grpc_health.v1 import health_pb2

from inboundlib import identity
from services import access, modules

PROTO = Path(__file__).resolve().parents[2] / "proto"


def rpcs() -> set[str]:
    """Every RPC in proto/ (and the standard health service), by full method name."""
    found = set()
    descriptors = [health_pb2.DESCRIPTOR]
    for path in PROTO.glob("inbound/*/v1/*.proto"):
        descriptors.append(importlib.import_module(
            ".".join(path.relative_to(PROTO).with_suffix("").parts) + "_pb2").DESCRIPTOR)
    for file in descriptors:
        for service in file.services_by_name.values():
            found |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return found


def admitted(method: str) -> set[identity.Caller]:
    """Which of Inbound's own callers (and one operator, one resource server) a rule admits."""
    candidates = [identity.service(n) for n in (*modules.NAMES, modules.ALL_IN_ONE)]
    candidates += [identity.operator("alice"), identity.resource_server("rs")]
    return {c for c in candidates if access.RULES[method].admits(c)}


def test_every_rpc_has_a_row_and_every_row_is_an_rpc():
    assert len(rpcs()) > 20
    assert sorted(rpcs() - set(access.RULES)) == [], "RPCs without a row (they would be refused to everyone)"
    assert sorted(set(access.RULES) - rpcs()) == [], "rows naming no RPC"


def test_only_the_health_service_is_open():
    open_ = {m for m, rule in access.RULES.items() if rule.admits(None)}
    # Not Watch: a stream an anonymous peer (the introspection port takes them) could hold open by the thousand.
    assert open_ == {"/grpc.health.v1.Health/" + m for m in ("Check", "List")}
    assert admitted("/grpc.health.v1.Health/Watch") == admitted("/grpc.health.v1.Health/Check")


def test_issue_only_from_grant_services():
    grants = {identity.service(m.name) for m in modules.MODULES if m.grant_type}
    assert grants and admitted("/inbound.issuer.v1.TokenIssuer/Issue") == grants | {access.ALL_IN_ONE}


def test_administrative_rpcs_only_from_operators_and_the_service_that_needs_them():
    alice = identity.operator("alice")
    for method in ("/inbound.registry.v1.Clients/" + m for m in
                   ("CreateClient", "UpdateClient", "DeleteClient", "RotateClientSecret", "ListClients")):
        assert admitted(method) == {alice}, method
    for method in ("/inbound.issuer.v1.TokenIssuer/" + m for m in ("RotateKey", "ListKeys", "RevokeClientTokens")):
        assert admitted(method) == {alice}, method
    for method in ("/inbound.audit.v1.AuditLog/Tail", "/inbound.audit.v1.AuditLog/Search"):
        assert admitted(method) == {alice}, method
    issuer = {identity.service("token_issuer"), access.ALL_IN_ONE}
    for method in ("/inbound.registry.v1.SigningKeys/AddSigningKey", "/inbound.registry.v1.SigningKeys/ListSigningKeys"):
        assert admitted(method) == issuer, method


def test_resource_servers_and_the_edge_introspect_and_read_the_jwks_and_nothing_else():
    rs = identity.resource_server("rs")
    reachable = {m for m in access.RULES if rs in admitted(m)}
    assert reachable == {"/inbound.issuer.v1.TokenIssuer/Introspect", "/inbound.issuer.v1.TokenIssuer/GetJwks",
                         *("/grpc.health.v1.Health/" + m for m in ("Check", "Watch", "List"))}
    edge = identity.service("edge")
    assert {m for m in access.RULES if edge in admitted(m) and "Health" not in m} == {
        "/inbound.grant.v1.GrantService/Token", "/inbound.issuer.v1.TokenIssuer/Introspect",
        "/inbound.issuer.v1.TokenIssuer/GetJwks", "/inbound.issuer.v1.TokenIssuer/Revoke",
        *("/inbound.authorize.v1.Authorization/" + m for m in (
            "Authorize", "SignIn", "Consent", "GetAccount", "WithdrawConsent", "EndSession", "UserInfo"))}


def test_all_in_one_may_do_what_any_service_may():
    for method in access.RULES:
        if any(c.kind == identity.SERVICE for c in admitted(method)):
            assert access.ALL_IN_ONE in admitted(method), method


def test_secret_hashes_go_only_to_the_services_that_verify_secrets():
    verifiers = {identity.service(m.name) for m in modules.MODULES if m.grant_type}
    verifiers |= {identity.service("token_issuer"), access.ALL_IN_ONE}
    candidates = [identity.service(n) for n in (*modules.NAMES, modules.ALL_IN_ONE)]
    candidates += [identity.operator("alice"), identity.resource_server("rs"), None]
    assert {c for c in candidates if access.SECRET_VERIFIERS.admits(c)} == verifiers


def test_only_operators_rewrap_and_only_token_issuer_replaces_a_stored_key():
    assert admitted("/inbound.issuer.v1.TokenIssuer/RewrapKeys") == {identity.operator("alice")}
    assert admitted("/inbound.registry.v1.SigningKeys/RewrapSigningKey") == {identity.service("token_issuer"),
                                                                             access.ALL_IN_ONE}


def test_user_administration_is_for_operators_alone():
    for method in ("/inbound.registry.v1.Users/" + m for m in
                   ("CreateUser", "ListUsers", "UpdateUser", "DeleteUser", "SetUserPassword",
                    "UnlockUser", "ChangeUserRoles")):
        assert admitted(method) == {identity.operator("alice")}, method
    # Reading one user: operators, and authorization_code for the claims of ID tokens and UserInfo.
    assert admitted("/inbound.registry.v1.Users/GetUser") == {
        identity.operator("alice"), identity.service("authorization_code"), access.ALL_IN_ONE}


def test_sign_ins_and_rotations_only_from_the_grant_that_makes_them():
    """A password check answers whether a password is right, a rotation consumes a refresh
    token: no other grant service (nor an operator, nor token_issuer) may ask for either."""
    assert admitted("/inbound.registry.v1.Users/AuthenticateUsers") == {
        identity.service("password"), identity.service("authorization_code"), access.ALL_IN_ONE}
    for method in ("/inbound.registry.v1.RefreshTokens/" + m for m in
                   ("RotateRefreshTokens", "StoreRotationResponses")):
        assert admitted(method) == {identity.service("refresh_token"), access.ALL_IN_ONE}, method
    # The refresh_token grant reads the presented token's scope before it is consumed.
    assert admitted("/inbound.registry.v1.Tokens/GetOpaqueTokens") == {
        identity.service("token_issuer"), identity.service("refresh_token"), access.ALL_IN_ONE}
    assert admitted("/inbound.registry.v1.Tokens/StoreOpaqueTokens") == {identity.service("token_issuer"),
                                                                          access.ALL_IN_ONE}


def test_the_browser_state_is_the_authorization_code_service_s_alone_and_its_contract_the_edge_s():
    """Sessions, pending requests, consents and codes: a session id's hash or a code's is
    enough to act for a user, so no other service (nor an operator) may read or write them;
    the authorize contract is called by the edge alone."""
    own = {identity.service("authorization_code"), access.ALL_IN_ONE}
    state = [m for m in access.RULES if m.startswith("/inbound.registry.v1.Authorizations/")]
    assert len(state) == 13
    for method in state:
        assert admitted(method) == own, method
    for method in (m for m in access.RULES if m.startswith("/inbound.authorize.v1.Authorization/")):
        assert admitted(method) == {identity.service("edge"), access.ALL_IN_ONE}, method
    assert admitted("/inbound.registry.v1.Scopes/GetScopes") == {identity.operator("alice"), *own}
    for method in ("CreateScope", "UpdateScope", "DeleteScope", "ListScopes"):
        assert admitted("/inbound.registry.v1.Scopes/" + method) == {identity.operator("alice")}, method


def test_federation_secrets_go_to_jwt_bearer_alone_and_its_data_to_who_uses_it():
    """Sealed client_secret_jwt and HS256 secrets: jwt_bearer alone holds what opens them. Integrations
    and providers are managed by operators only; users are provisioned by third_party_token only."""
    alice, bearer, third = identity.operator("alice"), identity.service("jwt_bearer"), identity.service(
        "third_party_token")
    for method in ("/inbound.registry.v1.Clients/GetClientSecrets",
                   "/inbound.registry.v1.Integrations/GetIntegrationSecrets"):
        assert admitted(method) == {bearer, access.ALL_IN_ONE}, method
    for method in ("CreateIntegration", "UpdateIntegration", "DeleteIntegration"):
        assert admitted("/inbound.registry.v1.Integrations/" + method) == {alice}, method
    for method in ("CreateProvider", "UpdateProvider", "DeleteProvider"):
        assert admitted("/inbound.registry.v1.Providers/" + method) == {alice}, method
    assert admitted("/inbound.registry.v1.FederatedUsers/ProvisionUser") == {third, access.ALL_IN_ONE}
    assert admitted("/inbound.registry.v1.FederatedUsers/FindUsers") == {bearer, third, access.ALL_IN_ONE}
    assert identity.service("edge") not in admitted("/inbound.registry.v1.UsedJtis/ClaimJtis")


def test_used_jtis_and_the_provider_list_only_for_the_services_that_validate_foreign_jwts():
    """ClaimJtis spends a jti in a trust's namespace: only jwt_bearer (client assertions for everyone,
    its grant) and third_party_token (providers' tokens) validate such JWTs; a grant service or
    token_issuer that could call it could spend another client's jti. The provider list is
    third_party_token's (token_issuer routes every JWT of another issuer there without it)."""
    validators = {identity.service("jwt_bearer"), identity.service("third_party_token"), access.ALL_IN_ONE}
    assert admitted("/inbound.registry.v1.UsedJtis/ClaimJtis") == validators
    for method in ("GetProvider", "ListProviders"):
        assert identity.service("token_issuer") not in admitted("/inbound.registry.v1.Providers/" + method), method

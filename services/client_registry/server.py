"""gRPC servicers for client_registry, one per domain: protobuf in, repository
calls, protobuf out. The only place where domain errors become status codes.

`DOMAINS` says what the registry process registers on its gRPC server, per
domain (the health service names them too); `add_to_server` adds them all.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from inbound.registry.v1 import registry_pb2 as pb
from inbound.registry.v1 import registry_pb2_grpc
from inboundlib import authz
from services import access
from services.client_registry import wire
from services.client_registry.api import (
    AlreadyExists,
    AuthorizationStore,
    ClientSecretReader,
    ClientStore,
    CodeToConsume,
    FederatedUsers,
    IntegrationStore,
    InUse,
    InvalidArgument,
    ItemError,
    JtiStore,
    NotFound,
    ProviderStore,
    RefreshTokenStore,
    RegistryError,
    RevocationStore,
    ScopeCatalog,
    ScopeUpdate,
    SigningKeyStore,
    TokenStore,
    UserStore,
)

MAX_BATCH = 256
MAX_PAGE = 10_000

# Domain error -> status code; client.py maps them back.
STATUS_OF: dict[type[RegistryError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    InUse: grpc.StatusCode.FAILED_PRECONDITION,
}


async def _call(context, coro):
    try:
        return await coro
    except RegistryError as exc:
        status = next((code for cls, code in STATUS_OF.items() if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
        await context.abort(status, str(exc) or type(exc).__name__)


async def _check_batch(context, items, what: str) -> None:
    if len(items) > MAX_BATCH:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} {what} a call")


def _client_to_pb(client) -> pb.Client:
    """A client record for the caller of this call: with its secret hash only for
    a caller that verifies client secrets (services/access.py, SECRET_VERIFIERS)."""
    return wire.client_to_pb(client, with_secret_hash=authz.admitted(access.SECRET_VERIFIERS))


class ClientsServicer(registry_pb2_grpc.ClientsServicer):
    def __init__(self, clients: ClientStore):
        self.clients = clients

    async def CreateClient(self, request, context):
        client, secret = await _call(context, self.clients.create_client(wire.spec_from_pb(request.spec)))
        return pb.CreateClientResponse(client=_client_to_pb(client), client_secret=secret)

    async def GetClients(self, request, context):
        await _check_batch(context, request.client_ids, "ids")
        found = await self.clients.get_clients(list(request.client_ids))
        return pb.GetClientsResponse(results=[
            pb.ClientLookup(client=_client_to_pb(c)) if c else pb.ClientLookup() for c in found])

    async def ListClients(self, request, context):
        return pb.ListClientsResponse(clients=[_client_to_pb(c) for c in await self.clients.list_clients()])

    async def UpdateClient(self, request, context):
        client = await _call(context, self.clients.update_client(request.client_id, wire.update_from_pb(request)))
        return pb.UpdateClientResponse(client=_client_to_pb(client))

    async def DeleteClient(self, request, context):
        return pb.DeleteClientResponse(deleted=await _call(context, self.clients.delete_client(request.client_id)))

    async def RotateClientSecret(self, request, context):
        method = request.token_endpoint_auth_method if request.HasField("token_endpoint_auth_method") else None
        client, secret = await _call(context, self.clients.rotate_client_secret(request.client_id, method))
        return pb.RotateClientSecretResponse(client=_client_to_pb(client), client_secret=secret)

    async def GetClientSecrets(self, request, context):
        # Only jwt_bearer reaches this (services/access.py): the blobs are sealed, and it alone opens them.
        await _check_batch(context, request.client_ids, "ids")
        reader: ClientSecretReader = self.clients
        return pb.GetClientSecretsResponse(sealed_secrets=await reader.get_client_secrets(list(request.client_ids)))

    async def RewrapSecrets(self, request, context):
        # Operators only (services/access.py): counts and labels out, never a secret or a blob.
        done = await self.clients.rewrap_sealed_secrets()
        return pb.RewrapSecretsResponse(rewrapped=done.rewrapped, current=done.current, unreadable=done.unreadable)


class UsedJtisServicer(registry_pb2_grpc.UsedJtisServicer):
    def __init__(self, jtis: JtiStore):
        self.jtis = jtis

    async def ClaimJtis(self, request, context):
        await _check_batch(context, request.claims, "claims")
        outcomes = await self.jtis.claim_jtis([wire.jti_claim_from_pb(c) for c in request.claims])
        return pb.ClaimJtisResponse(results=[wire.jti_outcome_to_pb(o) for o in outcomes])


class SigningKeysServicer(registry_pb2_grpc.SigningKeysServicer):
    def __init__(self, keys: SigningKeyStore):
        self.keys = keys

    async def ListSigningKeys(self, request, context):
        return pb.ListSigningKeysResponse(keys=[wire.key_to_pb(k) for k in await self.keys.list_signing_keys()])

    async def AddSigningKey(self, request, context):
        added = await _call(context, self.keys.add_signing_key(wire.key_from_pb(request.key), request.only_if_none))
        return pb.AddSigningKeyResponse(added=added)

    async def RewrapSigningKey(self, request, context):
        replaced = await _call(context, self.keys.rewrap_signing_key(
            request.kid, request.expected_encrypted_private_key, request.encrypted_private_key))
        return pb.RewrapSigningKeyResponse(replaced=replaced)


class TokensServicer(registry_pb2_grpc.TokensServicer):
    def __init__(self, tokens: TokenStore):
        self.tokens = tokens

    async def StoreOpaqueTokens(self, request, context):
        await _check_batch(context, request.tokens, "tokens")
        errors = await self.tokens.store_opaque_tokens([wire.opaque_from_pb(t) for t in request.tokens])
        return pb.StoreOpaqueTokensResponse(errors=[wire.item_error_to_pb(e) for e in errors])

    async def GetOpaqueTokens(self, request, context):
        await _check_batch(context, request.token_hashes, "hashes")
        found = await self.tokens.get_opaque_tokens(list(request.token_hashes))
        return pb.GetOpaqueTokensResponse(results=[
            pb.OpaqueTokenLookup(token=wire.opaque_to_pb(t)) if t else pb.OpaqueTokenLookup() for t in found])


class RevocationsServicer(registry_pb2_grpc.RevocationsServicer):
    def __init__(self, revocations: RevocationStore):
        self.revocations = revocations

    async def AddRevocations(self, request, context):
        await _check_batch(context, request.revocations, "revocations")
        outcomes = await self.revocations.add_revocations(
            [wire.revocation_from_pb(r) for r in request.revocations])
        return pb.AddRevocationsResponse(results=[
            pb.RevocationOutcome(error=wire.item_error_to_pb(o)) if isinstance(o, ItemError)
            else pb.RevocationOutcome(id=o) for o in outcomes])

    async def ListRevocations(self, request, context):
        limit = request.limit if 0 < request.limit <= MAX_PAGE else MAX_PAGE
        page = await self.revocations.list_revocations(wire.cursor_from_pb(request.after), limit)
        return pb.ListRevocationsResponse(revocations=[wire.revocation_to_pb(r) for r in page.records],
                                          next=wire.cursor_to_pb(page.next), more=page.more,
                                          scan=wire.cursor_to_pb(page.read_on_from))


class RefreshTokensServicer(registry_pb2_grpc.RefreshTokensServicer):
    def __init__(self, refresh_tokens: RefreshTokenStore):
        self.refresh_tokens = refresh_tokens

    async def RotateRefreshTokens(self, request, context):
        await _check_batch(context, request.requests, "rotations")
        outcomes = await self.refresh_tokens.rotate_refresh_tokens(
            [wire.rotation_from_pb(r) for r in request.requests])
        return pb.RotateRefreshTokensResponse(results=[wire.rotation_outcome_to_pb(o) for o in outcomes])

    async def StoreRotationResponses(self, request, context):
        await _check_batch(context, request.responses, "responses")
        errors = await self.refresh_tokens.store_rotation_responses(
            [(r.token_hash, r.encrypted_response) for r in request.responses])
        return pb.StoreRotationResponsesResponse(errors=[wire.item_error_to_pb(e) for e in errors])


class UsersServicer(registry_pb2_grpc.UsersServicer):
    """The user directory. Passwords come in (create, set, sign-in) and never go out:
    no reply carries a hash, and no error text repeats what was sent."""

    def __init__(self, users: UserStore):
        self.users = users

    async def CreateUser(self, request, context):
        user = await _call(context, self.users.create_user(wire.user_spec_from_pb(request.spec)))
        return pb.CreateUserResponse(user=wire.user_to_pb(user))

    async def GetUser(self, request, context):
        key = request.WhichOneof("key")
        user = await self.users.get_user(id=request.id if key == "id" else "",
                                         username=request.username if key == "username" else "")
        return pb.GetUserResponse(user=wire.user_to_pb(user)) if user else pb.GetUserResponse()

    async def ListUsers(self, request, context):
        page = await _call(context, self.users.list_users(request.after, request.limit or 1000, request.query))
        return pb.ListUsersResponse(users=[wire.user_to_pb(u) for u in page.users], next=page.next)

    async def UpdateUser(self, request, context):
        user = await _call(context, self.users.update_user(request.id, wire.user_update_from_pb(request)))
        return pb.UpdateUserResponse(user=wire.user_to_pb(user))

    async def DeleteUser(self, request, context):
        return pb.DeleteUserResponse(deleted=await _call(context, self.users.delete_user(request.id)))

    async def SetUserPassword(self, request, context):
        user = await _call(context, self.users.set_user_password(request.id, request.password))
        return pb.SetUserPasswordResponse(user=wire.user_to_pb(user))

    async def UnlockUser(self, request, context):
        user = await _call(context, self.users.unlock_user(request.id))
        return pb.UnlockUserResponse(user=wire.user_to_pb(user))

    async def ChangeUserRoles(self, request, context):
        user = await _call(context, self.users.change_user_roles(request.id, list(request.add), list(request.remove)))
        return pb.ChangeUserRolesResponse(user=wire.user_to_pb(user))

    async def AuthenticateUsers(self, request, context):
        # A full password pool raises Overloaded: UNAVAILABLE (RegistryService.unavailable_on).
        await _check_batch(context, request.requests, "sign-ins")
        outcomes = await self.users.authenticate_users([wire.sign_in_from_pb(r) for r in request.requests])
        return pb.AuthenticateUsersResponse(results=[wire.sign_in_outcome_to_pb(o) for o in outcomes])


class ScopesServicer(registry_pb2_grpc.ScopesServicer):
    def __init__(self, scopes: ScopeCatalog):
        self.scopes = scopes

    async def CreateScope(self, request, context):
        scope = await _call(context, self.scopes.create_scope(request.name, request.description,
                                                              request.consent_required))
        return pb.CreateScopeResponse(scope=wire.scope_to_pb(scope))

    async def GetScopes(self, request, context):
        await _check_batch(context, request.names, "names")
        found = await self.scopes.get_scopes(list(request.names))
        return pb.GetScopesResponse(results=[
            pb.ScopeLookup(scope=wire.scope_to_pb(s)) if s else pb.ScopeLookup() for s in found])

    async def ListScopes(self, request, context):
        return pb.ListScopesResponse(scopes=[wire.scope_to_pb(s) for s in await self.scopes.list_scopes()])

    async def UpdateScope(self, request, context):
        update = ScopeUpdate(
            description=request.description if request.HasField("description") else None,
            consent_required=request.consent_required if request.HasField("consent_required") else None)
        scope = await _call(context, self.scopes.update_scope(request.name, update))
        return pb.UpdateScopeResponse(scope=wire.scope_to_pb(scope))

    async def DeleteScope(self, request, context):
        return pb.DeleteScopeResponse(deleted=await _call(context, self.scopes.delete_scope(request.name)))


class AuthorizationsServicer(registry_pb2_grpc.AuthorizationsServicer):
    """The authorization endpoint's state. Replies never carry more than the caller sent or
    the registry keeps: secrets travel only as hashes, and error texts never repeat them."""

    def __init__(self, store: AuthorizationStore):
        self.store = store

    async def CreateSession(self, request, context):
        session = await _call(context, self.store.create_session(
            wire.session_from_pb(request.session), request.lifetime_seconds, request.verified_at_unix_ms))
        return pb.CreateSessionResponse(session=wire.session_to_pb(session))

    async def GetSession(self, request, context):
        session = await self.store.get_session(request.id_hash)
        return pb.GetSessionResponse(session=wire.session_to_pb(session)) if session else pb.GetSessionResponse()

    async def EndSession(self, request, context):
        ended = await _call(context, self.store.end_session(id_hash=request.id_hash, sid=request.sid))
        return pb.EndSessionResponse(ended=ended)

    async def CreateAuthorizationRequest(self, request, context):
        pending = await _call(context, self.store.create_authorization_request(
            wire.pending_from_pb(request.request), request.lifetime_seconds))
        return pb.CreateAuthorizationRequestResponse(request=wire.pending_to_pb(pending))

    async def GetAuthorizationRequest(self, request, context):
        pending = await self.store.get_authorization_request(request.id_hash)
        return (pb.GetAuthorizationRequestResponse(request=wire.pending_to_pb(pending)) if pending
                else pb.GetAuthorizationRequestResponse())

    async def CompleteAuthorizationRequest(self, request, context):
        completed = await _call(context, self.store.complete_authorization_request(request.id_hash))
        return pb.CompleteAuthorizationRequestResponse(completed=completed)

    async def GetConsent(self, request, context):
        consent = await self.store.get_consent(request.user_id, request.client_id)
        return pb.GetConsentResponse(consent=wire.consent_to_pb(consent)) if consent else pb.GetConsentResponse()

    async def GrantConsent(self, request, context):
        consent = await _call(context, self.store.grant_consent(request.user_id, request.client_id,
                                                                list(request.scopes)))
        return pb.GrantConsentResponse(consent=wire.consent_to_pb(consent))

    async def ListConsents(self, request, context):
        consents = await self.store.list_consents(request.user_id)
        return pb.ListConsentsResponse(consents=[wire.consent_to_pb(c) for c in consents])

    async def WithdrawConsent(self, request, context):
        withdrawn, revoked = await _call(context, self.store.withdraw_consent(request.user_id, request.client_id,
                                                                              request.actor))
        return pb.WithdrawConsentResponse(withdrawn=withdrawn, grants_revoked=revoked)

    async def CreateAuthorizationCode(self, request, context):
        code = await _call(context, self.store.create_authorization_code(wire.code_from_pb(request.code),
                                                                         request.lifetime_seconds))
        return pb.CreateAuthorizationCodeResponse(code=wire.code_to_pb(code))

    async def ConsumeAuthorizationCodes(self, request, context):
        await _check_batch(context, request.codes, "codes")
        outcomes = await self.store.consume_authorization_codes(
            [CodeToConsume(code_hash=c.code_hash, client_id=c.client_id) for c in request.codes])
        return pb.ConsumeAuthorizationCodesResponse(results=[wire.code_outcome_to_pb(o) for o in outcomes])

    async def RecordUserGrant(self, request, context):
        await _call(context, self.store.record_user_grant(request.user_id, request.client_id, request.grant_id))
        return pb.RecordUserGrantResponse()


class IntegrationsServicer(registry_pb2_grpc.IntegrationsServicer):
    """JWT-bearer integrations. An HS256 secret comes in (create, update) and never goes out
    but sealed, to jwt_bearer alone (GetIntegrationSecrets; services/access.py)."""

    def __init__(self, integrations: IntegrationStore):
        self.integrations = integrations

    async def CreateIntegration(self, request, context):
        created = await _call(context, self.integrations.create_integration(
            wire.integration_from_pb(request.integration), request.hmac_secret))
        return pb.CreateIntegrationResponse(integration=wire.integration_to_pb(created))

    async def GetIntegration(self, request, context):
        found = await self.integrations.get_integration(request.id)
        return pb.GetIntegrationResponse(integration=wire.integration_to_pb(found) if found else None)

    async def FindIntegrations(self, request, context):
        found = await self.integrations.find_integrations(request.client_id, request.issuer)
        return pb.FindIntegrationsResponse(integrations=[wire.integration_to_pb(i) for i in found])

    async def ListIntegrations(self, request, context):
        listed = await self.integrations.list_integrations()
        return pb.ListIntegrationsResponse(integrations=[wire.integration_to_pb(i) for i in listed])

    async def UpdateIntegration(self, request, context):
        secret = request.hmac_secret if request.HasField("hmac_secret") else None
        updated = await _call(context, self.integrations.update_integration(
            wire.integration_from_pb(request.integration), secret))
        return pb.UpdateIntegrationResponse(integration=wire.integration_to_pb(updated))

    async def DeleteIntegration(self, request, context):
        return pb.DeleteIntegrationResponse(deleted=await _call(context, self.integrations.delete_integration(
            request.id)))

    async def GetIntegrationSecrets(self, request, context):
        await _check_batch(context, request.ids, "ids")
        return pb.GetIntegrationSecretsResponse(
            sealed_secrets=await self.integrations.get_integration_secrets(list(request.ids)))


class ProvidersServicer(registry_pb2_grpc.ProvidersServicer):
    def __init__(self, providers: ProviderStore):
        self.providers = providers

    async def CreateProvider(self, request, context):
        created = await _call(context, self.providers.create_provider(wire.provider_from_pb(request.provider)))
        return pb.CreateProviderResponse(provider=wire.provider_to_pb(created))

    async def GetProvider(self, request, context):
        found = await self.providers.get_provider(request.name)
        return pb.GetProviderResponse(provider=wire.provider_to_pb(found) if found else None)

    async def ListProviders(self, request, context):
        return pb.ListProvidersResponse(providers=[wire.provider_to_pb(p)
                                                   for p in await self.providers.list_providers()])

    async def UpdateProvider(self, request, context):
        updated = await _call(context, self.providers.update_provider(wire.provider_from_pb(request.provider)))
        return pb.UpdateProviderResponse(provider=wire.provider_to_pb(updated))

    async def DeleteProvider(self, request, context):
        return pb.DeleteProviderResponse(deleted=await _call(context, self.providers.delete_provider(request.name)))


class FederatedUsersServicer(registry_pb2_grpc.FederatedUsersServicer):
    def __init__(self, users: FederatedUsers):
        self.users = users

    async def FindUsers(self, request, context):
        await _check_batch(context, request.keys, "keys")
        found = await self.users.find_users([(k.field, k.value) for k in request.keys])
        return pb.FindUsersResponse(results=[pb.UserLookup(user=wire.user_to_pb(u) if u else None) for u in found])

    async def ProvisionUser(self, request, context):
        user = await _call(context, self.users.provision_user(request.field, request.value, list(request.roles),
                                                              request.provider))
        return pb.ProvisionUserResponse(user=wire.user_to_pb(user))


@dataclass(frozen=True)
class Domain:
    """One gRPC service of the registry: its full name, and how to add it to a server
    given the registry's repositories (registry.Registry)."""
    service_name: str
    add: Callable[[Any, grpc.aio.Server], None]


DOMAINS: tuple[Domain, ...] = (
    Domain("inbound.registry.v1.Clients",
           lambda r, s: registry_pb2_grpc.add_ClientsServicer_to_server(ClientsServicer(r.clients), s)),
    Domain("inbound.registry.v1.SigningKeys",
           lambda r, s: registry_pb2_grpc.add_SigningKeysServicer_to_server(SigningKeysServicer(r.signing_keys), s)),
    Domain("inbound.registry.v1.Tokens",
           lambda r, s: registry_pb2_grpc.add_TokensServicer_to_server(TokensServicer(r.tokens), s)),
    Domain("inbound.registry.v1.Revocations",
           lambda r, s: registry_pb2_grpc.add_RevocationsServicer_to_server(RevocationsServicer(r.revocations), s)),
    Domain("inbound.registry.v1.RefreshTokens",
           lambda r, s: registry_pb2_grpc.add_RefreshTokensServicer_to_server(
               RefreshTokensServicer(r.refresh_tokens), s)),
    Domain("inbound.registry.v1.Users",
           lambda r, s: registry_pb2_grpc.add_UsersServicer_to_server(UsersServicer(r.users), s)),
    Domain("inbound.registry.v1.Scopes",
           lambda r, s: registry_pb2_grpc.add_ScopesServicer_to_server(ScopesServicer(r.scopes), s)),
    Domain("inbound.registry.v1.Authorizations",
           lambda r, s: registry_pb2_grpc.add_AuthorizationsServicer_to_server(
               AuthorizationsServicer(r.authorizations), s)),
    Domain("inbound.registry.v1.UsedJtis",
           lambda r, s: registry_pb2_grpc.add_UsedJtisServicer_to_server(UsedJtisServicer(r.jtis), s)),
    Domain("inbound.registry.v1.Integrations",
           lambda r, s: registry_pb2_grpc.add_IntegrationsServicer_to_server(
               IntegrationsServicer(r.integrations), s)),
    Domain("inbound.registry.v1.Providers",
           lambda r, s: registry_pb2_grpc.add_ProvidersServicer_to_server(ProvidersServicer(r.providers), s)),
    Domain("inbound.registry.v1.FederatedUsers",
           lambda r, s: registry_pb2_grpc.add_FederatedUsersServicer_to_server(
               FederatedUsersServicer(r.federated_users), s)),
)
SERVICE_NAMES: tuple[str, ...] = tuple(d.service_name for d in DOMAINS)
# Kept for callers that name one service for health checks: the registry is serving
# when its clients service is.
SERVICE_NAME = SERVICE_NAMES[0]


def add_to_server(registry, server: grpc.aio.Server) -> None:
    """Every domain's service (`registry` is a registry.Registry: one repository per domain)."""
    for domain in DOMAINS:
        domain.add(registry, server)

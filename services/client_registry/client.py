"""The registry over gRPC, one client per domain, each implementing its narrow
Protocol from api.py; `RegistryClient` bundles them over one channel for
callers that use several (inboundctl, the dev stack, tests).

Hot-path calls (client lookups, opaque token writes and lookups, revocation
writes, sign-ins, refresh rotations, code consumption, scope lookups) are coalesced into batches; admin calls go one by one, with the request
id and the actor as metadata. Status codes come back as the registry's own
errors (INVALID_ARGUMENT -> InvalidArgument, NOT_FOUND -> NotFound,
ALREADY_EXISTS -> AlreadyExists); infrastructure codes stay gRPC errors.
"""
from __future__ import annotations

import asyncio

import grpc

from inbound.registry.v1 import registry_pb2 as pb
from inbound.registry.v1 import registry_pb2_grpc
from inboundlib.batching import Coalescer
from inboundlib.grpcx import is_unavailable, peer_going_away, request_metadata
from inboundlib.oauth.errors import TemporarilyUnavailable
from services.client_registry import wire
from services.client_registry.api import (
    ITEM_INVALID,
    AlreadyExists,
    AuthorizationCodeRecord,
    BrowserSession,
    ClientRecord,
    ClientSpec,
    ClientUpdate,
    CodeOutcome,
    CodeToConsume,
    ConsentRecord,
    InUse,
    InvalidArgument,
    ItemError,
    JtiClaim,
    JwtBearerIntegration,
    NotFound,
    OidcProvider,
    OpaqueTokenRecord,
    PendingAuthorization,
    RegistryError,
    RevocationCursor,
    RevocationPage,
    RevocationRecord,
    Rotation,
    RotationOutcome,
    ScopeRecord,
    ScopeUpdate,
    SecretRewrap,
    SignIn,
    SigningKeyRecord,
    SignInOutcome,
    UserPage,
    UserRecord,
    UserSpec,
    UserUpdate,
)

ADMIN_TIMEOUT = 10.0
HOT_TIMEOUT = 3.0
# A sign-in waits for a hash thread in the registry (tens of ms each, a few in parallel).
SIGN_IN_TIMEOUT = 5.0
MAX_BATCH = 64

ERROR_OF: dict[grpc.StatusCode, type[RegistryError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: InUse,
}


def _translate(exc: grpc.aio.AioRpcError) -> Exception:
    error = ERROR_OF.get(exc.code())
    return error(exc.details()) if error is not None else exc


async def _admin(method, request):
    try:
        return await method(request, timeout=ADMIN_TIMEOUT, metadata=request_metadata())
    except grpc.aio.AioRpcError as exc:
        raise _translate(exc) from None


class ClientsClient:
    """api.ClientStore over gRPC."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.ClientsStub(channel)
        # Lookups and revocation upserts are idempotent: sent once more if the registry went away mid-call.
        self._lookups = Coalescer("registry.GetClients", self._send_lookups, max_batch=MAX_BATCH,
                                  idempotent=True, transient=peer_going_away, unavailable=is_unavailable)
        self._secret_lookups = Coalescer("registry.GetClientSecrets", self._send_secret_lookups,
                                         max_batch=MAX_BATCH, idempotent=True, transient=peer_going_away,
                                         unavailable=is_unavailable)

    async def _send_lookups(self, client_ids: list[str], timeout: float) -> list[ClientRecord | None]:
        reply = await self.stub.GetClients(pb.GetClientsRequest(client_ids=client_ids), timeout=timeout)
        return [wire.client_from_pb(r.client) if r.HasField("client") else None for r in reply.results]

    async def get_client(self, client_id: str) -> ClientRecord | None:
        return await self._lookups.submit(client_id, HOT_TIMEOUT)

    async def get_clients(self, client_ids: list[str]) -> list[ClientRecord | None]:
        return list(await asyncio.gather(*(self.get_client(client_id) for client_id in client_ids)))

    async def create_client(self, spec: ClientSpec) -> tuple[ClientRecord, str]:
        reply = await _admin(self.stub.CreateClient, pb.CreateClientRequest(spec=wire.spec_to_pb(spec)))
        return wire.client_from_pb(reply.client), reply.client_secret

    async def list_clients(self) -> list[ClientRecord]:
        reply = await _admin(self.stub.ListClients, pb.ListClientsRequest())
        return [wire.client_from_pb(c) for c in reply.clients]

    async def update_client(self, client_id: str, update: ClientUpdate) -> ClientRecord:
        reply = await _admin(self.stub.UpdateClient, wire.update_to_pb(client_id, update))
        return wire.client_from_pb(reply.client)

    async def delete_client(self, client_id: str) -> bool:
        reply = await _admin(self.stub.DeleteClient, pb.DeleteClientRequest(client_id=client_id))
        return reply.deleted

    async def rotate_client_secret(self, client_id: str,
                                   token_endpoint_auth_method: str | None = None) -> tuple[ClientRecord, str]:
        reply = await _admin(self.stub.RotateClientSecret, pb.RotateClientSecretRequest(
            client_id=client_id, token_endpoint_auth_method=token_endpoint_auth_method))
        return wire.client_from_pb(reply.client), reply.client_secret

    async def rewrap_sealed_secrets(self) -> SecretRewrap:
        reply = await _admin(self.stub.RewrapSecrets, pb.RewrapSecretsRequest())
        return SecretRewrap(rewrapped=reply.rewrapped, current=reply.current, unreadable=tuple(reply.unreadable))

    async def _send_secret_lookups(self, client_ids: list[str], timeout: float) -> list[bytes]:
        reply = await self.stub.GetClientSecrets(pb.GetClientSecretsRequest(client_ids=client_ids), timeout=timeout)
        return list(reply.sealed_secrets)

    async def get_client_secrets(self, client_ids: list[str]) -> list[bytes]:
        """api.ClientSecretReader (jwt_bearer only): sealed, b"" when none; coalesced."""
        return list(await asyncio.gather(*(self._secret_lookups.submit(c, HOT_TIMEOUT) for c in client_ids)))


class SigningKeysClient:
    """api.SigningKeyStore over gRPC."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.SigningKeysStub(channel)

    async def list_signing_keys(self) -> list[SigningKeyRecord]:
        reply = await _admin(self.stub.ListSigningKeys, pb.ListSigningKeysRequest())
        return [wire.key_from_pb(k) for k in reply.keys]

    async def add_signing_key(self, key: SigningKeyRecord, only_if_none: bool) -> bool:
        reply = await _admin(self.stub.AddSigningKey,
                             pb.AddSigningKeyRequest(key=wire.key_to_pb(key), only_if_none=only_if_none))
        return reply.added

    async def rewrap_signing_key(self, kid: str, expected: bytes, encrypted_private_key: bytes) -> bool:
        reply = await _admin(self.stub.RewrapSigningKey, pb.RewrapSigningKeyRequest(
            kid=kid, expected_encrypted_private_key=expected, encrypted_private_key=encrypted_private_key))
        return reply.replaced


class TokensClient:
    """api.TokenStore over gRPC, both calls coalesced."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.TokensStub(channel)
        self._store = Coalescer("registry.StoreOpaqueTokens", self._send_store, max_batch=MAX_BATCH)
        self._lookups = Coalescer("registry.GetOpaqueTokens", self._send_lookups, max_batch=MAX_BATCH,
                                  idempotent=True, transient=peer_going_away, unavailable=is_unavailable)

    async def _send_store(self, tokens: list[OpaqueTokenRecord], timeout: float) -> list[ItemError | None]:
        reply = await self.stub.StoreOpaqueTokens(
            pb.StoreOpaqueTokensRequest(tokens=[wire.opaque_to_pb(t) for t in tokens]), timeout=timeout)
        return [wire.item_error_from_pb(e) for e in reply.errors]

    async def store_opaque_token(self, token: OpaqueTokenRecord) -> ItemError | None:
        return await self._store.submit(token, HOT_TIMEOUT)

    async def store_opaque_tokens(self, tokens: list[OpaqueTokenRecord]) -> list[ItemError | None]:
        return list(await asyncio.gather(*(self.store_opaque_token(t) for t in tokens)))

    async def _send_lookups(self, hashes: list[bytes], timeout: float) -> list[OpaqueTokenRecord | None]:
        reply = await self.stub.GetOpaqueTokens(pb.GetOpaqueTokensRequest(token_hashes=hashes), timeout=timeout)
        return [wire.opaque_from_pb(r.token) if r.HasField("token") else None for r in reply.results]

    async def get_opaque_token(self, token_hash: bytes) -> OpaqueTokenRecord | None:
        return await self._lookups.submit(token_hash, HOT_TIMEOUT)

    async def get_opaque_tokens(self, token_hashes: list[bytes]) -> list[OpaqueTokenRecord | None]:
        return list(await asyncio.gather(*(self.get_opaque_token(h) for h in token_hashes)))


class RevocationsClient:
    """api.RevocationStore over gRPC. Writes are coalesced: under load, the revocations
    of many requests go to the registry as one batch, stored in one statement."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.RevocationsStub(channel)
        self._adds = Coalescer("registry.AddRevocations", self._send_adds, max_batch=MAX_BATCH,
                               idempotent=True, transient=peer_going_away, unavailable=is_unavailable)

    async def _send_adds(self, records: list[RevocationRecord], timeout: float) -> list[int | ItemError]:
        reply = await self.stub.AddRevocations(
            pb.AddRevocationsRequest(revocations=[wire.revocation_to_pb(r) for r in records]), timeout=timeout)
        return [o.id if o.WhichOneof("outcome") == "id" else wire.item_error_from_pb(o.error)
                or ItemError("internal", "no outcome") for o in reply.results]

    async def add_revocations(self, revocations: list[RevocationRecord]) -> list[int | ItemError]:
        return list(await asyncio.gather(*(self._adds.submit(r, ADMIN_TIMEOUT) for r in revocations)))

    async def list_revocations(self, after: RevocationCursor = RevocationCursor(),
                               limit: int = 10_000) -> RevocationPage:
        reply = await _admin(self.stub.ListRevocations,
                             pb.ListRevocationsRequest(after=wire.cursor_to_pb(after), limit=limit))
        return RevocationPage([wire.revocation_from_pb(r) for r in reply.revocations],
                              wire.cursor_from_pb(reply.next), reply.more,
                              wire.cursor_from_pb(reply.scan) if reply.HasField("scan") else None)


class RefreshTokensClient:
    """api.RefreshTokenStore over gRPC, both calls coalesced. A rotation is not sent again
    after the registry went away mid-call: it may have committed, and a second send would
    be answered as a replay (or a reuse); the caller decides. Storing a response again
    is harmless (the same bytes are accepted twice)."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.RefreshTokensStub(channel)
        self._rotations = Coalescer("registry.RotateRefreshTokens", self._send_rotations, max_batch=MAX_BATCH,
                                    unavailable=is_unavailable)
        self._responses = Coalescer("registry.StoreRotationResponses", self._send_responses, max_batch=MAX_BATCH,
                                    idempotent=True, transient=peer_going_away, unavailable=is_unavailable)

    async def _send_rotations(self, rotations: list[Rotation], timeout: float) -> list[RotationOutcome]:
        reply = await self.stub.RotateRefreshTokens(
            pb.RotateRefreshTokensRequest(requests=[wire.rotation_to_pb(r) for r in rotations]), timeout=timeout)
        return [wire.rotation_outcome_from_pb(o) for o in reply.results]

    async def _send_responses(self, responses: list[tuple[bytes, bytes]], timeout: float) -> list[ItemError | None]:
        reply = await self.stub.StoreRotationResponses(pb.StoreRotationResponsesRequest(responses=[
            pb.RotationResponse(token_hash=h, encrypted_response=r) for h, r in responses]), timeout=timeout)
        return [wire.item_error_from_pb(e) for e in reply.errors]

    async def rotate_refresh_token(self, rotation: Rotation) -> RotationOutcome:
        return await self._rotations.submit(rotation, HOT_TIMEOUT)

    async def rotate_refresh_tokens(self, rotations: list[Rotation]) -> list[RotationOutcome]:
        return list(await asyncio.gather(*(self.rotate_refresh_token(r) for r in rotations)))

    async def store_rotation_response(self, token_hash: bytes, encrypted_response: bytes) -> ItemError | None:
        return await self._responses.submit((token_hash, encrypted_response), HOT_TIMEOUT)

    async def store_rotation_responses(self, responses: list[tuple[bytes, bytes]]) -> list[ItemError | None]:
        return list(await asyncio.gather(*(self.store_rotation_response(h, r) for h, r in responses)))


class UsersClient:
    """api.UserStore over gRPC. Sign-ins are coalesced; they are not sent twice (a
    second send would count a failure twice). Passwords travel only inside the
    request messages, which nothing here logs or puts in an error."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.UsersStub(channel)
        self._sign_ins = Coalescer("registry.AuthenticateUsers", self._send_sign_ins, max_batch=MAX_BATCH,
                                   unavailable=is_unavailable)

    async def _send_sign_ins(self, sign_ins: list[SignIn], timeout: float) -> list[SignInOutcome]:
        reply = await self.stub.AuthenticateUsers(
            pb.AuthenticateUsersRequest(requests=[wire.sign_in_to_pb(s) for s in sign_ins]), timeout=timeout)
        return [wire.sign_in_outcome_from_pb(o) for o in reply.results]

    async def authenticate_user(self, sign_in: SignIn) -> SignInOutcome:
        return await self._sign_ins.submit(sign_in, SIGN_IN_TIMEOUT)

    async def authenticate_users(self, sign_ins: list[SignIn]) -> list[SignInOutcome]:
        return list(await asyncio.gather(*(self.authenticate_user(s) for s in sign_ins)))

    async def create_user(self, spec: UserSpec) -> UserRecord:
        reply = await _admin(self.stub.CreateUser, pb.CreateUserRequest(spec=wire.user_spec_to_pb(spec)))
        return wire.user_from_pb(reply.user)

    async def get_user(self, *, id: str = "", username: str = "") -> UserRecord | None:
        request = pb.GetUserRequest(id=id) if id else pb.GetUserRequest(username=username)
        reply = await _admin(self.stub.GetUser, request)
        return wire.user_from_pb(reply.user) if reply.HasField("user") else None

    async def list_users(self, after: str = "", limit: int = 1000, query: str = "") -> UserPage:
        reply = await _admin(self.stub.ListUsers, pb.ListUsersRequest(after=after, limit=limit, query=query))
        return UserPage([wire.user_from_pb(u) for u in reply.users], reply.next)

    async def update_user(self, user_id: str, update: UserUpdate) -> UserRecord:
        reply = await _admin(self.stub.UpdateUser, wire.user_update_to_pb(user_id, update))
        return wire.user_from_pb(reply.user)

    async def delete_user(self, user_id: str) -> bool:
        reply = await _admin(self.stub.DeleteUser, pb.DeleteUserRequest(id=user_id))
        return reply.deleted

    async def set_user_password(self, user_id: str, password: str) -> UserRecord:
        reply = await _admin(self.stub.SetUserPassword, pb.SetUserPasswordRequest(id=user_id, password=password))
        return wire.user_from_pb(reply.user)

    async def unlock_user(self, user_id: str) -> UserRecord:
        reply = await _admin(self.stub.UnlockUser, pb.UnlockUserRequest(id=user_id))
        return wire.user_from_pb(reply.user)

    async def change_user_roles(self, user_id: str, add: list[str], remove: list[str]) -> UserRecord:
        reply = await _admin(self.stub.ChangeUserRoles,
                             pb.ChangeUserRolesRequest(id=user_id, add=add, remove=remove))
        return wire.user_from_pb(reply.user)


class ScopesClient:
    """api.ScopeCatalog over gRPC. Lookups (the consent page's words) are coalesced."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.ScopesStub(channel)
        self._lookups = Coalescer("registry.GetScopes", self._send_lookups, max_batch=MAX_BATCH,
                                  idempotent=True, transient=peer_going_away, unavailable=is_unavailable)

    async def _send_lookups(self, names: list[str], timeout: float) -> list[ScopeRecord | None]:
        reply = await self.stub.GetScopes(pb.GetScopesRequest(names=names), timeout=timeout)
        return [wire.scope_from_pb(r.scope) if r.HasField("scope") else None for r in reply.results]

    async def get_scopes(self, names: list[str]) -> list[ScopeRecord | None]:
        return list(await asyncio.gather(*(self._lookups.submit(n, HOT_TIMEOUT) for n in names)))

    async def create_scope(self, name: str, description: str, consent_required: bool) -> ScopeRecord:
        reply = await _admin(self.stub.CreateScope, pb.CreateScopeRequest(
            name=name, description=description, consent_required=consent_required))
        return wire.scope_from_pb(reply.scope)

    async def list_scopes(self) -> list[ScopeRecord]:
        reply = await _admin(self.stub.ListScopes, pb.ListScopesRequest())
        return [wire.scope_from_pb(s) for s in reply.scopes]

    async def update_scope(self, name: str, update: ScopeUpdate) -> ScopeRecord:
        request = pb.UpdateScopeRequest(name=name)
        if update.description is not None:
            request.description = update.description
        if update.consent_required is not None:
            request.consent_required = update.consent_required
        reply = await _admin(self.stub.UpdateScope, request)
        return wire.scope_from_pb(reply.scope)

    async def delete_scope(self, name: str) -> bool:
        reply = await _admin(self.stub.DeleteScope, pb.DeleteScopeRequest(name=name))
        return reply.deleted


class IntegrationsClient:
    """api.IntegrationStore over gRPC. The grant's lookups (find) and jwt_bearer's sealed
    secrets are coalesced; the rest are administrative calls."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.IntegrationsStub(channel)
        self._secrets = Coalescer("registry.GetIntegrationSecrets", self._send_secrets, max_batch=MAX_BATCH,
                                  idempotent=True, transient=peer_going_away, unavailable=is_unavailable)

    async def create_integration(self, integration: JwtBearerIntegration,
                                 hmac_secret: bytes = b"") -> JwtBearerIntegration:
        reply = await _admin(self.stub.CreateIntegration, pb.CreateIntegrationRequest(
            integration=wire.integration_to_pb(integration), hmac_secret=hmac_secret))
        return wire.integration_from_pb(reply.integration)

    async def get_integration(self, id: str) -> JwtBearerIntegration | None:
        reply = await _admin(self.stub.GetIntegration, pb.GetIntegrationRequest(id=id))
        return wire.integration_from_pb(reply.integration) if reply.HasField("integration") else None

    async def find_integrations(self, client_id: str, issuer: str) -> list[JwtBearerIntegration]:
        reply = await _hot(self.stub.FindIntegrations, pb.FindIntegrationsRequest(client_id=client_id, issuer=issuer))
        return [wire.integration_from_pb(i) for i in reply.integrations]

    async def list_integrations(self) -> list[JwtBearerIntegration]:
        reply = await _admin(self.stub.ListIntegrations, pb.ListIntegrationsRequest())
        return [wire.integration_from_pb(i) for i in reply.integrations]

    async def update_integration(self, integration: JwtBearerIntegration,
                                 hmac_secret: bytes | None = None) -> JwtBearerIntegration:
        reply = await _admin(self.stub.UpdateIntegration, pb.UpdateIntegrationRequest(
            integration=wire.integration_to_pb(integration), hmac_secret=hmac_secret))
        return wire.integration_from_pb(reply.integration)

    async def delete_integration(self, id: str) -> bool:
        return (await _admin(self.stub.DeleteIntegration, pb.DeleteIntegrationRequest(id=id))).deleted

    async def _send_secrets(self, ids: list[str], timeout: float) -> list[bytes]:
        reply = await self.stub.GetIntegrationSecrets(pb.GetIntegrationSecretsRequest(ids=ids), timeout=timeout)
        return list(reply.sealed_secrets)

    async def get_integration_secrets(self, ids: list[str]) -> list[bytes]:
        return list(await asyncio.gather(*(self._secrets.submit(i, HOT_TIMEOUT) for i in ids)))


class ProvidersClient:
    """api.ProviderStore over gRPC (its readers cache the list and reload it on change events)."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.ProvidersStub(channel)

    async def create_provider(self, provider: OidcProvider) -> OidcProvider:
        reply = await _admin(self.stub.CreateProvider, pb.CreateProviderRequest(provider=wire.provider_to_pb(provider)))
        return wire.provider_from_pb(reply.provider)

    async def get_provider(self, name: str) -> OidcProvider | None:
        reply = await _admin(self.stub.GetProvider, pb.GetProviderRequest(name=name))
        return wire.provider_from_pb(reply.provider) if reply.HasField("provider") else None

    async def list_providers(self) -> list[OidcProvider]:
        reply = await _admin(self.stub.ListProviders, pb.ListProvidersRequest())
        return [wire.provider_from_pb(p) for p in reply.providers]

    async def update_provider(self, provider: OidcProvider) -> OidcProvider:
        reply = await _admin(self.stub.UpdateProvider, pb.UpdateProviderRequest(provider=wire.provider_to_pb(provider)))
        return wire.provider_from_pb(reply.provider)

    async def delete_provider(self, name: str) -> bool:
        return (await _admin(self.stub.DeleteProvider, pb.DeleteProviderRequest(name=name))).deleted


class FederatedUsersClient:
    """api.FederatedUsers over gRPC; lookups coalesced (idempotent, sent again if the registry
    went away mid-call). A provisioning is idempotent too, but rare: one call each."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.FederatedUsersStub(channel)
        self._lookups = Coalescer("registry.FindUsers", self._send_lookups, max_batch=MAX_BATCH,
                                  idempotent=True, transient=peer_going_away, unavailable=is_unavailable)

    async def _send_lookups(self, keys: list[tuple[str, str]], timeout: float) -> list[UserRecord | None]:
        reply = await self.stub.FindUsers(pb.FindUsersRequest(keys=[pb.UserKey(field=f, value=v) for f, v in keys]),
                                          timeout=timeout)
        return [wire.user_from_pb(r.user) if r.HasField("user") else None for r in reply.results]

    async def find_user(self, field: str, value: str) -> UserRecord | None:
        return await self._lookups.submit((field, value), HOT_TIMEOUT)

    async def find_users(self, keys: list[tuple[str, str]]) -> list[UserRecord | None]:
        return list(await asyncio.gather(*(self.find_user(f, v) for f, v in keys)))

    async def provision_user(self, field: str, value: str, roles: list[str], provider: str) -> UserRecord:
        reply = await _hot(self.stub.ProvisionUser, pb.ProvisionUserRequest(field=field, value=value, roles=roles,
                                                                            provider=provider))
        return wire.user_from_pb(reply.user)


class JtiClaims:
    """The used-jti store as the JWT validator asks it (inboundlib.jose's UsedJtis): one
    `first_use(namespace, jti, expires_at)` per token, coalesced into ClaimJtis batches by
    `send` (a batch of JtiClaim and a timeout in, one bool or ItemError per claim out).

    A claim is never sent twice: the first send may have stored it, and a second would then
    answer "used before" for a token seen once."""

    def __init__(self, name: str, send):
        self._claims = Coalescer(name, send, max_batch=MAX_BATCH, unavailable=is_unavailable)

    async def claim_jtis(self, claims: list[JtiClaim]) -> list[bool | ItemError]:
        return list(await asyncio.gather(*(self._claims.submit(c, HOT_TIMEOUT) for c in claims)))

    async def first_use(self, namespace: str, jti: str, expires_at: int) -> bool:
        """True for the first use of (namespace, jti) (now recorded until `expires_at`, unix
        seconds), False for a replay, and False for a jti the store cannot record (empty,
        over-long, control characters): a token whose single use cannot be enforced is not
        accepted. The store failing raises TemporarilyUnavailable."""
        outcome = await self._claims.submit(JtiClaim(namespace, jti, expires_at), HOT_TIMEOUT)
        if isinstance(outcome, ItemError):
            if outcome.code == ITEM_INVALID:
                return False
            raise TemporarilyUnavailable(detail=f"jti store: {outcome}")
        return outcome


class UsedJtisClient(JtiClaims):
    """api.JtiStore over gRPC (ClaimJtis), with first_use for the JWT validator."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.UsedJtisStub(channel)
        super().__init__("registry.ClaimJtis", self._send_claims)

    async def _send_claims(self, claims: list[JtiClaim], timeout: float) -> list[bool | ItemError]:
        reply = await self.stub.ClaimJtis(pb.ClaimJtisRequest(claims=[wire.jti_claim_to_pb(c) for c in claims]),
                                          timeout=timeout)
        return [wire.jti_outcome_from_pb(o) for o in reply.results]


async def add_missing_scopes(catalog, names: list[str]) -> list[str]:
    """Add to the catalog (an api.ScopeCatalog) the scopes it lacks, each described by its name
    and needing consent, as an operator does before giving them to a client (a client may only
    be given catalog scopes): for the dev stack, the bench and tests. Answers those added."""
    names = list(dict.fromkeys(names))
    added = []
    for name, found in zip(names, await catalog.get_scopes(names)):
        if found is None:
            try:
                await catalog.create_scope(name, name, True)
                added.append(name)
            except AlreadyExists:  # added meanwhile by someone else
                pass
    return added


async def _hot(method, request):
    """A single call on the browser's path (a session, a pending request, a consent): the hot
    timeout, the registry's errors mapped back."""
    try:
        return await method(request, timeout=HOT_TIMEOUT, metadata=request_metadata())
    except grpc.aio.AioRpcError as exc:
        raise _translate(exc) from None


class AuthorizationsClient:
    """api.AuthorizationStore over gRPC. Code consumption is coalesced into batches, and never
    sent again after the registry went away mid-call: it may have committed, and a second
    send would be answered as a reuse (revoking the grant). Secrets travel as hashes only."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.AuthorizationsStub(channel)
        self._consumptions = Coalescer("registry.ConsumeAuthorizationCodes", self._send_consumptions,
                                       max_batch=MAX_BATCH, unavailable=is_unavailable)

    async def _send_consumptions(self, codes: list[CodeToConsume], timeout: float) -> list[CodeOutcome]:
        reply = await self.stub.ConsumeAuthorizationCodes(pb.ConsumeAuthorizationCodesRequest(codes=[
            pb.CodeToConsume(code_hash=c.code_hash, client_id=c.client_id) for c in codes]), timeout=timeout)
        return [wire.code_outcome_from_pb(o) for o in reply.results]

    async def consume_authorization_code(self, code: CodeToConsume) -> CodeOutcome:
        return await self._consumptions.submit(code, HOT_TIMEOUT)

    async def consume_authorization_codes(self, codes: list[CodeToConsume]) -> list[CodeOutcome]:
        return list(await asyncio.gather(*(self.consume_authorization_code(c) for c in codes)))

    async def create_session(self, session: BrowserSession, lifetime_seconds: int,
                             verified_at_ms: int) -> BrowserSession:
        reply = await _hot(self.stub.CreateSession, pb.CreateSessionRequest(
            session=wire.session_to_pb(session), lifetime_seconds=lifetime_seconds,
            verified_at_unix_ms=verified_at_ms))
        return wire.session_from_pb(reply.session)

    async def get_session(self, id_hash: bytes) -> BrowserSession | None:
        reply = await _hot(self.stub.GetSession, pb.GetSessionRequest(id_hash=id_hash))
        return wire.session_from_pb(reply.session) if reply.HasField("session") else None

    async def end_session(self, *, id_hash: bytes = b"", sid: str = "") -> bool:
        return (await _hot(self.stub.EndSession, pb.EndSessionRequest(id_hash=id_hash, sid=sid))).ended

    async def create_authorization_request(self, request: PendingAuthorization,
                                           lifetime_seconds: int) -> PendingAuthorization:
        reply = await _hot(self.stub.CreateAuthorizationRequest, pb.CreateAuthorizationRequestRequest(
            request=wire.pending_to_pb(request), lifetime_seconds=lifetime_seconds))
        return wire.pending_from_pb(reply.request)

    async def get_authorization_request(self, id_hash: bytes) -> PendingAuthorization | None:
        reply = await _hot(self.stub.GetAuthorizationRequest, pb.GetAuthorizationRequestRequest(id_hash=id_hash))
        return wire.pending_from_pb(reply.request) if reply.HasField("request") else None

    async def complete_authorization_request(self, id_hash: bytes) -> bool:
        reply = await _hot(self.stub.CompleteAuthorizationRequest,
                           pb.CompleteAuthorizationRequestRequest(id_hash=id_hash))
        return reply.completed

    async def get_consent(self, user_id: str, client_id: str) -> ConsentRecord | None:
        reply = await _hot(self.stub.GetConsent, pb.GetConsentRequest(user_id=user_id, client_id=client_id))
        return wire.consent_from_pb(reply.consent) if reply.HasField("consent") else None

    async def grant_consent(self, user_id: str, client_id: str, scopes: list[str]) -> ConsentRecord:
        reply = await _hot(self.stub.GrantConsent,
                           pb.GrantConsentRequest(user_id=user_id, client_id=client_id, scopes=scopes))
        return wire.consent_from_pb(reply.consent)

    async def list_consents(self, user_id: str) -> list[ConsentRecord]:
        reply = await _hot(self.stub.ListConsents, pb.ListConsentsRequest(user_id=user_id))
        return [wire.consent_from_pb(c) for c in reply.consents]

    async def withdraw_consent(self, user_id: str, client_id: str, actor: str) -> tuple[bool, int]:
        reply = await _admin(self.stub.WithdrawConsent,
                             pb.WithdrawConsentRequest(user_id=user_id, client_id=client_id, actor=actor))
        return reply.withdrawn, reply.grants_revoked

    async def create_authorization_code(self, code: AuthorizationCodeRecord,
                                        lifetime_seconds: int) -> AuthorizationCodeRecord:
        reply = await _hot(self.stub.CreateAuthorizationCode, pb.CreateAuthorizationCodeRequest(
            code=wire.code_to_pb(code), lifetime_seconds=lifetime_seconds))
        return wire.code_from_pb(reply.code)

    async def record_user_grant(self, user_id: str, client_id: str, grant_id: str) -> None:
        await _hot(self.stub.RecordUserGrant,
                   pb.RecordUserGrantRequest(user_id=user_id, client_id=client_id, grant_id=grant_id))


class RegistryClient:
    """Every domain's client over one channel (api.ClientRegistryApi), for callers
    that use several; pass a narrow one (`.clients`, `.signing_keys`, `.tokens`,
    `.revocations`, `.refresh_tokens`, `.users`, `.scopes`, `.authorizations`, `.jtis`,
    `.integrations`, `.providers`, `.federated_users`)
    to code that needs only that (`.jtis` is also the JWT validator's UsedJtis)."""

    def __init__(self, channel: grpc.aio.Channel):
        self.clients = ClientsClient(channel)
        self.signing_keys = SigningKeysClient(channel)
        self.tokens = TokensClient(channel)
        self.revocations = RevocationsClient(channel)
        self.refresh_tokens = RefreshTokensClient(channel)
        self.users = UsersClient(channel)
        self.scopes = ScopesClient(channel)
        self.authorizations = AuthorizationsClient(channel)
        self.jtis = UsedJtisClient(channel)
        self.integrations = IntegrationsClient(channel)
        self.providers = ProvidersClient(channel)
        self.federated_users = FederatedUsersClient(channel)

    def __getattr__(self, name: str):
        # Each call belongs to exactly one domain; ask each in turn. (Through __dict__:
        # this runs only for names not found otherwise, and must not recurse.)
        for key in ("clients", "signing_keys", "tokens", "revocations", "refresh_tokens", "users", "scopes",
                    "authorizations", "jtis", "integrations", "providers", "federated_users"):
            domain = self.__dict__.get(key)
            if domain is not None and hasattr(type(domain), name):
                return getattr(domain, name)
        raise AttributeError(name)

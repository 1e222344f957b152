"""The registry process's repositories, one per domain, over one Postgres pool.

`Registry` bundles them for what hosts or wires them all (the registry process,
the one-process mode, tests): `registry.clients`, `.signing_keys`, `.tokens`,
`.revocations`, `.refresh_tokens`, `.users`, `.scopes`, `.authorizations`, `.jtis`,
`.integrations`, `.providers`, `.federated_users`, each implementing its narrow Protocol from api.py.
It also
answers every call itself by delegation, so it satisfies `ClientRegistryApi`
where a caller genuinely needs several domains.
"""
from __future__ import annotations

import asyncio
import logging

import asyncpg

from inboundlib.events import EventBus
from inboundlib.kek import KeyEncryptor
from inboundlib.passwords import Passwords, PasswordSettings
from services.client_registry import revocations as revocation_rows
from services.client_registry.api import (
    AuthorizationCodeRecord,
    BrowserSession,
    ClientRecord,
    ClientSpec,
    ClientUpdate,
    CodeOutcome,
    CodeToConsume,
    ConsentRecord,
    ItemError,
    JtiClaim,
    JwtBearerIntegration,
    OidcProvider,
    OpaqueTokenRecord,
    PendingAuthorization,
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
from services.client_registry.authorizations import AuthorizationRepository
from services.client_registry.clients import ClientRepository
from services.client_registry.federated_users import FederatedUserRepository
from services.client_registry.integrations import IntegrationRepository
from services.client_registry.jtis import JtiRepository
from services.client_registry.keys import SigningKeyRepository
from services.client_registry.providers import ProviderRepository
from services.client_registry.refresh_tokens import RefreshTokenRepository
from services.client_registry.revocations import RevocationRepository
from services.client_registry.scopes import ScopeRepository
from services.client_registry.tokens import TokenRepository
from services.client_registry.users import LoginSettings, UserRepository

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, pool: asyncpg.Pool, events: EventBus | None, *, passwords: Passwords | None = None,
                 login: LoginSettings | None = None, sign_in_slots: int | None = None,
                 encryptor: KeyEncryptor | None = None):
        self.pool = pool
        self.events = events
        # Seals client_secret_jwt secrets (and HS256 integration secrets) as they are made.
        self.clients = ClientRepository(pool, events, encryptor)
        self.jtis = JtiRepository(pool)
        self.integrations = IntegrationRepository(pool, events, encryptor)
        self.providers = ProviderRepository(pool, events)
        self.federated_users = FederatedUserRepository(pool, events)
        self.signing_keys = SigningKeyRepository(pool, events)
        self.tokens = TokenRepository(pool)
        self.revocations = RevocationRepository(pool)
        self.refresh_tokens = RefreshTokenRepository(pool, events)
        self.users = UserRepository(pool, events, passwords or Passwords(PasswordSettings()),
                                    login or LoginSettings(), sign_in_slots=sign_in_slots)
        self.scopes = ScopeRepository(pool, events)
        self.authorizations = AuthorizationRepository(pool, events)

    # --- clients (api.ClientStore) ----------------------------------------------------------------

    async def create_client(self, spec: ClientSpec) -> tuple[ClientRecord, str]:
        return await self.clients.create_client(spec)

    async def get_clients(self, client_ids: list[str]) -> list[ClientRecord | None]:
        return await self.clients.get_clients(client_ids)

    async def get_client(self, client_id: str) -> ClientRecord | None:
        return await self.clients.get_client(client_id)

    async def list_clients(self) -> list[ClientRecord]:
        return await self.clients.list_clients()

    async def update_client(self, client_id: str, update: ClientUpdate) -> ClientRecord:
        return await self.clients.update_client(client_id, update)

    async def delete_client(self, client_id: str) -> bool:
        return await self.clients.delete_client(client_id)

    async def rotate_client_secret(self, client_id: str,
                                   token_endpoint_auth_method: str | None = None) -> tuple[ClientRecord, str]:
        return await self.clients.rotate_client_secret(client_id, token_endpoint_auth_method)

    async def get_client_secrets(self, client_ids: list[str]) -> list[bytes]:
        return await self.clients.get_client_secrets(client_ids)

    async def rewrap_sealed_secrets(self) -> SecretRewrap:
        return await self.clients.rewrap_sealed_secrets()

    # --- used jtis (api.JtiStore) -------------------------------------------------------------------

    async def claim_jtis(self, claims: list[JtiClaim]) -> list[bool | ItemError]:
        return await self.jtis.claim_jtis(claims)

    # --- JWT-bearer integrations (api.IntegrationStore) ---------------------------------------------

    async def create_integration(self, integration: JwtBearerIntegration,
                                 hmac_secret: bytes = b"") -> JwtBearerIntegration:
        return await self.integrations.create_integration(integration, hmac_secret)

    async def get_integration(self, id: str) -> JwtBearerIntegration | None:
        return await self.integrations.get_integration(id)

    async def find_integrations(self, client_id: str, issuer: str) -> list[JwtBearerIntegration]:
        return await self.integrations.find_integrations(client_id, issuer)

    async def list_integrations(self) -> list[JwtBearerIntegration]:
        return await self.integrations.list_integrations()

    async def update_integration(self, integration: JwtBearerIntegration,
                                 hmac_secret: bytes | None = None) -> JwtBearerIntegration:
        return await self.integrations.update_integration(integration, hmac_secret)

    async def delete_integration(self, id: str) -> bool:
        return await self.integrations.delete_integration(id)

    async def get_integration_secrets(self, ids: list[str]) -> list[bytes]:
        return await self.integrations.get_integration_secrets(ids)

    # --- OpenID providers (api.ProviderStore) ------------------------------------------------------

    async def create_provider(self, provider: OidcProvider) -> OidcProvider:
        return await self.providers.create_provider(provider)

    async def get_provider(self, name: str) -> OidcProvider | None:
        return await self.providers.get_provider(name)

    async def list_providers(self) -> list[OidcProvider]:
        return await self.providers.list_providers()

    async def update_provider(self, provider: OidcProvider) -> OidcProvider:
        return await self.providers.update_provider(provider)

    async def delete_provider(self, name: str) -> bool:
        return await self.providers.delete_provider(name)

    # --- federated users (api.FederatedUsers) ------------------------------------------------------

    async def find_user(self, field: str, value: str) -> UserRecord | None:
        return await self.federated_users.find_user(field, value)

    async def find_users(self, keys: list[tuple[str, str]]) -> list[UserRecord | None]:
        return await self.federated_users.find_users(keys)

    async def provision_user(self, field: str, value: str, roles: list[str], provider: str) -> UserRecord:
        return await self.federated_users.provision_user(field, value, roles, provider)

    # --- signing keys (api.SigningKeyStore) -------------------------------------------------------

    async def list_signing_keys(self) -> list[SigningKeyRecord]:
        return await self.signing_keys.list_signing_keys()

    async def add_signing_key(self, key: SigningKeyRecord, only_if_none: bool) -> bool:
        return await self.signing_keys.add_signing_key(key, only_if_none)

    async def rewrap_signing_key(self, kid: str, expected: bytes, encrypted_private_key: bytes) -> bool:
        return await self.signing_keys.rewrap_signing_key(kid, expected, encrypted_private_key)

    # --- opaque tokens (api.TokenStore) -----------------------------------------------------------

    async def store_opaque_tokens(self, tokens: list[OpaqueTokenRecord]) -> list[ItemError | None]:
        return await self.tokens.store_opaque_tokens(tokens)

    async def get_opaque_tokens(self, token_hashes: list[bytes]) -> list[OpaqueTokenRecord | None]:
        return await self.tokens.get_opaque_tokens(token_hashes)

    # --- revocations (api.RevocationStore) --------------------------------------------------------

    async def add_revocations(self, revocations: list[RevocationRecord]) -> list[int | ItemError]:
        return await self.revocations.add_revocations(revocations)

    async def list_revocations(self, after: RevocationCursor = RevocationCursor(),
                               limit: int = revocation_rows.MAX_PAGE) -> RevocationPage:
        return await self.revocations.list_revocations(after, limit)

    # --- refresh-token rotation (api.RefreshTokenStore) ----------------------------------------------

    async def rotate_refresh_tokens(self, rotations: list[Rotation]) -> list[RotationOutcome]:
        return await self.refresh_tokens.rotate_refresh_tokens(rotations)

    async def store_rotation_responses(self, responses: list[tuple[bytes, bytes]]) -> list[ItemError | None]:
        return await self.refresh_tokens.store_rotation_responses(responses)

    # --- users (api.UserStore) -------------------------------------------------------------------

    async def authenticate_users(self, sign_ins: list[SignIn]) -> list[SignInOutcome]:
        return await self.users.authenticate_users(sign_ins)

    async def create_user(self, spec: UserSpec) -> UserRecord:
        return await self.users.create_user(spec)

    async def get_user(self, *, id: str = "", username: str = "") -> UserRecord | None:
        return await self.users.get_user(id=id, username=username)

    async def list_users(self, after: str = "", limit: int = 1000, query: str = "") -> UserPage:
        return await self.users.list_users(after, limit, query)

    async def update_user(self, user_id: str, update: UserUpdate) -> UserRecord:
        return await self.users.update_user(user_id, update)

    async def delete_user(self, user_id: str) -> bool:
        return await self.users.delete_user(user_id)

    async def set_user_password(self, user_id: str, password: str) -> UserRecord:
        return await self.users.set_user_password(user_id, password)

    async def unlock_user(self, user_id: str) -> UserRecord:
        return await self.users.unlock_user(user_id)

    async def change_user_roles(self, user_id: str, add: list[str], remove: list[str]) -> UserRecord:
        return await self.users.change_user_roles(user_id, add, remove)

    # --- the scope catalog (api.ScopeCatalog) -------------------------------------------------------

    async def create_scope(self, name: str, description: str, consent_required: bool) -> ScopeRecord:
        return await self.scopes.create_scope(name, description, consent_required)

    async def get_scopes(self, names: list[str]) -> list[ScopeRecord | None]:
        return await self.scopes.get_scopes(names)

    async def list_scopes(self) -> list[ScopeRecord]:
        return await self.scopes.list_scopes()

    async def update_scope(self, name: str, update: ScopeUpdate) -> ScopeRecord:
        return await self.scopes.update_scope(name, update)

    async def delete_scope(self, name: str) -> bool:
        return await self.scopes.delete_scope(name)

    # --- the authorization endpoint's state (api.AuthorizationStore) -----------------------------

    async def create_session(self, session: BrowserSession, lifetime_seconds: int,
                             verified_at_ms: int) -> BrowserSession:
        return await self.authorizations.create_session(session, lifetime_seconds, verified_at_ms)

    async def get_session(self, id_hash: bytes) -> BrowserSession | None:
        return await self.authorizations.get_session(id_hash)

    async def end_session(self, *, id_hash: bytes = b"", sid: str = "") -> bool:
        return await self.authorizations.end_session(id_hash=id_hash, sid=sid)

    async def create_authorization_request(self, request: PendingAuthorization,
                                           lifetime_seconds: int) -> PendingAuthorization:
        return await self.authorizations.create_authorization_request(request, lifetime_seconds)

    async def get_authorization_request(self, id_hash: bytes) -> PendingAuthorization | None:
        return await self.authorizations.get_authorization_request(id_hash)

    async def complete_authorization_request(self, id_hash: bytes) -> bool:
        return await self.authorizations.complete_authorization_request(id_hash)

    async def get_consent(self, user_id: str, client_id: str) -> ConsentRecord | None:
        return await self.authorizations.get_consent(user_id, client_id)

    async def grant_consent(self, user_id: str, client_id: str, scopes: list[str]) -> ConsentRecord:
        return await self.authorizations.grant_consent(user_id, client_id, scopes)

    async def list_consents(self, user_id: str) -> list[ConsentRecord]:
        return await self.authorizations.list_consents(user_id)

    async def withdraw_consent(self, user_id: str, client_id: str, actor: str) -> tuple[bool, int]:
        return await self.authorizations.withdraw_consent(user_id, client_id, actor)

    async def create_authorization_code(self, code: AuthorizationCodeRecord,
                                        lifetime_seconds: int) -> AuthorizationCodeRecord:
        return await self.authorizations.create_authorization_code(code, lifetime_seconds)

    async def consume_authorization_codes(self, codes: list[CodeToConsume]) -> list[CodeOutcome]:
        return await self.authorizations.consume_authorization_codes(codes)

    async def record_user_grant(self, user_id: str, client_id: str, grant_id: str) -> None:
        await self.authorizations.record_user_grant(user_id, client_id, grant_id)

    # --- housekeeping -----------------------------------------------------------------------------

    def start_housekeeping(self, *, purge_seconds: float, response_sweep_seconds: float) -> list[asyncio.Task]:
        """The registry's periodic jobs, for the life of the service: purge expired rows,
        clear rotation responses past their grace window, report sign-in locks that ended."""
        jobs = ((purge_seconds, self.purge_expired, "expired rows purged", "purge failed"),
                (response_sweep_seconds, self.refresh_tokens.clear_rotation_responses,
                 "rotation responses cleared", "clearing rotation responses failed"),
                (self.users.login.sweep_seconds, self.users.sweep_ended_locks, "", "lock sweep failed"))
        return [asyncio.create_task(every(*job)) for job in jobs]

    async def purge_expired(self) -> int:
        """Drop expired opaque tokens and revocations (kept a day longer, for investigations),
        sign-in counters with nothing left to remember, the authorization endpoint's rows
        nothing can use any more (AuthorizationRepository.purge_expired says which), and used
        jtis whose tokens can no longer be accepted (in bounded batches)."""
        return (await self.tokens.purge_expired() + await revocation_rows.purge_expired(self.pool)
                + await self.users.purge_stale_counters() + await self.authorizations.purge_expired()
                + await self.jtis.purge_expired())


async def every(seconds: float, job, done: str, failed: str) -> None:
    """Run `job` every `seconds` (after the first wait), for the life of the service. A
    count of rows it returns is logged as `done` (when `done` is set and rows changed); a
    failure is logged as `failed` and the next round tries again."""
    while True:
        await asyncio.sleep(seconds)
        try:
            rows = await job()
            if done and rows:
                log.info(done, extra={"rows": rows})
        except Exception as exc:
            log.warning(failed, extra={"error": type(exc).__name__})

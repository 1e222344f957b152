"""client_registry's settings and start-up (see libs/inboundlib/hosting.py):
migrations, the registry over its Postgres pool (with the key-encryption keys that seal
client_secret_jwt and HS256 integration secrets), the purge janitor, the sweeper that
reports ended sign-in locks."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from inboundlib import db, service
from inboundlib.batching import Coalescer, Overloaded
from inboundlib.config import Env
from inboundlib.hosting import GRPC, Context, Module
from inboundlib.kek import KeyEncryptor, key_encryption_keys
from inboundlib.passwords import Passwords, PasswordSettings
from services.client_registry import server
from services.client_registry.client import JtiClaims, RegistryClient
from services.client_registry.registry import Registry
from services.client_registry.users import LoginSettings

MIGRATIONS = Path(__file__).parent / "migrations"
# What the runtime role (DATABASE_URL) may do, granted by the migration role: a stored
# signing key is only ever re-encrypted, never otherwise changed or removed; a stored
# token changes only by rotation (consumed, its replay answer) or its family's revocation.
RUNTIME_PRIVILEGES = {
    "clients": "SELECT, INSERT, UPDATE, DELETE",
    "signing_keys": "SELECT, INSERT, UPDATE (encrypted_private_key)",
    "opaque_tokens": "SELECT, INSERT, DELETE, UPDATE (consumed_at, replay_until, rotation_response, revoked_at)",
    "revocations": "SELECT, INSERT, UPDATE, DELETE",
    "users": "SELECT, INSERT, UPDATE, DELETE",
    "login_failures": "SELECT, INSERT, UPDATE, DELETE",
    "scopes": "SELECT, INSERT, UPDATE, DELETE",
    # The authorization endpoint's state: a session changes only by ending, a pending request
    # by completing, a code by being consumed; a user's recorded grants only come and go.
    "browser_sessions": "SELECT, INSERT, DELETE, UPDATE (ended_at)",
    "authorization_requests": "SELECT, INSERT, DELETE, UPDATE (completed_at)",
    "consents": "SELECT, INSERT, UPDATE, DELETE",
    "authorization_codes": "SELECT, INSERT, DELETE, UPDATE (consumed_at)",
    "user_grants": "SELECT, INSERT, DELETE",
    # A used jti is claimed (inserted, or an expired row taken over) and purged, never otherwise changed.
    "used_jtis": "SELECT, INSERT, DELETE, UPDATE (expires_at)",
    "jwt_bearer_integrations": "SELECT, INSERT, UPDATE, DELETE",
    "oidc_providers": "SELECT, INSERT, UPDATE, DELETE",
}
HOT_TIMEOUT = 3.0
REVOCATION_TIMEOUT = 10.0
SIGN_IN_TIMEOUT = 5.0


@dataclass(frozen=True)
class Settings:
    # URLs that may carry a password: never in a repr (a log line, a traceback's locals).
    database_url: str = field(repr=False)
    migration_database_url: str = field(repr=False)
    pool_size: int
    purge_seconds: int
    # How often encrypted rotation responses past their grace window are cleared.
    rotation_response_sweep_seconds: int = 5
    passwords: PasswordSettings = PasswordSettings()
    login: LoginSettings = LoginSettings()
    # token_issuer's key-encryption keys (the same settings and values): they seal the secrets
    # of client_secret_jwt clients and HS256 integrations. None set: those are refused.
    # Never in a repr.
    key_encryption_keys: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        return cls(database_url=env.str("DATABASE_URL"),
                   # The schema owner, for migrations; unset: DATABASE_URL's role migrates too.
                   migration_database_url=env.str("INBOUND_MIGRATION_DATABASE_URL", ""),
                   pool_size=env.int("INBOUND_DB_POOL_SIZE", 10, minimum=1, maximum=200),
                   purge_seconds=env.int("INBOUND_PURGE_INTERVAL", 600, minimum=1),
                   rotation_response_sweep_seconds=env.int("INBOUND_ROTATION_RESPONSE_SWEEP_INTERVAL", 5,
                                                           minimum=1, maximum=3600),
                   passwords=PasswordSettings.from_env(env), login=LoginSettings.from_env(env),
                   key_encryption_keys=key_encryption_keys(env, required=False))

    @property
    def sign_in_slots(self) -> int:
        """Sign-ins that may hold a Postgres connection at once (each holds one while its
        hash is verified): no more than the hash threads that serve them, and never more
        than half the pool, so that a burst of sign-ins leaves token requests connections."""
        return max(1, min(self.passwords.workers, self.pool_size // 2))


class BatchedTokenStore:
    """The registry for callers in the same process, with opaque-token writes and
    lookups, revocation writes, sign-ins and code consumption coalesced into batches, as
    RegistryClient does across the network."""

    def __init__(self, registry: Registry):
        self._registry = registry
        self._store = Coalescer("local.StoreOpaqueTokens", lambda items, _: registry.store_opaque_tokens(items),
                                max_batch=64)
        self._lookup = Coalescer("local.GetOpaqueTokens", lambda items, _: registry.get_opaque_tokens(items),
                                 max_batch=64)
        self._revoke = Coalescer("local.AddRevocations", lambda items, _: registry.add_revocations(items),
                                 max_batch=64)
        self._rotate = Coalescer("local.RotateRefreshTokens",
                                 lambda items, _: registry.rotate_refresh_tokens(items), max_batch=64)
        self._responses = Coalescer("local.StoreRotationResponses",
                                    lambda items, _: registry.store_rotation_responses(items), max_batch=64)
        self._sign_ins = Coalescer("local.AuthenticateUsers", lambda items, _: registry.authenticate_users(items),
                                   max_batch=64)
        self._codes = Coalescer("local.ConsumeAuthorizationCodes",
                                lambda items, _: registry.consume_authorization_codes(items), max_batch=64)
        self._jtis = JtiClaims("local.ClaimJtis", lambda items, _: registry.claim_jtis(items))

    def __getattr__(self, name):
        return getattr(self._registry, name)

    async def store_opaque_tokens(self, tokens):
        return list(await asyncio.gather(*(self._store.submit(t, HOT_TIMEOUT) for t in tokens)))

    async def get_opaque_tokens(self, token_hashes):
        return list(await asyncio.gather(*(self._lookup.submit(h, HOT_TIMEOUT) for h in token_hashes)))

    async def add_revocations(self, revocations):
        # As long as RegistryClient gives a revocation write: it must not be given up lightly.
        return list(await asyncio.gather(*(self._revoke.submit(r, REVOCATION_TIMEOUT) for r in revocations)))

    async def rotate_refresh_tokens(self, rotations):
        return list(await asyncio.gather(*(self._rotate.submit(r, HOT_TIMEOUT) for r in rotations)))

    async def store_rotation_responses(self, responses):
        return list(await asyncio.gather(*(self._responses.submit(r, HOT_TIMEOUT) for r in responses)))

    async def authenticate_users(self, sign_ins):
        return list(await asyncio.gather(*(self._sign_ins.submit(s, SIGN_IN_TIMEOUT) for s in sign_ins)))

    async def consume_authorization_codes(self, codes):
        return list(await asyncio.gather(*(self._codes.submit(c, HOT_TIMEOUT) for c in codes)))

    async def claim_jtis(self, claims):
        return await self._jtis.claim_jtis(claims)

    async def first_use(self, namespace: str, jti: str, expires_at: int) -> bool:
        """The JWT validator's UsedJtis, as RegistryClient.jtis gives it across the network."""
        return await self._jtis.first_use(namespace, jti, expires_at)


@dataclass
class RegistryService:
    registry: Registry
    api: BatchedTokenStore
    pool: object
    # Registry.start_housekeeping's periodic jobs (purge, rotation responses, ended locks).
    housekeeping: list[asyncio.Task]
    passwords: Passwords | None = None
    # A full password pool (Overloaded) is "try again later" too, as the database being away is.
    unavailable_on = (*db.UNAVAILABLE_ERRORS, Overloaded)

    def add_to_server(self, port: str, grpc_server: grpc.aio.Server) -> list[str]:
        assert port == GRPC, port
        server.add_to_server(self.registry, grpc_server)
        return list(server.SERVICE_NAMES)

    async def stop(self) -> None:
        for task in self.housekeeping:
            task.cancel()
        await self.pool.close()
        if self.passwords is not None:
            self.passwords.shutdown()


async def start(settings: Settings, ctx: Context) -> RegistryService:
    pool = await service.open_database(settings.database_url, MIGRATIONS, ctx.stop, max_size=settings.pool_size,
                                       migration_url=settings.migration_database_url,
                                       runtime_privileges=RUNTIME_PRIVILEGES)
    passwords = Passwords(settings.passwords)  # makes the dummy hash, with the current parameters
    registry = Registry(pool, ctx.events, passwords=passwords, login=settings.login,
                        sign_in_slots=settings.sign_in_slots,
                        encryptor=KeyEncryptor(*settings.key_encryption_keys) if settings.key_encryption_keys else None)
    return RegistryService(registry=registry, api=BatchedTokenStore(registry), pool=pool,
                           housekeeping=registry.start_housekeeping(
                               purge_seconds=settings.purge_seconds,
                               response_sweep_seconds=settings.rotation_response_sweep_seconds),
                           passwords=passwords)


def connect(channel: grpc.aio.Channel, module: Module) -> RegistryClient:
    return RegistryClient(channel)

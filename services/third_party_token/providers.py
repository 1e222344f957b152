"""Registered OpenID providers and what their tokens prove (issue "Federation").

- `ProviderDirectory`: the registry's providers by issuer, held in memory (every lookup
  is a dict read), loaded again when a `registry.provider` change event arrives, when
  NATS reconnects, and every RELOAD_SECONDS as a backstop; while the registry cannot
  be read, the last list stands. Each active provider's discovery document and keys
  are prefetched at load (and refreshed ahead of expiry by the same rounds), so a
  token rarely meets a cold cache; when it does, the fetcher answers `KeysPending`
  and fetches in the background (no outgoing HTTP inside a batch).
- `FederatedUserCache`: the mapped users, cached, dropped when a `registry.user` event
  names them (disabling a user takes effect within a second).
- `ForeignTokenVerifier`: a token's provider by its (unverified) `iss`, then the jose
  JwtValidator under that provider's policy (its audiences, algorithms, clock skew,
  the service's maximum lifetime, and, when the provider says so and the caller
  consumes the token, the jti claimed once in namespace `provider:<name>`), keys from
  the `jwks_uri` of its discovery document (whose `issuer` must be the registered one,
  OpenID Connect Discovery §4.3); then the user: the provider's `user_claim` matched on
  its `user_field`; an unknown one provisioned only when the provider says so; a
  disabled one refused.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from inboundlib import redact
from inboundlib.cache import CacheSettings, Invalidation, ReadThroughCache, registry_changes
from inboundlib.config import Env
from inboundlib.events import ENTITY_PROVIDER, ENTITY_USER, USER_CHANGED, EventBus
from inboundlib.jose.fetch import DiscoveredKeys, Fetcher
from inboundlib.jose.validator import InvalidJwt, JwtPolicy, JwtValidator, unverified_issuer
from services.client_registry.api import FederatedUsers, InvalidArgument, OidcProvider, ProviderStore, UserRecord

log = logging.getLogger(__name__)

PROVIDER_CHANGES = registry_changes(ENTITY_PROVIDER)
RELOAD_SECONDS = 60.0
# After a failed reload, the last list is used this long before a token asks the registry again.
RETRY_AFTER_FAILURE = 1.0
# A provider's token may live this long at most (exp − iat); Okta and Auth0 allow a day.
DEFAULT_MAX_TOKEN_LIFETIME = 86_400
USER_CACHE = CacheSettings(ttl=60.0, negative_ttl=5.0, max_entries=100_000, max_negative_entries=10_000,
                           max_stale=300.0)


class Refused(Exception):
    """The token proves nothing here; `reason` is private (log, audit detail), never token contents."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    """A provider's token, verified, and the Inbound user it stands for."""
    provider: OidcProvider
    claims: dict = field(repr=False)
    user: UserRecord


def max_token_lifetime(env: Env) -> int:
    return env.int("INBOUND_FOREIGN_TOKEN_MAX_LIFETIME", DEFAULT_MAX_TOKEN_LIFETIME, minimum=60, maximum=7 * 86_400)


class ProviderDirectory:
    def __init__(self, store: ProviderStore, fetcher: Fetcher, *, reload_seconds: float = RELOAD_SECONDS):
        self.store = store
        self.fetcher = fetcher
        self.reload_seconds = reload_seconds
        self._by_issuer: dict[str, tuple[OidcProvider, DiscoveredKeys]] = {}
        self._loaded = False
        self._load: asyncio.Task | None = None
        self._stale = True
        self._retry_at = 0.0
        self._ticker: asyncio.Task | None = None

    async def start(self, events: EventBus | None) -> None:
        """Load and warm now (a registry that is not answering yet: the first use loads),
        then follow changes."""
        if events is not None:
            await events.subscribe(PROVIDER_CHANGES.subject, self._on_change)
            events.on_reconnect(self._on_reconnect)
        try:
            await self._current()
        except Exception as exc:
            log.warning("providers not loaded at start; the first token loads them", extra={"error": type(exc).__name__})
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        for task in (self._ticker, self._load):
            if task is not None:
                task.cancel()

    async def _on_change(self, event) -> None:
        self._stale = True
        await self._reload_soon()

    async def _on_reconnect(self) -> None:
        self._stale = True
        await self._reload_soon()

    async def _reload_soon(self) -> None:
        try:
            await self._current()
        except Exception as exc:  # the registry is away: the next token (or round) tries again
            log.warning("providers not reloaded", extra={"error": type(exc).__name__})

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.reload_seconds)
            self._stale = True
            await self._reload_soon()

    async def provider(self, issuer: str) -> tuple[OidcProvider, DiscoveredKeys] | None:
        """The provider registered with exactly this issuer (active or not), and its keys."""
        if (self._stale and time.monotonic() >= self._retry_at) or not self._loaded:
            try:
                await self._current()
            except Exception:
                if not self._loaded:
                    raise  # nothing to answer from: the caller reports the registry unavailable
                # The last list stands; not every token asks a registry that is away again.
                self._retry_at = time.monotonic() + RETRY_AFTER_FAILURE
                log.warning("providers not reloaded: the last list stands")
        return self._by_issuer.get(issuer)

    async def _current(self) -> None:
        """One load at a time; callers arriving meanwhile share it."""
        if self._load is None or self._load.done():
            self._stale = False
            self._load = asyncio.create_task(self._reload())
        load = self._load
        try:
            await asyncio.shield(load)
        except Exception:
            self._stale = True
            raise

    async def _reload(self) -> None:
        providers = await self.store.list_providers()
        by_issuer = {}
        for p in providers:
            keys = DiscoveredKeys(self.fetcher, p.discovery_url, p.issuer, max_cache=p.cache_lifespan)
            by_issuer[p.issuer] = (p, keys)
            if p.active:
                self._warm(keys)
        self._by_issuer = by_issuer
        self._loaded = True

    def _warm(self, keys: DiscoveredKeys) -> None:
        """Discovery document first; its jwks_uri once it is in (this round or the next)."""
        keys.warm()
        try:
            self.fetcher.warm(keys.jwks_uri(), "jwks", keys.max_cache)
        except Exception:  # not fetched yet (KeysPending), or a document naming another issuer
            asyncio.get_running_loop().call_later(1.0, self._warm_keys_later, keys)

    def _warm_keys_later(self, keys: DiscoveredKeys) -> None:
        try:
            self.fetcher.warm(keys.jwks_uri(), "jwks", keys.max_cache)
        except Exception:
            pass  # the next round tries again; a token meanwhile gets KeysPending


class FederatedUserCache:
    """Users by (field, value), cached; a `registry.user` event drops the user it names."""

    def __init__(self, users: FederatedUsers, settings: CacheSettings = USER_CACHE):
        self.users = users
        self._keys_by_user: dict[str, set[tuple[str, str]]] = {}
        self.cache: ReadThroughCache[tuple[str, str], UserRecord] = ReadThroughCache(
            "federated_users", settings, load=self._load)

    async def _load(self, key: tuple[str, str]) -> UserRecord | None:
        user = await self.users.find_user(*key)
        if user is not None:
            if len(self._keys_by_user) >= self.cache.settings.max_entries:
                # Bounded like the cache: entries it evicted leave their index behind. Dropping
                # the index and the cache together keeps every cached user's event effective.
                self._keys_by_user.clear()
                self.cache.invalidate_all()
            self._keys_by_user.setdefault(user.id, set()).add(key)
        return user

    def _keys_of(self, event) -> tuple[tuple[str, str], ...]:
        if event.HasField("registry_changed") and event.registry_changed.entity == ENTITY_USER:
            return tuple(self._keys_by_user.pop(event.registry_changed.id, ()))
        return ()

    async def attach(self, events: EventBus) -> None:
        await self.cache.attach(events, Invalidation(USER_CHANGED, self._keys_of))

    async def find(self, field_name: str, value: str) -> UserRecord | None:
        return await self.cache.get((field_name, value))

    async def provision(self, provider: OidcProvider, value: str) -> UserRecord:
        user = await self.users.provision_user(provider.user_field, value, list(provider.provision_roles),
                                               provider.name)
        self.cache.invalidate((provider.user_field, value))
        return user


class ForeignTokenVerifier:
    def __init__(self, directory: ProviderDirectory, users: FederatedUserCache, validator: JwtValidator, *,
                 max_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME):
        self.directory = directory
        self.users = users
        self.validator = validator
        self.max_lifetime = max_lifetime

    async def provider_of(self, token: str) -> tuple[OidcProvider, DiscoveredKeys]:
        """The active provider registered for the token's `iss` (read unverified: routing only)."""
        try:
            iss = unverified_issuer(token)
        except InvalidJwt as exc:
            raise Refused(exc.reason) from None
        found = await self.directory.provider(iss)
        if found is None:
            raise Refused(f"no provider registered for issuer {redact.unverified(iss)}")
        if not found[0].active:
            raise Refused(f"provider {found[0].name} is disabled")
        return found

    async def verify(self, token: str, *, consume: bool, found: tuple[OidcProvider, DiscoveredKeys] | None = None
                     ) -> Verified:
        """Refused(reason) or KeysPending. `consume`: the token is being used up (an exchange),
        so a provider that checks jti refuses its second use; accepted as-is (introspection),
        a token is presented again and again and its jti is not claimed."""
        provider, keys = found or await self.provider_of(token)
        policy = JwtPolicy(issuers=(provider.issuer,), audiences=tuple(provider.audiences),
                           algorithms=tuple(provider.algorithms), skew=provider.clock_skew,
                           max_lifetime=self.max_lifetime, require_jti=consume and provider.check_jti,
                           jti_namespace=f"provider:{provider.name}")
        try:
            claims = await self.validator.validate(token, policy, keys)
        except InvalidJwt as exc:
            raise Refused(f"provider {provider.name}: {exc.reason}") from None
        user = await self.map_user(provider, claims)
        return Verified(provider=provider, claims=claims, user=user)

    async def map_user(self, provider: OidcProvider, claims: dict) -> UserRecord:
        value = claims.get(provider.user_claim)
        if not isinstance(value, str) or not value:
            raise Refused(f"provider {provider.name}: no {provider.user_claim} claim to map a user by")
        if provider.user_claim == "email" and claims.get("email_verified", True) not in (True, "true"):
            # OpenID Connect Core §5.1: the IdP says it has not verified the address. Mapped as it
            # is, anyone who can sign up there with a user's address (an Auth0 database or social
            # connection, say) would be that user here.
            raise Refused(f"provider {provider.name}: email_verified is not true; an unverified email maps no user")
        user = await self.users.find(provider.user_field, value)
        if user is None:
            if not provider.provision_users:
                raise Refused(f"provider {provider.name}: no user with that {provider.user_field} "
                              f"({redact.unverified(value)})")
            try:
                user = await self.users.provision(provider, value)
            except InvalidArgument as exc:  # a value no username or email can be made of
                raise Refused(f"provider {provider.name}: cannot provision a user by {provider.user_field}: "
                              f"{exc}") from None
            log.info("user provisioned", extra={"provider": provider.name, "user_id": user.id})
        if not user.active:
            raise Refused(f"provider {provider.name}: user {user.id} is disabled")
        return user

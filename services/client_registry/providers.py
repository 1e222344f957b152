"""The OpenID provider registry over Postgres: implements api.ProviderStore.

A provider (Entra ID, Okta, Auth0, Google...) is trusted for its tokens as far as the
operator configured: its issuer (unique: a token's `iss` names one provider), the https
discovery document its keys come from, the audiences and algorithms accepted, its cache
lifespan and clock skew, the claim naming the user and the user field it maps to,
whether its `jti` is checked, and whether unknown users are provisioned, with which
roles. Every change publishes RegistryChanged(provider) so third_party_token's and
token_issuer's lists follow within a second.
"""
from __future__ import annotations

import logging
import re
from dataclasses import replace

import asyncpg

from inboundlib.events import ENTITY_PROVIDER, PROVIDER_CHANGED, EventBus, registry_changed
from inboundlib.oauth.scopes import is_valid_scope_token
from services.client_registry.api import USER_FIELDS, AlreadyExists, InvalidArgument, NotFound, OidcProvider
from services.client_registry.pg import ts
from services.client_registry.scopes import require_catalog_scopes
from services.client_registry.trust import ASYMMETRIC_ALGORITHMS, check_algorithms, check_https_url, check_text
from services.client_registry.users import check_roles

log = logging.getLogger(__name__)

# A provider's name is a word: it appears in jti namespaces (provider:<name>), audit records and commands.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CLAIM = re.compile(r"^[A-Za-z0-9_:.\-]{1,128}$")
MIN_CACHE_LIFESPAN, MAX_CACHE_LIFESPAN = 60, 7 * 86_400
MAX_CLOCK_SKEW = 3600
MAX_AUDIENCES = 50
# Provisioning creates a user by this field; an `id` is ours (a UUID), never a provider's word.
PROVISIONING_FIELDS = ("username", "email")
TEMPLATES = ("", "azure", "okta", "auth0", "google")
_COLUMNS = ("name, issuer, discovery_url, audiences, algorithms, cache_lifespan, clock_skew, user_claim, user_field,"
            " check_jti, active, provision_users, provision_roles, scopes, template, created_at, updated_at")


def plausible_name(name: str) -> bool:
    return bool(_NAME.match(name))


def _provider(row: asyncpg.Record) -> OidcProvider:
    return OidcProvider(
        name=row["name"], issuer=row["issuer"], discovery_url=row["discovery_url"], audiences=tuple(row["audiences"]),
        algorithms=tuple(row["algorithms"]), cache_lifespan=row["cache_lifespan"], clock_skew=row["clock_skew"],
        user_claim=row["user_claim"], user_field=row["user_field"], check_jti=row["check_jti"], active=row["active"],
        provision_users=row["provision_users"], provision_roles=tuple(row["provision_roles"]),
        scopes=tuple(row["scopes"]), template=row["template"], created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]))


def default_discovery_url(issuer: str) -> str:
    """OpenID Connect Discovery 1.0 §4: the issuer with /.well-known/openid-configuration appended."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def check_provider(provider: OidcProvider) -> OidcProvider:
    """The record's rules, one at a time; answers it normalised (discovery URL defaulted)."""
    if not plausible_name(provider.name):
        raise InvalidArgument("a provider name is 1 to 64 of a-z 0-9 _ . - (starting with a letter or digit)")
    issuer = check_https_url("issuer", provider.issuer)
    discovery_url = check_https_url("discovery_url", provider.discovery_url or default_discovery_url(issuer))
    if not provider.audiences or len(provider.audiences) > MAX_AUDIENCES:
        raise InvalidArgument(f"a provider needs 1 to {MAX_AUDIENCES} accepted audiences (its tokens' aud)")
    audiences = [check_text("audience", a, 256, required=True) for a in provider.audiences]
    if not provider.algorithms:
        raise InvalidArgument("a provider needs at least one accepted algorithm")
    # Public-key algorithms only: a provider's keys come from its JWKS; an HMAC key would be a shared secret.
    algorithms = check_algorithms("algorithms", provider.algorithms, ASYMMETRIC_ALGORITHMS)
    if not MIN_CACHE_LIFESPAN <= provider.cache_lifespan <= MAX_CACHE_LIFESPAN:
        raise InvalidArgument(f"cache_lifespan is {MIN_CACHE_LIFESPAN} to {MAX_CACHE_LIFESPAN} seconds")
    if not 0 <= provider.clock_skew <= MAX_CLOCK_SKEW:
        raise InvalidArgument(f"clock_skew is 0 to {MAX_CLOCK_SKEW} seconds")
    if not _CLAIM.match(provider.user_claim):
        raise InvalidArgument("user_claim is a claim name: 1 to 128 of A-Z a-z 0-9 _ : . -")
    if provider.user_field not in USER_FIELDS:
        raise InvalidArgument(f"user_field is one of {', '.join(USER_FIELDS)}")
    if provider.provision_users and provider.user_field not in PROVISIONING_FIELDS:
        raise InvalidArgument(f"provisioning creates users by {' or '.join(PROVISIONING_FIELDS)}, not by id")
    if provider.template not in TEMPLATES:
        raise InvalidArgument(f"template is one of {', '.join(t for t in TEMPLATES if t)}")
    if any(not is_valid_scope_token(s) for s in provider.scopes):
        raise InvalidArgument("malformed scopes")
    return replace(provider, issuer=issuer, discovery_url=discovery_url, audiences=tuple(dict.fromkeys(audiences)),
                   algorithms=tuple(algorithms), provision_roles=tuple(check_roles(list(provider.provision_roles))),
                   scopes=tuple(dict.fromkeys(provider.scopes)))


class ProviderRepository:
    def __init__(self, pool: asyncpg.Pool, events: EventBus | None):
        self.pool = pool
        self.events = events

    def _changed(self, name: str, change: str) -> None:
        if self.events is not None:
            self.events.publish(PROVIDER_CHANGED, registry_changed(ENTITY_PROVIDER, name, change))

    @staticmethod
    def _values(p: OidcProvider) -> tuple:
        return (p.name, p.issuer, p.discovery_url, list(p.audiences), list(p.algorithms), p.cache_lifespan,
                p.clock_skew, p.user_claim, p.user_field, p.check_jti, p.active, p.provision_users,
                list(p.provision_roles), list(p.scopes), p.template)

    async def create_provider(self, provider: OidcProvider) -> OidcProvider:
        checked = check_provider(provider)
        async with self.pool.acquire() as conn, conn.transaction():
            await require_catalog_scopes(conn, list(checked.scopes))
            try:
                row = await conn.fetchrow(
                    f"INSERT INTO oidc_providers (name, issuer, discovery_url, audiences, algorithms, cache_lifespan,"
                    f" clock_skew, user_claim, user_field, check_jti, active, provision_users, provision_roles,"
                    f" scopes, template) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)"
                    f" RETURNING {_COLUMNS}", *self._values(checked))
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists("a provider with that name exists already" if "pkey" in exc.constraint_name
                                    else "a provider with that issuer exists already") from None
        log.info("provider created", extra={"provider": checked.name})
        self._changed(checked.name, "created")
        return _provider(row)

    async def get_provider(self, name: str) -> OidcProvider | None:
        if not plausible_name(name):
            return None
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM oidc_providers WHERE name = $1", name)
        return _provider(row) if row is not None else None

    async def list_providers(self) -> list[OidcProvider]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM oidc_providers ORDER BY name")
        return [_provider(row) for row in rows]

    async def update_provider(self, provider: OidcProvider) -> OidcProvider:
        """Replaces provider `provider.name` with this record."""
        if not plausible_name(provider.name):
            raise NotFound("no such provider")
        checked = check_provider(provider)
        async with self.pool.acquire() as conn, conn.transaction():
            await require_catalog_scopes(conn, list(checked.scopes))
            try:
                row = await conn.fetchrow(
                    f"UPDATE oidc_providers SET issuer=$2, discovery_url=$3, audiences=$4, algorithms=$5,"
                    f" cache_lifespan=$6, clock_skew=$7, user_claim=$8, user_field=$9, check_jti=$10, active=$11,"
                    f" provision_users=$12, provision_roles=$13, scopes=$14, template=$15, updated_at=now()"
                    f" WHERE name = $1 RETURNING {_COLUMNS}", *self._values(checked))
            except asyncpg.UniqueViolationError:
                raise AlreadyExists("a provider with that issuer exists already") from None
            if row is None:
                raise NotFound("no such provider")
        log.info("provider updated", extra={"provider": checked.name})
        self._changed(checked.name, "updated")
        return _provider(row)

    async def delete_provider(self, name: str) -> bool:
        if not plausible_name(name):
            return False
        deleted = (await self.pool.execute("DELETE FROM oidc_providers WHERE name = $1", name)).endswith(" 1")
        if deleted:
            log.info("provider deleted", extra={"provider": name})
            self._changed(name, "deleted")
        return deleted

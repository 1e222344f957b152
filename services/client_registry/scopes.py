"""The scope catalog over Postgres: implements api.ScopeCatalog.

Every scope a client may be given (RFC 6749 §3.3 scope tokens), with the words the
consent page shows and whether the user must consent to it. ClientRepository refuses
a scope that is not here (`require_catalog_scopes`), holding the scopes' rows (FOR
SHARE) until its write commits; deleting a scope locks its row (FOR UPDATE) and only
then looks for clients that have it, so a client cannot be given a scope that is being
deleted, nor a scope deleted that a client is being given.
"""
from __future__ import annotations

import logging
import re

import asyncpg

from inboundlib.events import ENTITY_SCOPE, SCOPE_CHANGED, EventBus, registry_changed
from inboundlib.oauth.scopes import is_valid_scope_token
from services.client_registry.api import AlreadyExists, InUse, InvalidArgument, NotFound, ScopeRecord, ScopeUpdate
from services.client_registry.pg import ts

log = logging.getLogger(__name__)

MAX_NAME = 200
MAX_DESCRIPTION = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COLUMNS = "name, description, consent_required, created_at, updated_at"


def check_scope_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or not is_valid_scope_token(name):
        raise InvalidArgument(f"a scope name is an RFC 6749 scope token of 1 to {MAX_NAME} characters"
                              " (no spaces, quotes or backslashes)")
    return name


def check_description(description: str) -> str:
    value = description.strip()
    if not value:
        raise InvalidArgument("a scope needs a description (what the consent page shows)")
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(f"a scope description is at most {MAX_DESCRIPTION} characters")
    if _CONTROL.search(value):
        raise InvalidArgument("a scope description contains control characters")
    return value


def _plausible(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME and is_valid_scope_token(name)


def _scope(row: asyncpg.Record) -> ScopeRecord:
    return ScopeRecord(name=row["name"], description=row["description"], consent_required=row["consent_required"],
                       created_at=ts(row["created_at"]), updated_at=ts(row["updated_at"]))


async def require_catalog_scopes(conn: asyncpg.Connection, scopes: list[str]) -> None:
    """Inside the caller's transaction: every scope is in the catalog (InvalidArgument naming
    those that are not), and stays there until the transaction ends (FOR SHARE)."""
    if not scopes:
        return
    rows = await conn.fetch("SELECT name FROM scopes WHERE name = ANY($1::text[]) ORDER BY name FOR SHARE",
                            scopes)
    unknown = sorted(set(scopes) - {row["name"] for row in rows})
    if unknown:
        raise InvalidArgument(f"scopes not in the catalog: {', '.join(unknown)}"
                              " (add them first: inboundctl scope create)")


class ScopeRepository:
    """Implements api.ScopeCatalog over Postgres."""

    def __init__(self, pool: asyncpg.Pool, events: EventBus | None = None):
        self.pool = pool
        self.events = events

    def _changed(self, name: str, change: str) -> None:
        """For the audit trail: every change names the operator who made it (the call's actor)."""
        if self.events is not None:
            self.events.publish(SCOPE_CHANGED, registry_changed(ENTITY_SCOPE, name, change))

    async def create_scope(self, name: str, description: str, consent_required: bool) -> ScopeRecord:
        name = check_scope_name(name)
        description = check_description(description)
        row = await self.pool.fetchrow(
            f"INSERT INTO scopes (name, description, consent_required) VALUES ($1, $2, $3)"
            f" ON CONFLICT (name) DO NOTHING RETURNING {_COLUMNS}", name, description, consent_required)
        if row is None:
            raise AlreadyExists(f"the catalog has a scope {name} already")
        log.info("scope created", extra={"scope": name})
        self._changed(name, "created")
        return _scope(row)

    async def get_scopes(self, names: list[str]) -> list[ScopeRecord | None]:
        """One answer per name, in order; a name no scope can have is not found without asking."""
        wanted = list({n for n in names if _plausible(n)})
        found: dict[str, ScopeRecord] = {}
        if wanted:
            rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM scopes WHERE name = ANY($1::text[])", wanted)
            found = {row["name"]: _scope(row) for row in rows}
        return [found.get(n) for n in names]

    async def list_scopes(self) -> list[ScopeRecord]:
        return [_scope(r) for r in await self.pool.fetch(f"SELECT {_COLUMNS} FROM scopes ORDER BY name")]

    async def update_scope(self, name: str, update: ScopeUpdate) -> ScopeRecord:
        description = None if update.description is None else check_description(update.description)
        row = None if not _plausible(name) else await self.pool.fetchrow(
            f"UPDATE scopes SET description = COALESCE($2, description),"
            f" consent_required = COALESCE($3, consent_required), updated_at = now()"
            f" WHERE name = $1 RETURNING {_COLUMNS}", name, description, update.consent_required)
        if row is None:
            raise NotFound("no such scope")
        log.info("scope updated", extra={"scope": name})
        self._changed(name, "updated")
        return _scope(row)

    async def delete_scope(self, name: str) -> bool:
        """Refused (InUse) while a client has the scope: the row is locked first, so a client
        being given the scope meanwhile has committed (and is seen) or will find it gone."""
        if not _plausible(name):
            return False
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM scopes WHERE name = $1 FOR UPDATE", name) is None:
                return False
            users = await conn.fetch("SELECT client_id FROM clients WHERE scopes @> ARRAY[$1::text]"
                                     " ORDER BY client_id LIMIT 6", name)
            if users:
                listed = ", ".join(r["client_id"] for r in users[:5]) + (", ..." if len(users) > 5 else "")
                raise InUse(f"scope {name} is still given to clients: {listed}")
            await conn.execute("DELETE FROM scopes WHERE name = $1", name)
        log.info("scope deleted", extra={"scope": name})
        self._changed(name, "deleted")
        return True

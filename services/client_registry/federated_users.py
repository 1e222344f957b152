"""Users as foreign identities name them: implements api.FederatedUsers over Postgres.

A provider's token or a JWT-bearer assertion names its user by a claim; the operator maps
it to one user field (username, email or id). `find_user` answers the one user that field
names, or None: an email is matched case-insensitively, and one that two users share is
ambiguous and answers None (never a guess between two people). `provision_user` creates,
for a provider that may, a user without a password named by that value (by email: the
address is the username too), or answers the one that exists: two first uses at once make
one user (the username's unique key decides).
"""
from __future__ import annotations

import logging
import uuid

import asyncpg

from inboundlib.events import ENTITY_USER, USER_CHANGED, EventBus, registry_changed
from services.client_registry.api import USER_FIELDS, InvalidArgument, UserRecord, is_plausible_id
from services.client_registry.users import (
    _DIGEST_OF_3,
    _SELECT_USER,
    _USER_COLUMNS,
    MAX_EMAIL,
    _user,
    check_email,
    check_roles,
    check_username,
    username_key,
)

log = logging.getLogger(__name__)

PROVISIONED_BY = ("username", "email")


class FederatedUserRepository:
    def __init__(self, pool: asyncpg.Pool, events: EventBus | None):
        self.pool = pool
        self.events = events

    async def find_user(self, field: str, value: str) -> UserRecord | None:
        if field not in USER_FIELDS:
            raise InvalidArgument(f"a user is found by one of {', '.join(USER_FIELDS)}")
        if not is_plausible_id(value):
            return None
        if field == "id":
            row = await self.pool.fetchrow(f"{_SELECT_USER} WHERE u.id = $1", value)
        elif field == "username":
            row = await self.pool.fetchrow(f"{_SELECT_USER} WHERE u.username_key = $1", username_key(value))
        else:
            if len(value) > MAX_EMAIL:
                return None
            # Two are enough to know it is ambiguous (users_email_idx serves lower(email)).
            rows = await self.pool.fetch(f"{_SELECT_USER} WHERE lower(u.email) = lower($1) AND u.email <> ''"
                                         f" LIMIT 2", value)
            row = rows[0] if len(rows) == 1 else None
        return _user(row) if row is not None else None

    async def find_users(self, keys: list[tuple[str, str]]) -> list[UserRecord | None]:
        """find_user for each (field, value), one query per field for the whole batch (the
        subject lookup of every JWT-bearer grant and foreign token comes through here); a
        field no user is found by answers None."""
        wanted: dict[str, set[str]] = {field: set() for field in USER_FIELDS}
        for field, value in keys:
            if field in USER_FIELDS and is_plausible_id(value) and not (field == "email" and len(value) > MAX_EMAIL):
                wanted[field].add(value)
        found: dict[tuple[str, str], UserRecord] = {}
        if wanted["id"]:
            for row in await self.pool.fetch(f"{_SELECT_USER} WHERE u.id = ANY($1::text[])", list(wanted["id"])):
                found[("id", row["id"])] = _user(row)
        if wanted["username"]:
            by_key: dict[str, list[str]] = {}
            for value in wanted["username"]:
                by_key.setdefault(username_key(value), []).append(value)
            for row in await self.pool.fetch(f"{_SELECT_USER} WHERE u.username_key = ANY($1::text[])", list(by_key)):
                for value in by_key[row["username_key"]]:
                    found[("username", value)] = _user(row)
        if wanted["email"]:
            # Matched as find_user matches (Postgres's lower(), users_email_idx); a value two
            # users share is ambiguous and answers None.
            matches: dict[str, list[UserRecord]] = {}
            for row in await self.pool.fetch(
                    f"SELECT k.value AS wanted, {_USER_COLUMNS} FROM unnest($1::text[]) AS k(value)"
                    f" JOIN users u ON lower(u.email) = lower(k.value) AND u.email <> ''", list(wanted["email"])):
                matches.setdefault(row["wanted"], []).append(_user(row))
            found.update({("email", value): users[0] for value, users in matches.items() if len(users) == 1})
        return [found.get((field, value)) for field, value in keys]

    async def provision_user(self, field: str, value: str, roles: list[str], provider: str) -> UserRecord:
        if field not in PROVISIONED_BY:
            raise InvalidArgument(f"users are provisioned by {' or '.join(PROVISIONED_BY)}")
        roles = check_roles(roles)
        if field == "email":
            email = check_email(value)
            if not email:
                raise InvalidArgument("an email is required")
            username = check_username(email)
        else:
            username, email = check_username(value), ""
        existing = await self.find_user(field, value)
        if existing is not None:
            return existing
        if field == "email" and await self._email_taken(email):
            raise InvalidArgument("more than one user has that email: none is provisioned")
        user_id = str(uuid.uuid4())
        row = await self.pool.fetchrow(
            f"WITH created AS (INSERT INTO users (id, username, username_key, username_digest, email, roles)"
            f" VALUES ($1, $2, $3, {_DIGEST_OF_3}, $4, $5) ON CONFLICT (username_key) DO NOTHING RETURNING id)"
            f" SELECT id FROM created", user_id, username, username_key(username), email, roles)
        if row is None:
            # Provisioned meanwhile by another first use (or the username is someone else's).
            found = await self.find_user(field, value)
            if found is None:
                raise InvalidArgument("a user with that username exists already")
            return found
        log.info("user provisioned", extra={"user_id": user_id, "provider": provider})
        if self.events is not None:
            self.events.publish(USER_CHANGED, registry_changed(ENTITY_USER, user_id, "provisioned"))
        return await self.find_user("id", user_id)

    async def _email_taken(self, email: str) -> bool:
        # `email <> ''` lets the partial users_email_idx serve it (without it: a scan of every user).
        return bool(await self.pool.fetchval(
            "SELECT count(*) FROM users WHERE lower(email) = lower($1) AND email <> ''", email))

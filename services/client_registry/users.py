"""The user directory over Postgres, and sign-in checks with failure counting.

Management (api.UserDirectory): validation of user records, one rule a
function, then SQL. Every change publishes RegistryChanged(user). A password
change, disabling, enabling or deleting a user records a subject revocation
cut-off (api.subject_cut_off) in the same transaction and publishes it as
token.revoked after the commit, as clients.py does for clients: every token
the user held stops being active on every token_issuer replica.

Sign-ins (api.UserAuthenticator), one transaction an item:
1. upsert and lock (INSERT ... ON CONFLICT DO UPDATE, which takes the row lock)
   the username's two counter rows, the whole username's (address '') first,
   then the (username, address) row: concurrent guesses for one username wait
   for each other, in one order (no deadlock), and none can slip past a lock;
2. a back-off or lock in force on either row: Locked, unchecked (the right
   password too), nothing counted;
3. otherwise verify the password, in the password pool, while the rows stay
   locked: against the user's hash, or the dummy hash when the username is
   unknown, the user is disabled or has no password (same cost, same answer:
   Invalid);
4. failure: both rows count it, and each backs off exponentially and then locks
   (user.locked, once per lock): the address row after `backoff_after` and
   `lock_after` failures, the username row after `user_backoff_after` and
   `user_lock_after`. The username row's counts sit far above one address's: it
   stops guessing spread over many addresses, and anyone can feed it from anywhere,
   so it must not slow a user's sign-ins after a few stray guesses;
   success: the address row is cleared; the username row is not (it decays): a
   guesser spread over many addresses would otherwise have the real user's own
   sign-ins reset the count that is meant to stop them.
Failures are forgotten (decay) `lock_seconds` after the last one or the end of
its back-off, whichever is later, when the row is next used; the janitor deletes
rows with nothing left to remember. (From the failure alone, a back-off that has
doubled to the lock's length would forget every failure the moment it ended, and
the lock would never come: the username row's does, from `user_backoff_after`.)

Unknown usernames count, back off and lock exactly like real ones, keyed by the
same normalised username: a lock says nothing about whether the user exists.
In events, such a username is a fingerprint (inboundlib.redact): it is the
caller's word, possibly a password typed into the wrong field.

Bounding sign-ins (a burst must not take every Postgres connection from token
requests): each sign-in holds a connection while its hash is verified, so at
most `sign_in_slots` sign-ins run at once (a semaphore, sized by the assembly
below the pool: min(hash workers, pool size / 2)), more would only wait for a
hash thread while holding a connection; at most `hash_queue` more wait for a
slot without a connection; beyond that each further item of a batch answers
ItemError(unavailable) at once, unchecked, and a batch with no room at all raises
Overloaded (UNAVAILABLE): `temporarily_unavailable` either way. A counter row lock is waited for at most
LOCK_WAIT (lock_timeout; then that item alone answers ItemError(unavailable)).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from inbound.events.v1 import events_pb2
from inboundlib import redact
from inboundlib.batching import Overloaded
from inboundlib.config import Env
from inboundlib.db import UNAVAILABLE_ERRORS
from inboundlib.events import (
    ENTITY_USER,
    USER_CHANGED,
    USER_LOCK_ENDED,
    USER_LOCKED,
    EventBus,
    registry_changed,
)
from inboundlib.passwords import PasswordRejected, Passwords
from services.client_registry.api import (
    BUILT_IN_ROLES,
    ITEM_INTERNAL,
    ITEM_UNAVAILABLE,
    AlreadyExists,
    Invalid,
    InvalidArgument,
    ItemError,
    Locked,
    NotFound,
    SignIn,
    SignInOutcome,
    UserPage,
    UserRecord,
    UserSpec,
    UserUpdate,
    is_plausible_id,
    subject_cut_off,
)
from services.client_registry.pg import ts
from services.client_registry.revocations import publish_cut_off, record_cut_off

log = logging.getLogger(__name__)

MAX_USERNAME = 256
# Normalisation can lengthen a name (NFKC turns U+FDFA into 18 characters): the key is
# bounded too, well under what a Postgres index entry can hold (about 2.7 kB).
MAX_USERNAME_KEY_BYTES = 1024
MAX_NAME = 256
MAX_EMAIL = 254  # RFC 5321 §4.5.3.1.3's path limit, less the brackets
MAX_ROLES = 64
MAX_PAGE = 1000
MAX_ADDRESS = 64
# The (username, address) row of a sign-in whose address the caller did not know.
NO_ADDRESS = "-"
LOCK_WAIT = "5s"
REASON_EXPIRED = "expired"
REASON_UNLOCKED = "unlocked"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
# BCP 47 language tags, loosely: a 2–3 (or 4–8) letter language and subtags of 1–8 alphanumerics.
_LOCALE = re.compile(r"^[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*$")
# IANA time zone names: Area/Location(/Sub), or a bare name (UTC).
_ZONEINFO = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}$")
_ROLE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")


@dataclass(frozen=True)
class LoginSettings:
    """Back-off and locks of failed sign-ins (see the module docstring)."""
    backoff_after: int = 3
    backoff_seconds: int = 1
    lock_after: int = 10
    user_backoff_after: int = 20
    user_lock_after: int = 50
    lock_seconds: int = 900
    sweep_seconds: float = 5.0

    @classmethod
    def from_env(cls, env: Env) -> LoginSettings:
        return cls(backoff_after=env.int("INBOUND_LOGIN_BACKOFF_AFTER", 3, minimum=1),
                   backoff_seconds=env.int("INBOUND_LOGIN_BACKOFF_SECONDS", 1, minimum=1, maximum=3600),
                   lock_after=env.int("INBOUND_LOGIN_LOCK_AFTER", 10, minimum=1),
                   user_backoff_after=env.int("INBOUND_LOGIN_USER_BACKOFF_AFTER", 20, minimum=1),
                   user_lock_after=env.int("INBOUND_LOGIN_USER_LOCK_AFTER", 50, minimum=1),
                   lock_seconds=env.int("INBOUND_LOGIN_LOCK_SECONDS", 900, minimum=1, maximum=30 * 86400),
                   sweep_seconds=env.float("INBOUND_LOGIN_SWEEP_SECONDS", 5.0, minimum=0.1))


# --- validation: one rule a function -------------------------------------------------------------

def username_key(username: str) -> str:
    """What makes two usernames the same: NFKC-normalised and case-folded (so `Ada`,
    `ADA` and `ａｄａ` are one user, and one counter)."""
    return unicodedata.normalize("NFKC", username).casefold()


def username_digest(key: str) -> str:
    """What the sign-in counters are keyed by: the SHA-256 (hex) of a username key, as
    migration 0006 computes users.username_digest. Counters exist for unknown usernames
    too; a password typed into the username field must not sit in a table in clear."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def unknown_username(digest: str) -> str:
    """An unknown username in an event: the caller's word, so never even its first
    characters (inboundlib.redact keeps four), only its digest's prefix."""
    return f"…sha256:{digest[:redact.HASH_HEX]}"


def check_username(value: str) -> str:
    if not value:
        raise InvalidArgument("username is required")
    if len(value) > MAX_USERNAME:
        raise InvalidArgument(f"username is longer than {MAX_USERNAME} characters")
    if _CONTROL.search(value):
        raise InvalidArgument("username contains control characters")
    if value != value.strip():
        raise InvalidArgument("username starts or ends with white space")
    if not _plausible_key(username_key(value)):
        raise InvalidArgument("username is too long once normalised")
    return value


def _plausible_key(key: str) -> bool:
    return len(key.encode("utf-8", "surrogatepass")) <= MAX_USERNAME_KEY_BYTES


def _check_text(label: str, value: str, limit: int = MAX_NAME) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{label} is longer than {limit} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{label} contains control characters")
    return value.strip()


def check_email(value: str) -> str:
    value = value.strip()
    if value and (len(value) > MAX_EMAIL or _CONTROL.search(value) or not _EMAIL.match(value)):
        raise InvalidArgument("email is not an address (name@domain)")
    return value


def _check_locale(value: str) -> str:
    """OpenID Connect Core §5.1: a BCP 47 language tag (en-US; en_US is common too)."""
    value = value.strip()
    if value and (len(value) > 35 or not _LOCALE.match(value)):
        raise InvalidArgument("locale is not a BCP 47 language tag (e.g. en-GB)")
    return value


def _check_zoneinfo(value: str) -> str:
    """OpenID Connect Core §5.1: a time zone database name (Europe/Paris)."""
    value = value.strip()
    if value and (len(value) > 64 or not _ZONEINFO.match(value)):
        raise InvalidArgument("zoneinfo is not a time zone name (e.g. Europe/Paris)")
    return value


def check_roles(roles: list[str]) -> list[str]:
    bad = [r for r in roles if r not in BUILT_IN_ROLES and not _ROLE.match(r)]
    if bad:
        raise InvalidArgument(f"malformed roles (lower-case letters, digits, _ . : -): {[redact.unverified(r) for r in bad]}")
    unique = list(dict.fromkeys(roles))
    if len(unique) > MAX_ROLES:
        raise InvalidArgument(f"at most {MAX_ROLES} roles")
    return unique


def _check_password(passwords: Passwords, password: str) -> None:
    try:
        passwords.check_policy(password)
    except PasswordRejected as exc:
        raise InvalidArgument(str(exc)) from None


def _address(value: str) -> str:
    """The counter key of a sign-in's address: as the edge saw it, or NO_ADDRESS."""
    value = value.strip()
    if not value:
        return NO_ADDRESS
    if len(value) > MAX_ADDRESS or _CONTROL.search(value):
        return redact.unverified(value)
    return value


# --- rows ----------------------------------------------------------------------------------------

_USER_COLUMNS = (
    "u.id, u.username, u.username_key, u.email, u.display_name, u.given_name, u.family_name, u.email_verified,"
    " u.locale, u.zoneinfo, u.active, u.roles, u.password_changed_at, u.created_at, u.updated_at,"
    " (SELECT max(greatest(f.blocked_until, f.locked_until)) FROM login_failures f"
    "   WHERE f.username_digest = u.username_digest AND greatest(f.blocked_until, f.locked_until) > now())"
    " AS locked_until"
)
_SELECT_USER = f"SELECT {_USER_COLUMNS} FROM users u"
# users.username_digest from the username key in $3 (what username_digest() computes).
_DIGEST_OF_3 = "encode(sha256(convert_to($3::text, 'UTF8')), 'hex')"


def _user(row: asyncpg.Record) -> UserRecord:
    return UserRecord(
        id=row["id"], username=row["username"], email=row["email"], display_name=row["display_name"],
        active=row["active"], roles=tuple(row["roles"]), given_name=row["given_name"],
        family_name=row["family_name"], email_verified=row["email_verified"], locale=row["locale"],
        zoneinfo=row["zoneinfo"], created_at=ts(row["created_at"]), updated_at=ts(row["updated_at"]),
        password_changed_at=ts(row["password_changed_at"]), locked_until=ts(row["locked_until"]),
    )


# The two counter rows of a sign-in, upserted and locked in one statement, the
# username's row ('') first so that every transaction locks them in one order.
_LOCK_COUNTERS = """
INSERT INTO login_failures (username_digest, address) VALUES ($1, ''), ($1, $2)
ON CONFLICT (username_digest, address) DO UPDATE SET failures = login_failures.failures
RETURNING address, failures, last_failure_at, blocked_until, locked_until, now() AS now
"""
_SAVE_COUNTER = """
UPDATE login_failures SET failures = $3, last_failure_at = $4, blocked_until = $5, locked_until = $6
 WHERE username_digest = $1 AND address = $2
"""
# FOR SHARE: a password change, disable or delete (FOR UPDATE, DELETE) waits until this
# sign-in has committed, and so records its cut-off after the check (see _check_and_count).
_SIGN_IN_USER = f"SELECT {_USER_COLUMNS}, u.password_hash FROM users u WHERE u.username_key = $1 FOR SHARE OF u"


@dataclass
class _Counter:
    address: str
    failures: int
    last_failure_at: datetime | None
    blocked_until: datetime | None
    locked_until: datetime | None

    @property
    def whole_username(self) -> bool:
        return self.address == ""


@dataclass(frozen=True)
class _LockChange:
    """A lock set or ended by a sign-in's transaction, published after its commit."""
    address: str
    locked_until: int = 0
    failures: int = 0
    ended: bool = False


class UserRepository:
    """Implements api.UserStore over Postgres."""

    def __init__(self, pool: asyncpg.Pool, events: EventBus | None, passwords: Passwords,
                 login: LoginSettings = LoginSettings(), *, sign_in_slots: int | None = None):
        self.pool = pool
        self.events = events
        self.passwords = passwords
        self.login = login
        slots = sign_in_slots or passwords.settings.workers
        self.sign_in_slots = slots
        self._slots = asyncio.Semaphore(slots)
        self._max_sign_ins = slots + passwords.settings.hash_queue
        self._sign_ins = 0

    # --- events -----------------------------------------------------------------------------------

    def _changed(self, user_id: str, change: str) -> None:
        if self.events is not None:
            self.events.publish(USER_CHANGED, registry_changed(ENTITY_USER, user_id, change))

    def _lock_event(self, change: _LockChange, user: UserRecord | None, digest: str, request_id: str = "",
                    reason: str = REASON_EXPIRED) -> None:
        user_id = user.id if user is not None else ""
        # A user's username is ours; an unknown one is the caller's word: a fingerprint only.
        username = user.username if user is not None else unknown_username(digest)
        address = change.address  # "": the whole username
        if self.events is None:
            return
        if change.ended:
            event = events_pb2.Event(request_id=request_id, user_lock_ended=events_pb2.UserLockEnded(
                user_id=user_id, username=username, client_address=address, reason=reason))
            self.events.publish(USER_LOCK_ENDED, event)
        else:
            event = events_pb2.Event(request_id=request_id, user_locked=events_pb2.UserLocked(
                user_id=user_id, username=username, client_address=address, locked_until=change.locked_until,
                failures=change.failures))
            self.events.publish(USER_LOCKED, event)

    # --- the directory (api.UserDirectory) --------------------------------------------------------

    async def create_user(self, spec: UserSpec) -> UserRecord:
        username = check_username(spec.username)
        email = check_email(spec.email)
        display_name = _check_text("display name", spec.display_name)
        given_name = _check_text("given name", spec.given_name)
        family_name = _check_text("family name", spec.family_name)
        locale = _check_locale(spec.locale)
        zoneinfo = _check_zoneinfo(spec.zoneinfo)
        roles = check_roles(spec.roles)
        password_hash = None
        if spec.password:
            _check_password(self.passwords, spec.password)
            password_hash = await self.passwords.hash(spec.password)
        user_id = str(uuid.uuid4())
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO users (id, username, username_key, username_digest, email, display_name,"
                    " given_name, family_name, email_verified, locale, zoneinfo, active, roles, password_hash,"
                    " password_changed_at)"
                    f" VALUES ($1,$2,$3,{_DIGEST_OF_3},$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,"
                    " CASE WHEN $13::text IS NULL THEN NULL ELSE now() END)",
                    user_id, username, username_key(username), email, display_name, given_name, family_name,
                    spec.email_verified, locale, zoneinfo, spec.active, roles, password_hash)
                row = await conn.fetchrow(f"{_SELECT_USER} WHERE u.id = $1", user_id)
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("a user with that username exists already") from None
        log.info("user created", extra={"user_id": user_id})
        self._changed(user_id, "created")
        return _user(row)

    async def get_user(self, *, id: str = "", username: str = "") -> UserRecord | None:
        if id:
            if not is_plausible_id(id):
                return None
            row = await self.pool.fetchrow(f"{_SELECT_USER} WHERE u.id = $1", id)
        elif username:
            if len(username) > MAX_USERNAME or _CONTROL.search(username) or not _plausible_key(username_key(username)):
                return None
            row = await self.pool.fetchrow(f"{_SELECT_USER} WHERE u.username_key = $1", username_key(username))
        else:
            return None
        return _user(row) if row is not None else None

    async def list_users(self, after: str = "", limit: int = MAX_PAGE, query: str = "") -> UserPage:
        """Users by username (case-insensitively), after `after`; `query`: only those whose
        username, email or display name contains it (case-insensitively)."""
        limit = limit if 0 < limit <= MAX_PAGE else MAX_PAGE
        if _CONTROL.search(after) or _CONTROL.search(query) or len(query) > MAX_USERNAME:
            raise InvalidArgument("the cursor or query contains control characters or is too long")
        rows = await self.pool.fetch(
            f"{_SELECT_USER} WHERE u.username_key COLLATE \"C\" > $1"
            " AND ($2 = '' OR strpos(u.username_key, $2) > 0 OR strpos(lower(u.email), $2) > 0"
            "      OR strpos(lower(u.display_name), $2) > 0)"
            " ORDER BY u.username_key COLLATE \"C\" LIMIT $3",
            username_key(after), username_key(query), limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return UserPage([_user(r) for r in rows], next=rows[-1]["username_key"] if more else "")

    async def _locked_user(self, conn: asyncpg.Connection, user_id: str) -> asyncpg.Record:
        row = None if not is_plausible_id(user_id) else await conn.fetchrow(
            f"{_SELECT_USER} WHERE u.id = $1 FOR UPDATE OF u", user_id)
        if row is None:
            raise NotFound("no such user")
        return row

    async def update_user(self, user_id: str, update: UserUpdate) -> UserRecord:
        values = {
            "username": None if update.username is None else check_username(update.username),
            "email": None if update.email is None else check_email(update.email),
            "display_name": None if update.display_name is None else _check_text("display name", update.display_name),
            "given_name": None if update.given_name is None else _check_text("given name", update.given_name),
            "family_name": None if update.family_name is None else _check_text("family name", update.family_name),
            "email_verified": update.email_verified,
            "locale": None if update.locale is None else _check_locale(update.locale),
            "zoneinfo": None if update.zoneinfo is None else _check_zoneinfo(update.zoneinfo),
            "active": update.active,
        }
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                current = await self._locked_user(conn, user_id)
                merged = {name: current[name] if value is None else value for name, value in values.items()}
                await conn.execute(
                    f"UPDATE users SET username=$2, username_key=$3, username_digest={_DIGEST_OF_3}, email=$4,"
                    " display_name=$5, given_name=$6,"
                    " family_name=$7, email_verified=$8, locale=$9, zoneinfo=$10, active=$11, updated_at=now()"
                    " WHERE id=$1",
                    user_id, merged["username"], username_key(merged["username"]), merged["email"],
                    merged["display_name"], merged["given_name"], merged["family_name"], merged["email_verified"],
                    merged["locale"], merged["zoneinfo"], merged["active"])
                cut_off = None
                if current["active"] != merged["active"]:
                    # Disabling revokes what the user holds. Enabling revokes too: tokens
                    # minted while the user was disabled (a sign-in already past its check,
                    # a refresh racing the change) must not come back to life with it.
                    reason = "user disabled" if current["active"] else "user enabled"
                    cut_off = await record_cut_off(conn, subject_cut_off, user_id, reason)
                row = await conn.fetchrow(f"{_SELECT_USER} WHERE u.id = $1", user_id)
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("a user with that username exists already") from None
        log.info("user updated", extra={"user_id": user_id})
        self._changed(user_id, "updated")
        publish_cut_off(self.events, cut_off)
        return _user(row)

    async def delete_user(self, user_id: str) -> bool:
        if not is_plausible_id(user_id):
            return False
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute("DELETE FROM users WHERE id = $1", user_id)
            deleted = status.endswith(" 1")
            # JWTs outlive the row: the cut-off lets every checker refuse them.
            cut_off = await record_cut_off(conn, subject_cut_off, user_id, "user deleted") if deleted else None
        if deleted:
            log.info("user deleted", extra={"user_id": user_id})
            self._changed(user_id, "deleted")
            publish_cut_off(self.events, cut_off)
        return deleted

    async def set_user_password(self, user_id: str, password: str) -> UserRecord:
        _check_password(self.passwords, password)
        if not is_plausible_id(user_id):
            raise NotFound("no such user")
        password_hash = await self.passwords.hash(password)  # before the transaction: no row held meanwhile
        async with self.pool.acquire() as conn, conn.transaction():
            await self._locked_user(conn, user_id)
            await conn.execute("UPDATE users SET password_hash=$2, password_changed_at=now(), updated_at=now()"
                               " WHERE id=$1", user_id, password_hash)
            # A new password ends every session the old one opened (a stolen one included).
            cut_off = await record_cut_off(conn, subject_cut_off, user_id, "password changed")
            row = await conn.fetchrow(f"{_SELECT_USER} WHERE u.id = $1", user_id)
        log.info("user password set", extra={"user_id": user_id})
        self._changed(user_id, "password_set")
        publish_cut_off(self.events, cut_off)
        return _user(row)

    async def change_user_roles(self, user_id: str, add: list[str], remove: list[str]) -> UserRecord:
        add = check_roles(add)
        async with self.pool.acquire() as conn, conn.transaction():
            current = await self._locked_user(conn, user_id)
            roles = [r for r in dict.fromkeys([*current["roles"], *add]) if r not in set(remove)]
            if len(roles) > MAX_ROLES:
                raise InvalidArgument(f"at most {MAX_ROLES} roles")
            await conn.execute("UPDATE users SET roles=$2, updated_at=now() WHERE id=$1", user_id, roles)
            row = await conn.fetchrow(f"{_SELECT_USER} WHERE u.id = $1", user_id)
        log.info("user roles changed", extra={"user_id": user_id})
        self._changed(user_id, "roles_changed")
        return _user(row)

    async def unlock_user(self, user_id: str) -> UserRecord:
        """Forget the user's failures, back-offs and locks (every address); each lock
        still in force ends now (user.lock_ended, reason unlocked, the operator's actor).
        The unlock itself is a change of the user (registry.user, "unlocked"), audited
        with the operator even when only a back-off or failures were forgotten."""
        async with self.pool.acquire() as conn, conn.transaction():
            # Not FOR UPDATE: a sign-in holds the counter rows and then waits for the user's
            # row (FOR SHARE); holding the user's row while waiting for the counters would
            # be a deadlock with it.
            current = None if not is_plausible_id(user_id) else await conn.fetchrow(
                f"{_SELECT_USER} WHERE u.id = $1", user_id)
            if current is None:
                raise NotFound("no such user")
            key = current["username_key"]
            cleared = await conn.fetch(
                "DELETE FROM login_failures WHERE username_digest = $1"
                " RETURNING address, locked_until IS NOT NULL AND locked_until > now() AS in_force,"
                " locked_until IS NOT NULL AS locked", username_digest(key))
            row = await conn.fetchrow(f"{_SELECT_USER} WHERE u.id = $1", user_id)
        user = _user(row)
        for r in cleared:
            if r["locked"]:
                # A lock already past its end (the sweeper not there yet) ended by itself.
                self._lock_event(_LockChange(r["address"], ended=True), user, username_digest(key),
                                 reason=REASON_UNLOCKED if r["in_force"] else REASON_EXPIRED)
        log.info("user unlocked", extra={"user_id": user_id})
        self._changed(user_id, "unlocked")
        return user

    # --- sign-ins (api.UserAuthenticator) ---------------------------------------------------------

    async def authenticate_users(self, sign_ins: list[SignIn]) -> list[SignInOutcome]:
        # As many as there is room for are checked; the rest answer "unavailable" each. (Refusing
        # the whole batch would refuse every sign-in of a burst as soon as one coalesced batch
        # is larger than the room: a queue setting below the callers' batch size, or several
        # grant replicas, and no sign-in would get through at all.)
        room = self._max_sign_ins - self._sign_ins
        if room <= 0:
            raise Overloaded(f"sign-ins: {self._sign_ins} waiting or running")
        admitted = sign_ins[:room]
        self._sign_ins += len(admitted)
        try:
            outcomes: list[SignInOutcome] = list(await asyncio.gather(*(self._authenticate(s) for s in admitted)))
        finally:
            self._sign_ins -= len(admitted)
        return outcomes + [ItemError(ITEM_UNAVAILABLE, "too many sign-ins waiting: try again later")
                           for _ in sign_ins[len(admitted):]]

    async def _authenticate(self, sign_in: SignIn) -> SignInOutcome:
        name = sign_in.username
        if not name or len(name) > MAX_USERNAME or _CONTROL.search(name):
            return Invalid()  # no user can have it: nothing to count, nothing to check
        key = username_key(name)
        if not _plausible_key(key):
            return Invalid()
        address = _address(sign_in.client_address)
        async with self._slots:
            try:
                outcome, user, changes, rehash_from = await self._check_and_count(key, address, sign_in.password)
            except asyncpg.LockNotAvailableError:
                # This username's counters stayed busy past LOCK_WAIT (a burst of guesses for it):
                # this item is unavailable, unchecked and uncounted; its neighbours are not.
                return ItemError(ITEM_UNAVAILABLE, "the sign-in could not be checked in time: try again later")
            except UNAVAILABLE_ERRORS:
                raise  # the database away: the whole call is UNAVAILABLE, for the caller to retry later
            except asyncpg.PostgresError as exc:
                # Refused as data (it should not be): this item fails, its neighbours do not.
                log.warning("sign-in check refused by Postgres", extra={"error": type(exc).__name__,
                                                                       "sqlstate": exc.sqlstate})
                return ItemError(ITEM_INTERNAL, "the sign-in could not be checked")
        for change in changes:
            self._lock_event(change, user, username_digest(key), sign_in.request_id)
        if rehash_from is not None and user is not None:
            await self._rehash(user.id, rehash_from, sign_in.password)
        return outcome

    async def _check_and_count(self, key: str, address: str, password: str):
        login = self.login
        changes: list[_LockChange] = []
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
            digest = username_digest(key)
            rows = await conn.fetch(_LOCK_COUNTERS, digest, address)
            now: datetime = rows[0]["now"]
            counters = {r["address"]: _Counter(r["address"], r["failures"], r["last_failure_at"],
                                               r["blocked_until"], r["locked_until"]) for r in rows}
            decay = now - timedelta(seconds=login.lock_seconds)
            for c in counters.values():
                if c.locked_until is not None and c.locked_until <= now:
                    # Ended, and the sweeper has not reported it yet: report it here, once
                    # (the sweeper's UPDATE waits for this row and then finds it cleared).
                    changes.append(_LockChange(c.address, ended=True))
                    c.locked_until = None
                if c.last_failure_at is not None and c.last_failure_at <= decay \
                        and (c.blocked_until is None or c.blocked_until <= decay):
                    # Old failures are forgotten: a lock period after the last one and its back-off.
                    c.failures, c.last_failure_at, c.blocked_until = 0, None, None
            in_force = [until for c in counters.values() for until in (c.blocked_until, c.locked_until)
                        if until is not None and until > now]
            row = await conn.fetchrow(_SIGN_IN_USER, key)
            # The row is held from here to the commit: a change that this check did not see
            # takes its cut-off time after the commit, so after this instant, with which the
            # sign-in's tokens are stamped (UserRecord.verified_at_ms): the cut-off covers them.
            verified_at_ms = int(time.time() * 1000)
            user = dataclasses.replace(_user(row), verified_at_ms=verified_at_ms) if row is not None else None
            if in_force:
                await self._save(conn, digest, counters.values())
                return Locked(locked_until=ts(max(in_force)) + (1 if max(in_force).microsecond else 0)), \
                    user, changes, None
            password_hash = row["password_hash"] if row is not None and row["active"] else None
            ok = await self.passwords.verify(password_hash, password)
            if ok:
                cleared = counters[address]
                cleared.failures, cleared.last_failure_at, cleared.blocked_until = 0, None, None
                await self._save(conn, digest, counters.values())
                rehash_from = password_hash if self.passwords.needs_rehash(password_hash) else None
                return user, user, changes, rehash_from
            for c in counters.values():
                c.failures += 1
                c.last_failure_at = now
                threshold = login.user_lock_after if c.whole_username else login.lock_after
                if c.failures >= threshold:
                    c.locked_until = now + timedelta(seconds=login.lock_seconds)
                    c.blocked_until = None
                    c.failures = 0  # the lock is the consequence; counting starts again after it
                    changes.append(_LockChange(c.address, locked_until=ts(c.locked_until),
                                               failures=threshold))
                elif c.failures >= (backoff_after := login.user_backoff_after if c.whole_username
                                    else login.backoff_after):
                    delay = min(login.backoff_seconds * 2 ** (c.failures - backoff_after), login.lock_seconds)
                    c.blocked_until = now + timedelta(seconds=delay)
            await self._save(conn, digest, counters.values())
        return Invalid(), user, changes, None

    @staticmethod
    async def _save(conn: asyncpg.Connection, digest: str, counters) -> None:
        await conn.executemany(_SAVE_COUNTER, [(digest, c.address, c.failures, c.last_failure_at, c.blocked_until,
                                                c.locked_until) for c in counters])

    async def _rehash(self, user_id: str, old_hash: str, password: str) -> None:
        """Replace a hash made with older parameters (compare-and-set: a password set
        meanwhile wins). Not a password change: no cut-off, password_changed_at kept."""
        try:
            new_hash = await self.passwords.rehash(password)
            await self.pool.execute("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                                    user_id, old_hash, new_hash)
        except Overloaded:
            return  # next time: a busy pool is for sign-ins, not upgrades
        except Exception as exc:
            log.warning("password rehash failed", extra={"user_id": user_id, "error": type(exc).__name__})

    # --- housekeeping -----------------------------------------------------------------------------

    async def sweep_ended_locks(self) -> int:
        """Report every lock that ended by time (user.lock_ended, reason expired), once:
        clearing it and reading it are one UPDATE ... RETURNING, so two replicas' sweepers
        (or a sign-in clearing it first) cannot both report one lock."""
        rows = await self.pool.fetch(
            "WITH ended AS (UPDATE login_failures SET locked_until = NULL"
            "   WHERE locked_until IS NOT NULL AND locked_until <= now() RETURNING username_digest, address)"
            " SELECT e.username_digest, e.address, u.id, u.username FROM ended e"
            " LEFT JOIN users u ON u.username_digest = e.username_digest")
        for r in rows:
            user = UserRecord(id=r["id"], username=r["username"], email="", display_name="", active=True,
                              roles=()) if r["id"] is not None else None
            self._lock_event(_LockChange(r["address"], ended=True), user, r["username_digest"])
        return len(rows)

    async def purge_stale_counters(self) -> int:
        """Delete counter rows with nothing left to remember: no lock in force, and no
        failure or back-off end within the decay period."""
        status = await self.pool.execute(
            "DELETE FROM login_failures WHERE locked_until IS NULL"
            " AND (blocked_until IS NULL OR blocked_until <= now() - make_interval(secs => $1))"
            " AND (last_failure_at IS NULL OR last_failure_at <= now() - make_interval(secs => $1))",
            float(self.login.lock_seconds))
        return int(status.rsplit(" ", 1)[-1])


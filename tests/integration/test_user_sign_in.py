"""Sign-in checks (UserRepository.authenticate_users) against the test Postgres, each
test with a repository of its own and small thresholds: right and wrong passwords,
back-off, locks per address and per username, their end, concurrency, re-hashing,
and that no password or hash reaches a log record or an event."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

import asyncpg
import pytest

from inbound.events.v1 import events_pb2
from inboundlib import db
from inboundlib.batching import Overloaded
from inboundlib.events import USER_CHANGED, USER_LOCK_ENDED, USER_LOCKED
from inboundlib.passwords import Passwords, PasswordSettings
from services.client_registry.api import (
    ITEM_UNAVAILABLE,
    Invalid,
    InvalidArgument,
    ItemError,
    Locked,
    SignIn,
    UserRecord,
    UserSpec,
    UserUpdate,
)
from services.client_registry.users import (
    LoginSettings,
    UserRepository,
    unknown_username,
)
from tests.support import counter_key, eventually

PASSWORD = "correct horse battery"
WRONG = "wrong horse battery"


class RecordingBus:
    """Stands in for the EventBus to count what the repository publishes."""

    def __init__(self):
        self.published: list[tuple[str, events_pb2.Event]] = []

    def publish(self, subject: str, event: events_pb2.Event, **_) -> str:
        self.published.append((subject, event))
        return event.event_id

    def of(self, subject: str) -> list[events_pb2.Event]:
        return [e for s, e in self.published if s == subject]


class CountingPasswords(Passwords):
    """Counts the hashes verified (the work a guess costs), whoever's."""

    def __init__(self, settings: PasswordSettings):
        super().__init__(settings)
        self.verified = 0

    def _verify(self, password_hash, password):
        self.verified += 1
        return super()._verify(password_hash, password)


@pytest.fixture(scope="module")
def passwords():
    p = CountingPasswords(PasswordSettings(hash_workers=2, hash_queue=64))
    yield p
    p.shutdown()


@pytest.fixture
async def pool(stack):
    p = await db.create_pool(stack.database_url, min_size=1, max_size=14)
    yield p
    await p.close()


@pytest.fixture
def repository(pool, passwords):
    """`repository(lock_after=3, ...)`: a repository of the test's own over the test database."""
    def make(*, passwords=passwords, sign_in_slots=None, **login) -> tuple[UserRepository, RecordingBus]:
        bus = RecordingBus()
        settings = LoginSettings(**{"backoff_after": 100, "lock_after": 100, "user_backoff_after": 1000,
                                    "user_lock_after": 1000,
                                    "lock_seconds": 600, **login})
        return UserRepository(pool, bus, passwords, settings, sign_in_slots=sign_in_slots), bus
    return make


async def _user(repo: UserRepository, **spec) -> UserRecord:
    spec.setdefault("username", f"signin-{uuid.uuid4().hex[:10]}")
    spec.setdefault("password", PASSWORD)
    return await repo.create_user(UserSpec(**spec))


async def _sign_in(repo, username, password, address="192.0.2.1"):
    [outcome] = await repo.authenticate_users([SignIn(username=username, password=password,
                                                      client_address=address)])
    return outcome


async def test_the_right_password_answers_the_user_and_anything_else_invalid(repository):
    repo, _ = repository()
    user = await _user(repo)
    assert await _sign_in(repo, user.username.upper(), PASSWORD) == await repo.get_user(id=user.id)
    assert await _sign_in(repo, user.username, WRONG) == Invalid()
    assert await _sign_in(repo, f"nobody-{uuid.uuid4().hex}", PASSWORD) == Invalid()
    no_password = await _user(repo, password="")
    assert await _sign_in(repo, no_password.username, "") == Invalid()
    assert await _sign_in(repo, no_password.username, PASSWORD) == Invalid()


async def test_a_disabled_user_is_invalid_with_the_right_password(repository):
    repo, _ = repository()
    user = await _user(repo)
    await repo.update_user(user.id, UserUpdate(active=False))
    assert await _sign_in(repo, user.username, PASSWORD) == Invalid()
    await repo.update_user(user.id, UserUpdate(active=True))
    assert isinstance(await _sign_in(repo, user.username, PASSWORD), UserRecord)


async def test_unknown_and_disabled_users_cost_a_hash_like_a_real_one(repository, passwords):
    """Same work, so the same time (measured over many tries in the bench)."""
    repo, _ = repository()
    user = await _user(repo)
    disabled = await _user(repo, active=False)
    for name in (user.username, f"nobody-{uuid.uuid4().hex}", disabled.username):
        before = passwords.verified
        assert await _sign_in(repo, name, WRONG) == Invalid()
        assert passwords.verified == before + 1, name


async def test_after_the_back_off_count_even_the_right_password_waits(repository, passwords):
    repo, _ = repository(backoff_after=2, backoff_seconds=60)
    user = await _user(repo)
    assert await _sign_in(repo, user.username, WRONG) == Invalid()
    assert await _sign_in(repo, user.username, WRONG) == Invalid()
    before = passwords.verified
    outcome = await _sign_in(repo, user.username, PASSWORD)
    assert isinstance(outcome, Locked) and outcome.locked_until > 0
    assert passwords.verified == before  # refused unchecked
    assert isinstance(await _sign_in(repo, user.username, PASSWORD, address="198.51.100.7"), UserRecord)


async def test_guesses_from_many_addresses_back_the_whole_username_off(repository, passwords):
    """Per username, every address together: after `user_backoff_after` failures
    even the right password from a fresh address waits, unchecked."""
    repo, _ = repository(user_backoff_after=3, backoff_seconds=60)
    user = await _user(repo)
    for n in range(3):
        assert await _sign_in(repo, user.username, WRONG, address=f"203.0.113.{n + 1}") == Invalid()
    before = passwords.verified
    outcome = await _sign_in(repo, user.username, PASSWORD, address="198.51.100.99")
    assert isinstance(outcome, Locked) and outcome.locked_until > 0
    assert passwords.verified == before


async def test_a_guesser_who_waits_out_each_back_off_still_reaches_the_username_lock(repository, pool):
    """The username's back-off doubles up to the lock's length, and failures are forgotten
    `lock_seconds` after the last: measured from the failure alone, a back-off as long as
    that would forget them all the moment it ended, and the lock (audited) would never
    come. Failures are remembered from the end of their back-off."""
    repo, bus = repository(user_backoff_after=2, user_lock_after=4, backoff_seconds=60, lock_seconds=60)
    user = await _user(repo)
    key = counter_key(user.username)
    for n in range(4):
        assert await _sign_in(repo, user.username, WRONG, address=f"203.0.113.{n + 1}") == Invalid(), n
        # The guesser waits the back-off out (60 s, as long as a lock): as if that time passed.
        await pool.execute("UPDATE login_failures SET last_failure_at = last_failure_at - (blocked_until - now())"
                           " - interval '1 second', blocked_until = now() - interval '1 second'"
                           " WHERE username_digest = $1 AND blocked_until > now()", key)
        await repo.purge_stale_counters()  # nor does the janitor forget them earlier
    [locked] = bus.of(USER_LOCKED)
    assert (locked.user_locked.user_id, locked.user_locked.client_address) == (user.id, "")
    assert isinstance(await _sign_in(repo, user.username, PASSWORD, address="198.51.100.99"), Locked)


async def test_the_back_off_doubles_with_each_further_failure(repository, pool):
    repo, _ = repository(backoff_after=1, backoff_seconds=10)
    user = await _user(repo)
    delays = []
    for _ in range(3):
        assert await _sign_in(repo, user.username, WRONG) == Invalid()
        delays.append(await pool.fetchval(
            "SELECT extract(epoch FROM blocked_until - last_failure_at)::int FROM login_failures"
            " WHERE username_digest = $1 AND address = '192.0.2.1'", counter_key(user.username)))
        await pool.execute("UPDATE login_failures SET blocked_until = NULL WHERE username_digest = $1",
                           counter_key(user.username))  # the back-off over, as if waited for
    assert delays == [10, 20, 40]


async def test_after_n_failures_the_user_is_locked_even_with_the_right_password(repository):
    repo, bus = repository(lock_after=3)
    user = await _user(repo)
    for _ in range(3):
        assert await _sign_in(repo, user.username, WRONG) == Invalid()
    assert isinstance(await _sign_in(repo, user.username, PASSWORD), Locked)
    [locked] = bus.of(USER_LOCKED)
    assert locked.user_locked.user_id == user.id and locked.user_locked.client_address == "192.0.2.1"
    assert locked.user_locked.failures == 3 and locked.user_locked.locked_until > 0
    assert (await repo.get_user(id=user.id)).locked_until == locked.user_locked.locked_until


async def test_an_unknown_username_locks_like_a_real_one_and_is_fingerprinted(repository):
    repo, bus = repository(lock_after=2)
    name = f"Ghost-{uuid.uuid4().hex}"
    for _ in range(2):
        assert await _sign_in(repo, name, WRONG) == Invalid()
    assert isinstance(await _sign_in(repo, name.lower(), WRONG), Locked)
    [locked] = bus.of(USER_LOCKED)
    assert locked.user_locked.user_id == ""
    assert locked.user_locked.username == unknown_username(counter_key(name)) and name.lower() not in str(locked)


async def test_a_lock_on_one_address_leaves_others_but_the_username_lock_holds_everywhere(repository):
    repo, bus = repository(lock_after=3, user_lock_after=5)
    user = await _user(repo)
    for _ in range(3):
        await _sign_in(repo, user.username, WRONG, address="192.0.2.10")
    assert isinstance(await _sign_in(repo, user.username, PASSWORD, address="192.0.2.10"), Locked)
    # Another address is not locked; its success does not clear the username's count.
    assert isinstance(await _sign_in(repo, user.username, PASSWORD, address="192.0.2.11"), UserRecord)
    for address in ("192.0.2.12", "192.0.2.13"):
        assert await _sign_in(repo, user.username, WRONG, address=address) == Invalid()
    assert isinstance(await _sign_in(repo, user.username, PASSWORD, address="192.0.2.14"), Locked)
    assert [e.user_locked.client_address for e in bus.of(USER_LOCKED)] == ["192.0.2.10", ""]


async def test_concurrent_guesses_are_serialized_and_cannot_pass_the_lock(repository, passwords):
    repo, bus = repository(lock_after=3, sign_in_slots=10)
    user = await _user(repo)
    before = passwords.verified
    outcomes = await repo.authenticate_users(
        [SignIn(username=user.username, password=f"{WRONG}{i}", client_address="192.0.2.20") for i in range(10)])
    assert passwords.verified - before == 3
    assert sorted(type(o).__name__ for o in outcomes) == ["Invalid"] * 3 + ["Locked"] * 7
    assert len(bus.of(USER_LOCKED)) == 1


async def test_old_failures_are_forgotten(repository, pool):
    repo, _ = repository(lock_after=3, lock_seconds=60)
    user = await _user(repo)
    for _ in range(2):
        await _sign_in(repo, user.username, WRONG)
    await pool.execute("UPDATE login_failures SET last_failure_at = now() - interval '61 seconds'"
                       " WHERE username_digest = $1", counter_key(user.username))
    for _ in range(2):
        assert await _sign_in(repo, user.username, WRONG) == Invalid()
    assert isinstance(await _sign_in(repo, user.username, PASSWORD), UserRecord)


async def test_a_lock_ends_by_itself_and_its_end_is_reported_once(repository, pool):
    repo, bus = repository(lock_after=2, lock_seconds=1)
    other, other_bus = repository(lock_after=2, lock_seconds=1)  # a second replica's sweeper
    user = await _user(repo)
    for _ in range(2):
        await _sign_in(repo, user.username, WRONG)
    assert isinstance(await _sign_in(repo, user.username, PASSWORD), Locked)

    async def ended():
        await asyncio.gather(repo.sweep_ended_locks(), other.sweep_ended_locks())
        return [e for e in bus.of(USER_LOCK_ENDED) + other_bus.of(USER_LOCK_ENDED)
                if e.user_lock_ended.user_id == user.id]

    [end] = await eventually(ended, until=lambda events: events, message="the lock's end reported")
    assert end.user_lock_ended.reason == "expired" and end.user_lock_ended.client_address == "192.0.2.1"
    assert isinstance(await _sign_in(repo, user.username, PASSWORD), UserRecord)
    await asyncio.gather(repo.sweep_ended_locks(), other.sweep_ended_locks())
    assert len(await ended()) == 1


async def test_an_operator_unlocks_a_user(repository):
    repo, bus = repository(lock_after=2)
    user = await _user(repo)
    for _ in range(2):
        await _sign_in(repo, user.username, WRONG)
    assert isinstance(await _sign_in(repo, user.username, PASSWORD), Locked)
    assert (await repo.unlock_user(user.id)).locked_until == 0
    [end] = bus.of(USER_LOCK_ENDED)
    assert end.user_lock_ended.reason == "unlocked" and end.user_lock_ended.user_id == user.id
    assert isinstance(await _sign_in(repo, user.username, PASSWORD), UserRecord)


async def test_an_operators_unlock_of_a_back_off_alone_is_audited_too(repository):
    """No lock to end (so no user.lock_ended), but the operator still lifted a back-off
    in force and forgot the failures: the audit trail says who did (registry.user)."""
    repo, bus = repository(backoff_after=1, backoff_seconds=600)
    user = await _user(repo)
    assert await _sign_in(repo, user.username, WRONG) == Invalid()
    assert isinstance(await _sign_in(repo, user.username, PASSWORD), Locked)  # the back-off
    await repo.unlock_user(user.id)
    assert not bus.of(USER_LOCK_ENDED)
    assert [(e.registry_changed.id, e.registry_changed.change) for e in bus.of(USER_CHANGED)
            if e.registry_changed.change != "created"] == [(user.id, "unlocked")]
    assert isinstance(await _sign_in(repo, user.username, PASSWORD), UserRecord)


async def test_a_hash_with_old_parameters_is_replaced_at_sign_in(repository, pool):
    repo, _ = repository()
    user = await _user(repo)
    old_hash = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
    stronger = Passwords(PasswordSettings(memory_kib=12288, time_cost=3, hash_workers=1))
    try:
        upgraded, bus = repository(passwords=stronger)
        assert isinstance(await _sign_in(upgraded, user.username, PASSWORD), UserRecord)
        new_hash = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
        assert old_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert new_hash.startswith("$argon2id$v=19$m=12288,t=3,p=1$")
        assert isinstance(await _sign_in(upgraded, user.username, PASSWORD), UserRecord)
        assert (await repo.get_user(id=user.id)).password_changed_at == user.password_changed_at
        assert not bus.published  # not a password change: nothing revoked
    finally:
        stronger.shutdown()


class GatedPasswords(CountingPasswords):
    """Verifies only once `gate` is set (a hash that takes as long as the test wants)."""

    def __init__(self, settings: PasswordSettings):
        super().__init__(settings)
        self.gate = threading.Event()

    def _verify(self, password_hash, password):
        self.gate.wait(30)
        return super()._verify(password_hash, password)


async def test_beyond_the_queue_sign_ins_are_refused_as_unavailable(repository):
    """Room for slots + queue sign-ins (1 + 2): a batch larger than the room has the room's
    worth checked and the rest answered "unavailable", each; with no room left at all, the
    whole call is refused. (Refusing the whole larger batch would refuse every sign-in of
    a burst whenever a caller's coalesced batch outgrew the room.)"""
    small = GatedPasswords(PasswordSettings(hash_workers=1, hash_queue=2))
    try:
        repo, _ = repository(passwords=small, sign_in_slots=1)
        user = await _user(repo)
        small.gate.set()
        outcomes = await repo.authenticate_users([SignIn(username=user.username, password=PASSWORD)] * 4)
        assert [type(o).__name__ for o in outcomes] == ["UserRecord"] * 3 + ["ItemError"]
        assert outcomes[3] == ItemError(ITEM_UNAVAILABLE, outcomes[3].message) and small.verified == 3

        small.gate.clear()
        busy = asyncio.create_task(repo.authenticate_users([SignIn(username=user.username, password=PASSWORD)] * 3))
        await eventually(lambda: repo._sign_ins == 3, message="the room taken")
        with pytest.raises(Overloaded):
            await repo.authenticate_users([SignIn(username=user.username, password=PASSWORD)])
        small.gate.set()
        assert all(isinstance(o, UserRecord) for o in await busy)
    finally:
        small.gate.set()
        small.shutdown()


async def test_a_username_whose_counters_stay_busy_fails_alone(repository, pool, monkeypatch):
    """Guesses for one username wait for each other on its counter rows, at most LOCK_WAIT:
    past it, that sign-in answers "unavailable" by itself. Its batch neighbours (other
    users' sign-ins, coalesced into the same call) are answered as usual, not refused with it."""
    from services.client_registry import users

    monkeypatch.setattr(users, "LOCK_WAIT", "50ms")
    repo, _ = repository()
    hot, other = await _user(repo), await _user(repo)
    assert await _sign_in(repo, hot.username, WRONG) == Invalid()  # its counter rows exist
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM login_failures WHERE username_digest = $1 AND address = '' FOR UPDATE",
                           counter_key(hot.username))  # another replica's sign-in, still hashing
        outcomes = await repo.authenticate_users([SignIn(username=hot.username, password=PASSWORD),
                                                  SignIn(username=other.username, password=PASSWORD)])
    assert outcomes[0] == ItemError(ITEM_UNAVAILABLE, outcomes[0].message)
    assert isinstance(outcomes[1], UserRecord) and outcomes[1].id == other.id


async def test_no_password_or_hash_in_any_log_record_or_event(repository, pool, caplog):
    caplog.set_level(logging.DEBUG)
    repo, bus = repository(lock_after=2, user_lock_after=3)
    secret, other_secret = f"pw-{uuid.uuid4().hex}", f"pw2-{uuid.uuid4().hex}"
    user = await _user(repo, password=secret)
    await _sign_in(repo, user.username, secret)
    for _ in range(3):
        await _sign_in(repo, user.username, other_secret)
    await repo.set_user_password(user.id, other_secret)
    await repo.unlock_user(user.id)
    await repo.update_user(user.id, UserUpdate(active=False))
    stored_hash = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
    assert bus.of(USER_LOCKED) and bus.of(USER_LOCK_ENDED)
    texts = [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    texts += [str(e) + e.SerializeToString().decode("latin-1") for _, e in bus.published]
    for text in texts:
        for forbidden in (secret, other_secret, stored_hash, "$argon2"):
            assert forbidden not in text


async def test_a_lock_and_an_operators_unlock_reach_the_audit_log_over_nats(stack, registry, pool, passwords):
    """Real NATS with client_registry's permissions (user.locked is one of its subjects), the
    audit consumer storing both events, and the unlock naming the operator who did it."""
    from inboundlib.events import EventBus

    bus = EventBus(stack.nats_settings("client_registry"), "client_registry")
    await bus.start()
    try:
        repo = UserRepository(pool, bus, passwords, LoginSettings(lock_after=2, backoff_after=100))
        user = await _user(repo)
        for _ in range(2):
            await _sign_in(repo, user.username, WRONG)
        await bus.flush(10)
        await registry.unlock_user(user.id)  # through the stack's registry, as the operator
        conn = await asyncpg.connect(stack.database_url)
        try:
            rows = await eventually(lambda: conn.fetch(
                "SELECT type, actor_kind, actor_id, detail->>'reason' AS reason FROM audit_log"
                " WHERE detail->>'user_id' = $1 ORDER BY occurred_at", user.id),
                until=lambda rows: len(rows) == 2, message="the lock and its end in the audit log")
        finally:
            await conn.close()
        assert [r["type"] for r in rows] == ["user_locked", "user_lock_ended"]
        assert (rows[1]["actor_kind"], rows[1]["actor_id"], rows[1]["reason"]) == ("operator", "dev", "unlocked")
    finally:
        await bus.close()


async def test_counters_with_nothing_left_to_remember_are_purged(repository, pool):
    repo, _ = repository(lock_after=2, lock_seconds=60)
    stale, locked = await _user(repo), await _user(repo)
    await _sign_in(repo, stale.username, WRONG)
    for _ in range(2):
        await _sign_in(repo, locked.username, WRONG)
    keys = [counter_key(stale.username), counter_key(locked.username)]
    await pool.execute("UPDATE login_failures SET last_failure_at = now() - interval '61 seconds'"
                       " WHERE username_digest = ANY($1)", keys)
    assert await repo.purge_stale_counters() >= 2
    left = await pool.fetch("SELECT username_digest, address FROM login_failures WHERE username_digest = ANY($1)", keys)
    # The lock stays until it ends; the other rows (stale failures, the locked user's other row) go.
    assert [(r["username_digest"], r["address"]) for r in left] == [(keys[1], "192.0.2.1")]


async def test_a_username_that_normalises_too_long_is_refused_and_fails_no_neighbour(repository):
    repo, _ = repository()
    user = await _user(repo)
    swollen = "\ufdfa" * 256  # 256 characters, each 18 once NFKC-normalised: past an index entry's size
    with pytest.raises(InvalidArgument, match="normalised"):
        await repo.create_user(UserSpec(username=swollen))
    outcomes = await repo.authenticate_users([SignIn(username=swollen, password=PASSWORD),
                                              SignIn(username=user.username, password=PASSWORD)])
    assert outcomes[0] == Invalid() and isinstance(outcomes[1], UserRecord)
    assert await repo.get_user(username=swollen) is None


async def test_a_sign_in_waits_for_a_change_in_progress_and_then_sees_it(repository, pool):
    """A disable (or password change, or delete) takes its cut-off time while it holds the
    user's row and commits after: a sign-in reading the row in between would verify the old
    state with a time after the cut-off, and its tokens would escape it. The sign-in waits
    for the row instead (FOR SHARE), and sees the change."""
    repo, _ = repository()
    user = await _user(repo)
    async with pool.acquire() as conn:
        change = conn.transaction()
        await change.start()
        try:
            # What update_user does: the row held, the cut-off time taken, the change made.
            await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user.id)
            await conn.execute("UPDATE users SET active = false WHERE id = $1", user.id)
            sign_in = asyncio.create_task(_sign_in(repo, user.username, PASSWORD))

            async def waiting_for_the_row() -> bool:
                return sign_in.done() or await pool.fetchval(
                    "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%FOR SHARE OF u%'")

            await eventually(waiting_for_the_row, until=bool, message="the sign-in waiting for the user's row")
            await change.commit()
        except BaseException:
            await change.rollback()
            raise
    assert await sign_in == Invalid()  # it saw the user disabled


async def test_a_sign_in_answers_when_it_checked_the_password(repository):
    repo, _ = repository()
    user = await _user(repo)
    before = int(time.time() * 1000)
    outcome = await _sign_in(repo, user.username, PASSWORD)
    after = int(time.time() * 1000)
    assert isinstance(outcome, UserRecord) and before <= outcome.verified_at_ms <= after


async def test_counters_keep_no_username_in_clear(repository, pool):
    """A password typed into the username field must not sit in login_failures: rows are
    keyed by a digest, the same one Postgres computes for a user's own key."""
    repo, _ = repository()
    typed = f"Pässwörd-typed-as-username-{uuid.uuid4().hex[:8]}"
    assert await _sign_in(repo, typed, WRONG) == Invalid()
    rows = await pool.fetch("SELECT f::text AS row, username_digest FROM login_failures f"
                            " WHERE username_digest = $1", counter_key(typed))
    assert len(rows) == 2  # the username's row and its address's
    assert not any(typed.lower() in r["row"].lower() or "typed-as-username" in r["row"] for r in rows)
    user = await _user(repo, username=f"Ünïcode-{uuid.uuid4().hex[:8]}")
    assert await pool.fetchval("SELECT username_digest FROM users WHERE id = $1", user.id) \
        == counter_key(user.username)

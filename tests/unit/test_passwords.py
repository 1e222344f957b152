"""inboundlib.passwords: OWASP's argon2id minimum, the policy, the bounded pool."""
from __future__ import annotations

import asyncio
import threading

import pytest

from inboundlib.batching import Overloaded
from inboundlib.config import ConfigError, Env
from inboundlib.grpcx import is_unavailable
from inboundlib.passwords import OWASP_ARGON2ID_MINIMUMS, PasswordRejected, Passwords, PasswordSettings
from services.client_registry.api import SignIn
from services.client_registry.assembly import RegistryService


@pytest.mark.parametrize("memory,time_cost", OWASP_ARGON2ID_MINIMUMS)
def test_each_owasp_row_is_accepted(memory, time_cost):
    assert PasswordSettings(memory_kib=memory, time_cost=time_cost, parallelism=1).memory_kib == memory


@pytest.mark.parametrize("memory,time_cost,parallelism", [
    (19455, 2, 1), (19456, 1, 1), (7167, 5, 1), (47103, 1, 1), (9216, 3, 1), (65536, 2, 0), (1024, 10, 1)])
def test_parameters_below_owasps_minimum_are_refused(memory, time_cost, parallelism):
    with pytest.raises(ConfigError, match="OWASP"):
        PasswordSettings(memory_kib=memory, time_cost=time_cost, parallelism=parallelism)


def test_the_environment_cannot_lower_the_parameters_below_the_minimum():
    with pytest.raises(ConfigError):
        PasswordSettings.from_env(Env({"INBOUND_ARGON2_MEMORY_KIB": "4096", "INBOUND_ARGON2_TIME_COST": "2"}))
    settings = PasswordSettings.from_env(Env({"INBOUND_ARGON2_MEMORY_KIB": "12288", "INBOUND_ARGON2_TIME_COST": "3"}))
    assert (settings.memory_kib, settings.time_cost, settings.parallelism) == (12288, 3, 1)
    defaults = PasswordSettings.from_env(Env({}))
    assert (defaults.memory_kib, defaults.time_cost, defaults.min_length, defaults.max_length,
            defaults.hash_queue) == (19456, 2, 8, 1024, 64)
    assert 1 <= defaults.workers <= 4


@pytest.fixture(scope="module")
def passwords():
    p = Passwords(PasswordSettings(min_length=8, max_length=64, hash_workers=2, hash_queue=4))
    yield p
    p.shutdown()


async def test_hashes_are_argon2id_with_the_configured_parameters_and_verify(passwords):
    stored = await passwords.hash("correct horse")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await passwords.verify(stored, "correct horse")
    assert not await passwords.verify(stored, "correct horsE")
    assert not await passwords.verify(None, "correct horse")  # the dummy hash never matches
    assert not passwords.needs_rehash(stored)


async def test_the_policy_refuses_short_and_long_passwords_at_set(passwords):
    with pytest.raises(PasswordRejected, match="shorter"):
        await passwords.hash("seven77")
    with pytest.raises(PasswordRejected, match="longer"):
        await passwords.hash("x" * 65)
    await passwords.hash("x" * 64)


async def test_a_password_over_the_maximum_is_never_hashed_and_is_wrong(passwords, monkeypatch):
    stored = await passwords.hash("y" * 64)
    calls = []
    original = passwords.pool.submit
    monkeypatch.setattr(passwords.pool, "submit", lambda *a, **k: calls.append(a) or original(*a, **k))
    assert not await passwords.verify(stored, "y" * 64 + "y")
    assert calls == []
    assert await passwords.verify(stored, "y" * 64)
    assert len(calls) == 1


async def test_unicode_forms_of_one_password_are_one_password(passwords):
    stored = await passwords.hash("caf\u00e9 au lait")  # é precomposed
    assert await passwords.verify(stored, "cafe\u0301 au lait")  # e + combining acute


async def test_a_rehash_is_needed_when_parameters_change(passwords):
    stronger = Passwords(PasswordSettings(memory_kib=12288, time_cost=3, hash_workers=1))
    try:
        old = await passwords.hash("password one")
        assert stronger.needs_rehash(old)
        assert await stronger.verify(old, "password one")  # old hashes still verify
        new = await stronger.rehash("password one")
        assert new.startswith("$argon2id$v=19$m=12288,t=3,p=1$") and not stronger.needs_rehash(new)
    finally:
        stronger.shutdown()


async def test_hashing_runs_off_the_event_loop(passwords, monkeypatch):
    threads = set()
    hasher = passwords._hasher

    class Noting:
        def hash(self, *args):
            threads.add(threading.current_thread().name)
            return hasher.hash(*args)

    monkeypatch.setattr(passwords, "_hasher", Noting())
    await passwords.hash("off the loop")
    assert threads and threading.main_thread().name not in threads
    assert all(name.startswith("inbound-passwords") for name in threads)


async def test_beyond_the_queue_hashing_is_refused_as_unavailable():
    small = Passwords(PasswordSettings(hash_workers=1, hash_queue=1))
    try:
        results = await asyncio.gather(*(small.hash(f"password {i}") for i in range(3)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(refused) == 1 and isinstance(refused[0], Overloaded)
        assert is_unavailable(refused[0])  # grant services answer temporarily_unavailable
        assert Overloaded in RegistryService.unavailable_on  # the registry's servicers answer UNAVAILABLE
    finally:
        small.shutdown()


def test_a_sign_in_never_shows_its_password():
    assert "hunter2-secret" not in repr(SignIn(username="ada", password="hunter2-secret"))


def test_sign_ins_and_their_outcomes_cross_the_wire_unchanged():
    from services.client_registry import wire
    from services.client_registry.api import Invalid, ItemError, Locked, UserRecord

    sign_in = SignIn(username="Ada", password="pw", client_address="192.0.2.1", purpose="browser_sign_in",
                     request_id="r1")
    assert wire.sign_in_from_pb(wire.sign_in_to_pb(sign_in)) == sign_in
    user = UserRecord(id="u", username="Ada", email="a@example.org", display_name="Ada", active=True,
                      roles=("admin",), locale="en", zoneinfo="UTC", created_at=1, updated_at=2,
                      password_changed_at=2, locked_until=0)
    for outcome in (user, Invalid(), Locked(locked_until=123), ItemError("internal", "x")):
        assert wire.sign_in_outcome_from_pb(wire.sign_in_outcome_to_pb(outcome)) == outcome

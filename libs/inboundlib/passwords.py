"""Users' passwords: argon2id hashes (argon2-cffi), the password policy, and a
bounded worker pool that keeps hashing off the event loop.

Hashing is deliberately slow (tens of ms of CPU and ~19 MiB of memory a call):
on the event loop it would stall every request of the process, token requests
included. argon2-cffi releases the GIL while it computes, so a small pool of
threads (workers.WorkerPool) hashes in parallel while the loop serves others.
The pool bounds what waits for it: past INBOUND_PASSWORD_HASH_QUEUE waiting
calls, `Overloaded` (gRPC UNAVAILABLE, OAuth `temporarily_unavailable`) at once
rather than a queue that grows as fast as an attacker sends.

Parameters: the OWASP Password Storage Cheat Sheet's argon2id table (OWASP
Cheat Sheet Series, "Password Storage Cheat Sheet", section "Argon2id"): use
argon2id with one of these equivalent minimum configurations, each with a
degree of parallelism of 1:

    m=47104 (46 MiB), t=1, p=1
    m=19456 (19 MiB), t=2, p=1   <- the default here
    m=12288 (12 MiB), t=3, p=1
    m=9216  (9 MiB),  t=4, p=1
    m=7168  (7 MiB),  t=5, p=1

Settings below every row (less memory for their time cost, or less time for
their memory) are refused at start (ConfigError): a weaker hash is not a
setting an operator should be able to choose by accident. Hashes made with
other parameters still verify; `needs_rehash` tells the caller to replace them
on the next successful sign-in.

Policy (NIST SP 800-63B §3.1.1.2): at least INBOUND_PASSWORD_MIN_LENGTH and at
most INBOUND_PASSWORD_MAX_LENGTH characters, counted after Unicode NFKC
normalisation (which the verifier applies to every password it hashes or checks,
so the same characters typed differently are the same password). A password
longer than the maximum is never hashed: refused when set, and simply wrong at
sign-in (hashing megabytes on request would be a denial of service).
"""
from __future__ import annotations

import os
import secrets
import unicodedata
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from inboundlib.config import ConfigError, Env
from inboundlib.workers import WorkerPool

# (memory KiB, time cost) rows of the OWASP table above, each with parallelism 1.
OWASP_ARGON2ID_MINIMUMS: tuple[tuple[int, int], ...] = (
    (47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))

DEFAULT_MEMORY_KIB = 19456
DEFAULT_TIME_COST = 2
DEFAULT_PARALLELISM = 1
DEFAULT_MIN_LENGTH = 8
DEFAULT_MAX_LENGTH = 1024
DEFAULT_QUEUE = 64
# argon2's own limits, and a sanity bound on memory (4 GiB a hash).
MAX_MEMORY_KIB = 4 * 1024 * 1024
MAX_TIME_COST = 100
MAX_PARALLELISM = 16
HASH_LEN = 32
SALT_LEN = 16


class PasswordRejected(ValueError):
    """A password the policy refuses; the message says why (never the password)."""


def meets_owasp_minimum(memory_kib: int, time_cost: int, parallelism: int) -> bool:
    """At least one row of the OWASP argon2id table: as much memory and as many passes
    as that row (parallelism only splits the same memory over lanes: 1 or more)."""
    return parallelism >= 1 and any(memory_kib >= m and time_cost >= t for m, t in OWASP_ARGON2ID_MINIMUMS)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


@dataclass(frozen=True)
class PasswordSettings:
    memory_kib: int = DEFAULT_MEMORY_KIB
    time_cost: int = DEFAULT_TIME_COST
    parallelism: int = DEFAULT_PARALLELISM
    min_length: int = DEFAULT_MIN_LENGTH
    max_length: int = DEFAULT_MAX_LENGTH
    hash_workers: int = 0  # 0: default_workers()
    hash_queue: int = DEFAULT_QUEUE

    def __post_init__(self) -> None:
        if not meets_owasp_minimum(self.memory_kib, self.time_cost, self.parallelism):
            rows = ", ".join(f"m={m} t={t}" for m, t in OWASP_ARGON2ID_MINIMUMS)
            raise ConfigError(
                f"argon2id parameters m={self.memory_kib} KiB t={self.time_cost} p={self.parallelism} are below"
                f" OWASP's minimum (INBOUND_ARGON2_MEMORY_KIB, INBOUND_ARGON2_TIME_COST, INBOUND_ARGON2_PARALLELISM;"
                f" at least one of: {rows}, p>=1)")
        if self.memory_kib > MAX_MEMORY_KIB or self.time_cost > MAX_TIME_COST or self.parallelism > MAX_PARALLELISM:
            raise ConfigError(f"argon2id parameters too large (m <= {MAX_MEMORY_KIB} KiB, t <= {MAX_TIME_COST},"
                              f" p <= {MAX_PARALLELISM})")
        if not 1 <= self.min_length <= self.max_length:
            raise ConfigError("INBOUND_PASSWORD_MIN_LENGTH must be at least 1 and at most INBOUND_PASSWORD_MAX_LENGTH")
        if self.hash_workers < 0 or self.hash_queue < 0:
            raise ConfigError("INBOUND_PASSWORD_HASH_WORKERS and INBOUND_PASSWORD_HASH_QUEUE cannot be negative")

    @property
    def workers(self) -> int:
        return self.hash_workers or default_workers()

    @classmethod
    def from_env(cls, env: Env) -> PasswordSettings:
        return cls(memory_kib=env.int("INBOUND_ARGON2_MEMORY_KIB", DEFAULT_MEMORY_KIB, minimum=1),
                   time_cost=env.int("INBOUND_ARGON2_TIME_COST", DEFAULT_TIME_COST, minimum=1),
                   parallelism=env.int("INBOUND_ARGON2_PARALLELISM", DEFAULT_PARALLELISM, minimum=1),
                   min_length=env.int("INBOUND_PASSWORD_MIN_LENGTH", DEFAULT_MIN_LENGTH, minimum=1),
                   max_length=env.int("INBOUND_PASSWORD_MAX_LENGTH", DEFAULT_MAX_LENGTH, minimum=1,
                                      maximum=65536),
                   hash_workers=env.int("INBOUND_PASSWORD_HASH_WORKERS", default_workers(), minimum=1, maximum=64),
                   hash_queue=env.int("INBOUND_PASSWORD_HASH_QUEUE", DEFAULT_QUEUE, minimum=0, maximum=100_000))


def _normalised(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def _encoded(password: str) -> bytes:
    # surrogatepass: a lone surrogate (possible from a lenient decoder) hashes rather than raising.
    return password.encode("utf-8", "surrogatepass")


class Passwords:
    """Hash, verify and re-hash passwords with the configured argon2id parameters.

    `hash` and `verify` run on the pool's threads and raise `Overloaded` (from
    inboundlib.batching) when `hash_workers + hash_queue` calls are already there.
    A dummy hash, made at start with the current parameters, stands in for users
    that are unknown, disabled or without a password: verifying against it costs
    what verifying a real user's hash costs, so the answer's timing says nothing."""

    def __init__(self, settings: PasswordSettings):
        self.settings = settings
        self._hasher = PasswordHasher(time_cost=settings.time_cost, memory_cost=settings.memory_kib,
                                      parallelism=settings.parallelism, hash_len=HASH_LEN, salt_len=SALT_LEN,
                                      type=Type.ID)
        self.pool = WorkerPool("passwords", settings.workers, max_waiting=settings.hash_queue)
        self._dummy_hash = self._hasher.hash(secrets.token_bytes(32))

    def check_policy(self, password: str) -> None:
        """Raise PasswordRejected when the policy refuses `password` as a new password."""
        length = len(_normalised(password)) if len(password) <= 4 * self.settings.max_length else len(password)
        if length < self.settings.min_length:
            raise PasswordRejected(f"the password is shorter than {self.settings.min_length} characters")
        if length > self.settings.max_length:
            raise PasswordRejected(f"the password is longer than {self.settings.max_length} characters")

    def _checkable(self, password: str) -> bool:
        # Longer than the maximum (before normalisation, which never shortens by more than
        # a few characters' worth): never hashed, simply wrong.
        return 0 < len(password) <= 4 * self.settings.max_length \
            and len(_normalised(password)) <= self.settings.max_length

    async def hash(self, password: str) -> str:
        """A new hash of `password` (the policy checked first: PasswordRejected)."""
        self.check_policy(password)
        return await self.pool.submit(self._hasher.hash, _encoded(_normalised(password)))

    async def rehash(self, password: str) -> str:
        """A hash with the current parameters of a password that just verified (no policy
        check: a policy tightened since must not lock its owner out at sign-in)."""
        return await self.pool.submit(self._hasher.hash, _encoded(_normalised(password)))

    def _verify(self, password_hash: str, password: bytes) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches `password_hash`. None (unknown user, no password,
        disabled user: the caller decides) verifies against the dummy hash and is False."""
        if not self._checkable(password):
            return False
        if password_hash is None:
            await self.pool.submit(self._verify, self._dummy_hash, _encoded(_normalised(password)))
            return False
        return await self.pool.submit(self._verify, password_hash, _encoded(_normalised(password)))

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether a hash was made with other parameters than the current ones. Not on the
        pool: it parses the hash's parameter string (microseconds) and hashes nothing."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return True

    def shutdown(self) -> None:
        self.pool.shutdown()

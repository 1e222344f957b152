"""Timing objective (the SLO set, `make slo`): an unknown client id is refused in
about the time a wrong secret is, so the time of a refusal does not tell whether
a client id exists. Measured on the authenticator every grant runs (its client
source in memory, as a warm cache is); the rule itself (a secret check for every
refusal) is tested without a clock in tests/unit/test_client_auth.py."""
from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from inboundlib.oauth.client_auth import (
    CLIENT_SECRET_BASIC,
    ClientAuthenticator,
    ClientCredentials,
    hash_client_secret,
    new_client_secret,
)
from inboundlib.oauth.errors import InvalidClient
from tests.fakes import FakeClients, client_record

pytestmark = pytest.mark.slo

ROUNDS, PER_ROUND = 31, 2000


def test_unknown_client_and_wrong_secret_take_about_the_same_time():
    authenticator = ClientAuthenticator(FakeClients(client_record(secret_hash=hash_client_secret(new_client_secret()))))
    wrong = ClientCredentials(CLIENT_SECRET_BASIC, "app", new_client_secret())
    unknown = ClientCredentials(CLIENT_SECRET_BASIC, "no-such-client", new_client_secret())

    async def per_call(creds: ClientCredentials) -> float:
        started = time.perf_counter()
        for _ in range(PER_ROUND):
            try:
                await authenticator.authenticate(creds)
            except InvalidClient:
                pass
        return (time.perf_counter() - started) / PER_ROUND

    async def rounds() -> list[float]:
        # Alternated, so drift in the machine's load falls on both alike.
        return [await per_call(unknown) / await per_call(wrong) for _ in range(ROUNDS)]

    ratio = statistics.median(asyncio.run(rounds()))
    print(f"\nunknown client / wrong secret, time per refusal: {ratio:.3f} (median of {ROUNDS} rounds)")
    assert 0.8 < ratio < 1.25

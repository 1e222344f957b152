"""The bounded worker pools (inboundlib.workers), and token_issuer signing RSA in
the CPU pool while ES256 and EdDSA stay inline (figures: bench/offload.py)."""
from __future__ import annotations

import asyncio
import os
import threading

import jwt
import pytest

from inboundlib import workers
from inboundlib.batching import Overloaded
from services.token_issuer.api import IssueRequest
from services.token_issuer.issuer import TokenIssuer
from services.token_issuer.keys import KeyEncryptor, KeyRing, new_key_record, open_key_record


async def test_work_runs_on_a_pool_thread_and_errors_come_back():
    pool = workers.WorkerPool("t", 2, max_waiting=4)
    try:
        assert await pool.submit(threading.get_ident) != threading.get_ident()
        assert await pool.submit(lambda a, b=0: a + b, 2, b=3) == 5
        with pytest.raises(ZeroDivisionError):
            await pool.submit(lambda: 1 / 0)
        assert pool.pending == 0
    finally:
        pool.shutdown()


async def test_a_full_pool_refuses_at_once():
    pool = workers.WorkerPool("t", 1, max_waiting=1)
    release = threading.Event()
    try:
        held = [asyncio.create_task(pool.submit(release.wait, 5)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await pool.submit(lambda: None)
        release.set()
        assert await asyncio.gather(*held) == [True, True]
        assert await pool.submit(lambda: "again") == "again"
    finally:
        release.set()
        pool.shutdown()


class _CountingPool(workers.WorkerPool):
    def __init__(self):
        super().__init__("counting", 1, max_waiting=8)
        self.threads_used: list[int] = []

    async def submit(self, fn, /, *args, **kwargs):
        def run():
            self.threads_used.append(threading.get_ident())
            return fn(*args, **kwargs)
        return await super().submit(run)


@pytest.mark.parametrize("alg,offloaded", [("RS256", True), ("ES256", False), ("EdDSA", False)])
async def test_the_issuer_signs_rsa_in_the_cpu_pool(monkeypatch, alg, offloaded):
    pool = _CountingPool()
    monkeypatch.setattr(workers, "CPU", pool)
    encryptor = KeyEncryptor(os.urandom(32))
    key = open_key_record(new_key_record(alg, encryptor, activates_at=0), encryptor)
    issuer = TokenIssuer(registry=None, encryptor=encryptor, issuer="https://i", default_audience="a", alg=alg)
    issuer.keyring = KeyRing([key])
    try:
        token = await issuer.issue(IssueRequest(client_id="c", subject="c", scopes=("s",), format="jwt",
                                                lifetime_seconds=60))
    finally:
        pool.shutdown()
    claims = jwt.decode(token.access_token, key.public_key, algorithms=[alg], audience="a", issuer="https://i")
    assert claims["jti"] == token.jti
    assert len(pool.threads_used) == (1 if offloaded else 0)
    assert workers.signs_slowly(alg) is offloaded


async def test_sliced_work_gives_the_loop_turns():
    """A long pure-Python stretch over items lets other tasks run between items (every
    `seconds`), and without slicing they would not (the control)."""
    import time

    async def stretch(iterate) -> list[int]:
        turns: list[int] = []
        done = 0

        async def other():
            while True:
                turns.append(done)
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        turns.clear()
        async for _ in iterate(range(30)):
            t = time.perf_counter()
            while time.perf_counter() - t < 0.001:  # 1 ms of work an item
                pass
            done += 1
        task.cancel()
        return turns

    async def plain(items):
        for item in items:
            yield item

    sliced_turns = await stretch(lambda items: workers.sliced(items, seconds=0.003))
    assert len(sliced_turns) >= 5 and sliced_turns[0] < 30
    assert await stretch(plain) == []

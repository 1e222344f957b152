"""An audit trail that survives a crash (durable delivery, the default), with real
processes: NATS down, tokens requested at ~75/s, token_issuer killed with kill -9
mid-load and restarted, later stopped with SIGTERM and restarted, then started with
a spool too small to take more (requests fail with temporarily_unavailable, none is
answered unaudited), and NATS back: every token a client received a 200 for has
exactly one audit row (matched by its jti), none twice.

Runs on a system of its own (stopping NATS and the issuer disturbs no other test)."""
from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import jwt
import pytest

from tests.support import audit_caught_up, audit_copies, eventually, register_client, serving

RATE = 75  # token requests per second


@pytest.fixture(scope="module")
def own_stack(private_stack):
    with private_stack("durable-audit") as s:
        yield s


class Load:
    """A client asking for tokens at RATE/s, whatever the answers; keeps each 200's jti."""

    def __init__(self, edge_url: str, client_id: str, secret: str):
        self.http = httpx.AsyncClient(base_url=edge_url, timeout=10,
                                      limits=httpx.Limits(max_connections=32))
        self.auth = (client_id, secret)
        self.jtis: list[str] = []
        self.last_token = ""
        self.statuses: list[int] = []
        self.errors: list[str] = []  # error codes of answers other than 200
        self._task: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()

    async def _one(self) -> None:
        try:
            reply = await self.http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=self.auth)
        except httpx.HTTPError:
            self.statuses.append(0)
            return
        self.statuses.append(reply.status_code)
        if reply.status_code == 200:
            self.last_token = reply.json()["access_token"]
            self.jtis.append(jwt.decode(reply.json()["access_token"], options={"verify_signature": False})["jti"])
        else:
            self.errors.append(reply.json().get("error", "") if reply.headers.get("content-type", "").startswith(
                "application/json") else str(reply.status_code))

    async def _run(self) -> None:
        started = time.monotonic()
        sent = 0
        while True:
            # Paced, not a fixed wait for something to happen: the n-th request goes at n/RATE s.
            sent += 1
            task = asyncio.create_task(self._one())
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            await asyncio.sleep(max(0.0, started + sent / RATE - time.monotonic()))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def ok_since(self, mark: int) -> int:
        return len(self.jtis) - mark

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, *self._inflight, return_exceptions=True)
        await self.http.aclose()


async def test_no_token_answered_during_a_nats_outage_goes_unaudited_when_the_issuer_dies(own_stack):
    client, secret = await register_client(own_stack, name="durable-audit")
    issuer_addr = own_stack.addr("token_issuer")
    own_stack.nats.stop()
    await eventually(lambda: own_stack.services["token_issuer"].lines, until=lambda lines: any(
        "nats disconnected" in line for line in lines), message="the token issuer noticing that NATS is gone")

    load = Load(own_stack.edge_url, client.client_id, secret)
    load.start()
    try:
        await eventually(lambda: load.ok_since(0), until=lambda n: n >= RATE, message="tokens during the outage")
        own_stack.services["token_issuer"].proc.kill()  # kill -9, mid-load
        own_stack.services.pop("token_issuer").proc.wait()
        own_stack.start_service("token_issuer")
        await serving(own_stack, "token_issuer", issuer_addr)
        mark = len(load.jtis)
        await eventually(lambda: load.ok_since(mark), until=lambda n: n >= RATE // 2,
                         message="tokens after the restart, NATS still down")

        assert own_stack.stop_service("token_issuer") == 0  # SIGTERM during the outage: a clean stop
        # Its spool holds the outage's events (over 100 tokens, some 270 bytes each): a bound of 4 KiB
        # is passed already. No token is answered unaudited; requests fail with temporarily_unavailable.
        own_stack.start_service("token_issuer", extra_env={"INBOUND_EVENTS_SPOOL_BYTES": "4096"})
        await serving(own_stack, "token_issuer", issuer_addr)
        errors = len(load.errors)
        await eventually(lambda: load.errors[errors:], until=lambda e: "temporarily_unavailable" in e,
                         message="a request refused because the spool is full")
        # The same for the other events of the token path: a revocation (RFC 7009), and then
        # the revoked token presented for introspection (RFC 7662).
        token = load.last_token
        async with httpx.AsyncClient(base_url=own_stack.edge_url, timeout=10, auth=(client.client_id, secret)) as h:
            revoked = await h.post("/oauth/revoke", data={"token": token})
            introspected = await h.post("/oauth/introspect", data={"token": token})
        assert (revoked.status_code, revoked.json()["error"]) == (503, "temporarily_unavailable")
        assert (introspected.status_code, introspected.json()["error"]) == (503, "temporarily_unavailable")

        assert own_stack.stop_service("token_issuer") == 0
        own_stack.start_service("token_issuer")
        await serving(own_stack, "token_issuer", issuer_addr)
        mark = len(load.jtis)
        await eventually(lambda: load.ok_since(mark), until=lambda n: n >= 10, message="tokens again")
    finally:
        await load.stop()
    own_stack.nats.start()

    jtis = load.jtis
    assert len(set(jtis)) == len(jtis)
    conn = await asyncpg.connect(own_stack.database_url)
    try:
        async def unaudited() -> int:
            return len(jtis) - len(await audit_copies(conn, jtis))
        await eventually(unaudited, until=lambda n: n == 0, message=f"of {len(jtis)} tokens answered 200, "
                         "those without an audit row")
        await audit_caught_up(own_stack)
        copies = await audit_copies(conn, jtis)
    finally:
        await conn.close()
    assert copies == {jti: 1 for jti in jtis}, "every token answered 200 is audited exactly once"

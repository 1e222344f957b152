"""The audit log end to end: events published on JetStream land in the
append-only audit_log table exactly once, survive the audit service being
down, and read back over gRPC and through `inboundctl audit`.

"Exactly once" is measured by the payload (a token's jti), never by the event id:
that is the table's primary key, so counting rows per event id cannot show a
duplicate (tests.support.audit_copies; test_the_once_measure_sees_a_copy_under_another_id
shows that it does).

Each test runs against the separate processes and the one-process mode; stopping
the audit service happens on a system of its own."""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid

import asyncpg
import httpx
import jwt
import pytest

from inbound.events.v1 import events_pb2
from inboundctl import audit_commands
from inboundlib.events import TOKEN_DENIED, TOKEN_ISSUED, EventBus
from services.audit.api import InvalidArgument, SearchQuery
from services.audit.client import AuditClient
from services.devstack import free_port
from tests.support import OPERATOR, audit_caught_up, audit_copies, eventually, nats_connect

pytestmark = pytest.mark.both_modes


@pytest.fixture(scope="module")
async def pg(stack):
    conn = await asyncpg.connect(stack.database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def bus(stack):
    # As the one-process mode's identity: it may publish every kind of event (services/nats_access.py).
    events = EventBus(stack.nats_settings("all_in_one"), "audit-test")
    await events.start()
    await asyncio.wait_for(events.connected.wait(), 10)
    yield events
    await events.close()


@pytest.fixture(scope="module")
async def audit(stack):
    channel = stack.channel("audit", caller=OPERATOR)  # inboundctl audit's identity
    yield AuditClient(channel)
    await channel.close()


def _issued(client_id: str, **kwargs) -> events_pb2.Event:
    """A TokenIssued event with a jti of its own (what tells its copies apart from other events)."""
    return events_pb2.Event(token_issued=events_pb2.TokenIssued(
        client_id=client_id, grant_type="client_credentials", jti=uuid.uuid4().hex, scope="api.read",
        token_format="jwt", expires_at=int(time.time()) + 1800), **kwargs)


async def _stored(pg, ids: list[str]) -> set[str]:
    """Which of these event ids have a row (presence only: the id is the primary key)."""
    return {r["event_id"] for r in await pg.fetch("SELECT event_id FROM audit_log WHERE event_id = ANY($1)", ids)}


async def _wait_stored(pg, ids: list[str]) -> set[str]:
    return await eventually(lambda: _stored(pg, ids), until=lambda found: found == set(ids),
                            message=f"rows for {len(set(ids))} events")


async def _copies_once_settled(stack, pg, jtis: list[str], bus=None) -> dict[str, int]:
    """Rows per jti once the audit consumer has handled everything in the stream
    (so a second copy, had one been published or redelivered, is in by now)."""
    if bus is not None:
        await bus.flush(10)
        assert bus.pending == 0
    await audit_caught_up(stack)
    return await audit_copies(pg, jtis)


async def test_published_events_are_stored_once_with_their_fields(stack, pg, bus):
    client_id = "audit-" + uuid.uuid4().hex[:8]
    issued = _issued(client_id, request_id="req-" + uuid.uuid4().hex[:8])
    denied_detail = "bad secret " + uuid.uuid4().hex
    denied = events_pb2.Event(token_denied=events_pb2.TokenDenied(
        client_id=client_id, grant_type="client_credentials", error="invalid_client", detail=denied_detail))
    ids = [bus.publish(TOKEN_ISSUED, issued), bus.publish(TOKEN_DENIED, denied)]
    await _wait_stored(pg, ids)
    assert await _copies_once_settled(stack, pg, [issued.token_issued.jti], bus) == {issued.token_issued.jti: 1}
    assert await audit_copies(pg, [denied_detail], field="detail") == {denied_detail: 1}
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE client_id = $1", client_id) == 2

    rows = {r["event_id"]: r for r in await pg.fetch("SELECT * FROM audit_log WHERE event_id = ANY($1)", ids)}
    row = rows[ids[0]]
    assert (row["type"], row["client_id"], row["source"], row["request_id"]) == (
        "token_issued", client_id, "audit-test", issued.request_id)
    assert abs(row["occurred_at"].timestamp() * 1000 - issued.occurred_at_unix_ms) < 1
    detail = json.loads(row["detail"])
    assert detail["jti"] == issued.token_issued.jti and detail["expires_at"] == issued.token_issued.expires_at
    assert detail["refresh_token_issued"] is False  # fields at their default are kept: records are self-describing
    assert rows[ids[1]]["type"] == "token_denied"
    assert json.loads(rows[ids[1]]["detail"])["error"] == "invalid_client"


async def test_creating_a_client_is_audited(stack, pg, make_client):
    client, _ = await make_client()

    def changes():
        return pg.fetch("SELECT * FROM audit_log WHERE client_id = $1 AND type = 'registry_changed'", client.client_id)

    await eventually(changes, message="the client's registry_changed row")
    await audit_caught_up(stack)
    rows = await changes()
    assert len(rows) == 1  # rows of this client: a copy under another event id would count
    detail = json.loads(rows[0]["detail"])
    assert {key: detail.get(key) for key in ("entity", "id", "change")} == {
        "entity": "client", "id": client.client_id, "change": "created"}
    # Its actor is the operator whose certificate made the call (make_client: tests.support.OPERATOR).
    operator = {"kind": "operator", "id": OPERATOR.name}
    if stack.single and rows[0]["source"] != "client_registry":
        pytest.xfail(f"the one-process mode stamps events with its process name ({rows[0]['source']!r}), "
                     "not the service that published them")
    assert rows[0]["source"] == "client_registry"
    assert detail == {"entity": "client", "id": client.client_id, "change": "created", "actor": operator}
    assert (rows[0]["actor_kind"], rows[0]["actor_id"]) == ("operator", OPERATOR.name)


async def test_a_redelivered_or_republished_event_is_stored_once(stack, pg):
    subject = stack.installation.subject(TOKEN_ISSUED)
    republished = _issued("dup-client", event_id=uuid.uuid4().hex)
    twin = _issued("dup-client", event_id=uuid.uuid4().hex)
    nc = await nats_connect(stack, "token_issuer")
    try:
        js = nc.jetstream()
        # The same event published twice under its Nats-Msg-Id: JetStream drops the copy.
        acks = [await js.publish(subject, republished.SerializeToString(),
                                 headers={"Nats-Msg-Id": republished.event_id}) for _ in range(2)]
        assert [a.duplicate for a in acks] == [None, True]
        assert acks[1].seq == acks[0].seq  # the copy was not stored
        # The same event under two Nats-Msg-Ids gets past that de-duplication, so the
        # consumer really sees it twice; it must store it once all the same.
        twins = [await js.publish(subject, twin.SerializeToString(), headers={"Nats-Msg-Id": uuid.uuid4().hex})
                 for _ in range(2)]
        assert [a.duplicate for a in twins] == [None, None] and twins[0].seq != twins[1].seq  # both stored
    finally:
        await nc.close()
    jtis = [republished.token_issued.jti, twin.token_issued.jti]
    await _wait_stored(pg, [republished.event_id, twin.event_id])
    assert await _copies_once_settled(stack, pg, jtis) == {jti: 1 for jti in jtis}


async def test_the_once_measure_sees_a_copy_under_another_id(stack, pg, bus):
    """The measure above can fail: a copy stored under another event id (what a
    consumer that gave redeliveries a fallback id would do) is counted."""
    event = _issued("copy-client")
    await _wait_stored(pg, [bus.publish(TOKEN_ISSUED, event)])
    assert await _copies_once_settled(stack, pg, [event.token_issued.jti], bus) == {event.token_issued.jti: 1}
    await pg.execute("INSERT INTO audit_log (event_id, occurred_at, type, source, client_id, detail)"
                     " SELECT $2, occurred_at, type, source, client_id, detail FROM audit_log WHERE event_id = $1",
                     event.event_id, "copy-of-" + event.event_id)
    assert await audit_copies(pg, [event.token_issued.jti]) == {event.token_issued.jti: 2}


async def test_the_consumer_path_ignores_an_event_already_stored(stack, pg):
    """The store the consumer uses, called directly: a second insert of the same event adds nothing."""
    from services.audit.log import AuditLog, decode

    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    try:
        log = AuditLog(pool)
        event = _issued("direct-client", event_id=uuid.uuid4().hex, occurred_at_unix_ms=int(time.time() * 1000))
        record = decode(event.SerializeToString(), fallback_id="unused", fallback_time_ms=0)
        assert await log.store([record]) == 1
        assert await log.store([record, record]) == 0
        other = decode(_issued("direct-client", event_id=uuid.uuid4().hex).SerializeToString(),
                       fallback_id="unused", fallback_time_ms=int(time.time() * 1000))
        assert await log.store([record, other, other]) == 1
        odd = decode(events_pb2.Event(event_id=uuid.uuid4().hex, token_denied=events_pb2.TokenDenied(
            client_id="nul\x00client", detail="nul\x00detail")).SerializeToString(), fallback_id="", fallback_time_ms=1)
        assert await log.store([odd]) == 1  # Postgres takes it (NUL replaced)
        jtis = [json.loads(r.detail_json)["jti"] for r in (record, other)]
        assert await audit_copies(pg, jtis) == {jti: 1 for jti in jtis}
    finally:
        await pool.close()


async def test_the_table_is_append_only(pg, bus):
    event_id = bus.publish(TOKEN_ISSUED, _issued("append-only"))
    await _wait_stored(pg, [event_id])
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
        await pg.execute("UPDATE audit_log SET client_id = 'forged' WHERE event_id = $1", event_id)
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
        await pg.execute("DELETE FROM audit_log WHERE event_id = $1", event_id)
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
        await pg.execute("TRUNCATE audit_log")
    assert await pg.fetchval("SELECT client_id FROM audit_log WHERE event_id = $1", event_id) == "append-only"
    # Its migrations are bookkept apart from client_registry's.
    assert await pg.fetchval("SELECT name FROM audit_schema_migrations WHERE version = 1") == "0001_audit_log.sql"
    assert not await pg.fetchval("SELECT count(*) FROM schema_migrations WHERE name = '0001_audit_log.sql'")


async def test_an_undecodable_message_is_dropped_without_wedging_the_consumer(stack, pg):
    subject = stack.installation.subject(TOKEN_ISSUED)
    nc = await nats_connect(stack, "token_issuer")
    try:
        js = nc.jetstream()
        await js.publish(subject, b"\xff\xff\xff", headers={"Nats-Msg-Id": uuid.uuid4().hex})
        marker = _issued("after-garbage", event_id=uuid.uuid4().hex)
        await js.publish(subject, marker.SerializeToString(), headers={"Nats-Msg-Id": marker.event_id})
    finally:
        await nc.close()
    await _wait_stored(pg, [marker.event_id])
    await eventually(lambda: any("undecodable message" in line for sp in stack.services.values() for line in sp.lines),
                     message="the audit service's log line about the undecodable message")


@pytest.fixture(scope="module")
def outage_stack(private_stack):
    """A system of its own: the test stops the audit service."""
    with private_stack("audit-outage") as s:
        yield s


@pytest.mark.separate_processes
async def test_events_published_while_audit_is_down_arrive_exactly_once(outage_stack):
    stack = outage_stack
    pg = await asyncpg.connect(stack.database_url)
    bus = EventBus(stack.nats_settings("token_issuer"), "audit-test")
    await bus.start()
    try:
        await asyncio.wait_for(bus.connected.wait(), 10)
        assert stack.stop_service("audit") == 0  # graceful: the batch in hand is stored and acked
        events = [_issued(f"outage-{i % 7}") for i in range(200)]
        ids = [bus.publish(TOKEN_ISSUED, event) for event in events]
        await bus.flush(10)
        assert bus.pending == 0  # all in JetStream now, none stored yet
        assert await _stored(pg, ids) == set()
        stack.start_service("audit")
        await _wait_stored(pg, ids)
        jtis = [event.token_issued.jti for event in events]
        assert await _copies_once_settled(stack, pg, jtis) == {jti: 1 for jti in jtis}
    finally:
        await bus.close()
        await pg.close()


@pytest.mark.separate_processes
async def test_two_replicas_share_the_consumer_and_serve_health_and_metrics(stack, pg, bus):
    """A second audit replica pulls from the same durable consumer: still every event exactly once."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port, metrics_port = free_port(), free_port()
    replica = stack.start_service("audit", port=port, key="audit-replica",
                                  extra_env={"INBOUND_METRICS_PORT": str(metrics_port)})
    try:
        channel = stack.channel("audit", addr=f"127.0.0.1:{port}", caller=OPERATOR)
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="inbound.audit.v1.AuditLog"), timeout=2)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await channel.close()
        events: list[events_pb2.Event] = []

        async def burst_until_the_replica_stored_some() -> float:
            # In bursts, until the replica has stored some: both pull from the one consumer.
            burst = [_issued("two-replicas") for _ in range(20)]
            events.extend(burst)
            for event in burst:
                bus.publish(TOKEN_ISSUED, event)
            await bus.flush(10)
            return _metric(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text,
                           "inbound_audit_events_stored_total")

        await eventually(burst_until_the_replica_stored_some, message="events stored by the second replica")
        await _wait_stored(pg, [event.event_id for event in events])
        jtis = [event.token_issued.jti for event in events]
        assert await _copies_once_settled(stack, pg, jtis) == {jti: 1 for jti in jtis}
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert "inbound_audit_consumer_pending" in metrics
    finally:
        replica.proc.send_signal(signal.SIGTERM)
        assert replica.proc.wait(15) == 0
        stack.services.pop("audit-replica", None)


def _metric(text: str, name: str) -> float:
    """A counter's value in a Prometheus text page (0 when absent)."""
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def _jti(reply) -> str:
    assert reply.status_code == 200, reply.text
    return jwt.decode(reply.json()["access_token"], options={"verify_signature": False})["jti"]


async def test_an_issued_token_is_audited_under_its_jti(stack, pg, make_client, http):
    # (A NATS outage meanwhile is tests/integration/test_nats_outage.py, on a system of its own.)
    client, secret = await make_client()
    jti = _jti(http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(client.client_id, secret)))

    async def issued_jtis() -> list[str]:
        return [r["jti"] for r in await pg.fetch(
            "SELECT detail->>'jti' AS jti FROM audit_log WHERE client_id = $1 AND type = 'token_issued'",
            client.client_id)]

    await eventually(issued_jtis, message="the token_issued row")
    await audit_caught_up(stack)
    assert await issued_jtis() == [jti]


async def test_tail_and_search_over_grpc(pg, bus, audit):
    client_id = "search-" + uuid.uuid4().hex[:8]
    base = int(time.time() * 1000) - 60_000
    events = [_issued(client_id, occurred_at_unix_ms=base + i * 1000) for i in range(5)]
    events.append(events_pb2.Event(occurred_at_unix_ms=base + 10_000, token_denied=events_pb2.TokenDenied(
        client_id=client_id, grant_type="client_credentials", error="invalid_scope")))
    ids = [bus.publish(TOKEN_DENIED if e.HasField("token_denied") else TOKEN_ISSUED, e) for e in events]
    await _wait_stored(pg, ids)

    page = await audit.search(SearchQuery(client_id=client_id))
    assert [r.event_id for r in page.records] == ids  # oldest first
    assert not page.truncated
    assert json.loads(page.records[-1].detail_json)["error"] == "invalid_scope"
    assert page.records[0].stored_at_unix_ms >= page.records[0].occurred_at_unix_ms

    page = await audit.search(SearchQuery(client_id=client_id, type="token_denied"))
    assert [r.event_id for r in page.records] == ids[5:]
    page = await audit.search(SearchQuery(client_id=client_id, since_unix_ms=base + 1000,
                                          until_unix_ms=base + 3000))
    assert [r.event_id for r in page.records] == ids[1:3]
    page = await audit.search(SearchQuery(client_id=client_id, limit=2))
    assert [r.event_id for r in page.records] == ids[4:] and page.truncated
    with pytest.raises(InvalidArgument, match="unknown event type"):
        await audit.search(SearchQuery(type="token_stolen"))
    with pytest.raises(InvalidArgument):
        await audit.search(SearchQuery(since_unix_ms=base + 10, until_unix_ms=base))

    last = await audit.tail(3)
    assert len(last.records) == 3 and last.truncated
    seqs = [r.seq for r in last.records]
    assert seqs == sorted(seqs)
    after = await audit.tail(10, after_seq=seqs[0])
    assert [r.seq for r in after.records][:2] == seqs[1:]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="inboundctl")
    areas = parser.add_subparsers(dest="area", required=True)
    audit_commands.add_subparsers(areas)
    return parser.parse_args(list(argv))


async def test_inboundctl_audit_commands(stack, pg, bus, capsys, monkeypatch):
    addr = stack.addr("audit")
    for name, value in stack.tls_env(OPERATOR).items():  # inboundctl's TLS settings
        monkeypatch.setenv(name, value)
    client_id = "cli-" + uuid.uuid4().hex[:8]
    ids = [bus.publish(TOKEN_ISSUED, _issued(client_id)) for _ in range(3)]
    await _wait_stored(pg, ids)
    capsys.readouterr()

    assert await audit_commands.run(_parse("audit", "search", "--client", client_id, "--since", "10m",
                                           "--json", "--audit-addr", addr)) == 0
    found = json.loads(capsys.readouterr().out)
    assert [r["event_id"] for r in found] == ids
    assert found[0]["type"] == "token_issued" and found[0]["detail"]["client_id"] == client_id
    assert found[0]["occurred_at"].endswith("Z")

    assert await audit_commands.run(_parse("audit", "search", "--client", client_id, "--type", "token_issued",
                                           "--limit", "2", "--audit-addr", addr)) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == 2 and all(f"client={client_id}" in line for line in lines)
    assert ids[2] in lines[-1] and "newest 2" in out.err

    assert await audit_commands.run(_parse("audit", "search", "--client", client_id, "--until", "1h",
                                           "--audit-addr", addr)) == 0
    assert capsys.readouterr().out == ""

    assert await audit_commands.run(_parse("audit", "tail", "-n", "3", "--audit-addr", addr)) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3

    # --follow prints what is stored after it started, one JSON object a line.
    printed: list[str] = []

    def followed() -> list[dict]:
        printed.extend(capsys.readouterr().out.splitlines())
        return [json.loads(line) for line in printed]

    follow = asyncio.create_task(audit_commands.run(_parse("audit", "tail", "-n", "1", "-f", "--json",
                                                           "--audit-addr", addr)))
    try:
        await eventually(followed, message="--follow printing the newest record first")
        later = bus.publish(TOKEN_ISSUED, _issued(client_id))
        await eventually(lambda: [r["event_id"] for r in followed()], until=lambda seen: later in seen,
                         message="--follow printing the event stored after it started")
        # A later event too: once it is printed, a poll that printed `later` again would have shown.
        last = bus.publish(TOKEN_ISSUED, _issued(client_id))
        await eventually(lambda: [r["event_id"] for r in followed()], until=lambda seen: last in seen,
                         message="--follow printing the next event")
    finally:
        follow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follow
    records = followed()
    assert [r["event_id"] for r in records].count(later) == 1
    assert len(records) == len({r["seq"] for r in records})

    assert await audit_commands.run(_parse("audit", "search", "--type", "nope", "--audit-addr", addr)) == 2
    assert "unknown event type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse("audit", "search", "--since", "yesterday-ish")
    port = stack.addr("audit").rsplit(":", 1)[0] + ":1"
    assert await audit_commands.run(_parse("audit", "tail", "--audit-addr", port)) == 1
    assert "cannot reach audit" in capsys.readouterr().err


async def test_inboundctl_audit_as_a_process(stack, pg, bus):
    """The real command line, the address from INBOUND_AUDIT_ADDR, --json before or after the area."""
    import os
    import sys

    client_id = "proc-" + uuid.uuid4().hex[:8]
    ids = [bus.publish(TOKEN_ISSUED, _issued(client_id)) for _ in range(2)]
    await _wait_stored(pg, ids)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_")}
    env["INBOUND_AUDIT_ADDR"] = stack.addr("audit")
    env.update(stack.tls_env(OPERATOR))

    async def ctl(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "inboundctl", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await ctl("audit", "search", "--client", client_id, "--since", "5m", "--json")
    assert code == 0, err
    assert [r["event_id"] for r in json.loads(out)] == ids
    code, out, err = await ctl("--json", "audit", "tail", "-n", "1")
    assert code == 0 and len(json.loads(out)) == 1
    code, out, err = await ctl("audit", "search", "--type", "nope")
    assert code == 2 and "unknown event type" in err


def test_time_arguments():
    now = 1_800_000_000.0
    assert audit_commands.parse_time("30m", now=now) == (now - 1800) * 1000
    assert audit_commands.parse_time("2d", now=now) == (now - 172800) * 1000
    assert audit_commands.parse_time("2026-11-28T10:00:00Z") == 1795860000000
    assert audit_commands.parse_time("2026-11-28T11:00:00+01:00") == 1795860000000
    assert audit_commands.parse_time("2026-11-28T10:00:00") == 1795860000000  # UTC when no zone is given
    with pytest.raises(audit_commands.UsageError):
        audit_commands.parse_time("soon")


def test_decoding_odd_events():
    from services.audit.log import Undecodable, decode

    # No id, no time, no payload (or one newer than this build): kept whole, under stable fallbacks.
    record = decode(b"\x08\x01", fallback_id="nats:INBOUND_EVENTS:7", fallback_time_ms=1234)
    assert (record.event_id, record.occurred_at_unix_ms, record.type) == ("nats:INBOUND_EVENTS:7", 1234, "unknown")
    assert json.loads(record.detail_json) == {"raw_event_base64": "CAE="}
    # NUL cannot go into Postgres text or jsonb: replaced, the rest kept.
    event = events_pb2.Event(event_id="e\x00", occurred_at_unix_ms=2**62, token_denied=events_pb2.TokenDenied(
        client_id="c\x00", detail="a\x00b"))
    record = decode(event.SerializeToString(), fallback_id="x", fallback_time_ms=99)
    assert (record.event_id, record.client_id, record.occurred_at_unix_ms) == ("e\ufffd", "c\ufffd", 99)
    assert json.loads(record.detail_json)["detail"] == "a\ufffdb"
    with pytest.raises(Undecodable):
        decode(b"\xff\xff\xff", fallback_id="x", fallback_time_ms=0)


@pytest.mark.parametrize("env,name", [
    ({}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://x/y", "INBOUND_AUDIT_BATCH": "0"}, "INBOUND_AUDIT_BATCH"),
    # Audit delivery settings, read by every process (inboundlib.spool.from_env).
    ({"DATABASE_URL": "postgresql://x/y", "INBOUND_EVENTS_DELIVERY": "sometimes"}, "INBOUND_EVENTS_DELIVERY"),
    ({"DATABASE_URL": "postgresql://x/y", "INBOUND_EVENTS_SPOOL_BYTES": "1000"}, "INBOUND_EVENTS_SPOOL_BYTES"),
    ({"DATABASE_URL": "postgresql://x/y", "INBOUND_EVENTS_SPOOL_DIR": "/dev/null/spool"}, "INBOUND_EVENTS_SPOOL_DIR"),
])
def test_bad_config_fails_fast(env, name):
    import os
    import subprocess
    import sys

    from services.devstack import ROOT

    full = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_") and k != "DATABASE_URL"}
    # The spool folder is checked as events start, after the certificate files (no TLS is tested here).
    full["INBOUND_GRPC_TLS"] = "plaintext"
    result = subprocess.run([sys.executable, "-m", "services.audit"], cwd=ROOT, env={**full, **env},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and f"configuration error: {name}" in result.stderr

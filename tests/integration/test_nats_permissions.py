"""NATS enforces who may send what (services/nats_access.py): the stacks of the suite run
their private NATS with the users, subject permissions and TLS of a deployment.

The measures are independent of the refusal itself: a forged event that got through
would be stored by the audit service (the stream captures every publish on its
subjects) and applied by token_issuer (a client cut-off makes its tokens inactive).
Each forgery is sent as a plain core publish, the cheapest way in, after which the
forger waits for the server's verdict: the permissions violation it reports, or the
forged event's effect."""
from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from pathlib import Path

import asyncpg
import nats
import pytest
from prometheus_client import REGISTRY

from inbound.events.v1 import events_pb2
from inboundlib import pki
from inboundlib.config import Env
from inboundlib.events import (
    CLIENT_CHANGED,
    TOKEN_DENIED,
    TOKEN_ISSUED,
    TOKEN_REVOKED,
    EventBus,
    Installation,
    NatsSettings,
    registry_changed,
)
from inboundlib.localservers import free_port
from inboundlib.spool import Spool
from services.devstack import DevNats, Stack
from services.token_issuer.api import IssueRequest
from tests.support import audit_caught_up, eventually, nats_connect


async def _forge(stack, identity: str, relative_subject: str, event: events_pb2.Event, *,
                 effect=None) -> list[Exception]:
    """Publish `event` as service `identity`; wait for the server's refusal (or for
    `effect()` to come true: the forgery got through); return the errors it reported."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats_connect(stack, identity, error_cb=on_error, allow_reconnect=False)
    try:
        await nc.publish(stack.installation.subject(relative_subject), event.SerializeToString(),
                         headers={"Nats-Msg-Id": event.event_id})
        await nc.flush()

        async def verdict():
            refused = any("permissions violation" in str(e).lower() for e in errors)
            return refused or (effect is not None and await effect())

        await eventually(verdict, message=f"the server's verdict on {identity} publishing {relative_subject}")
    finally:
        await nc.close()
    return errors


async def _audit_rows(stack, event_id: str, *, caught_up: bool = True) -> int:
    """Rows for `event_id` in the audit log (once audit has handled all the stream holds)."""
    if caught_up:
        await audit_caught_up(stack)
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM audit_log WHERE event_id = $1", event_id)
    finally:
        await conn.close()


def _event(**fields) -> events_pb2.Event:
    return events_pb2.Event(event_id=uuid.uuid4().hex, occurred_at_unix_ms=int(time.time() * 1000), **fields)


async def test_no_service_of_the_stack_is_refused_a_subject_it_uses(stack, make_client, issuer):
    """What each service subscribes to (at start) and publishes (a token, a denial, a
    revocation) is in its permissions: nats-server would refuse it, and the service log it."""
    client, _ = await make_client()
    await issuer.issue(IssueRequest(client_id=client.client_id, subject=client.client_id,
                                    scopes=("api.read",), format="jwt", lifetime_seconds=600))
    await issuer.revoke_client_tokens(client.client_id)
    await audit_caught_up(stack)
    refused = [line for sp in stack.services.values() for line in sp.lines if "nats refused a subject" in line]
    assert not refused, refused


async def test_a_revocation_forged_by_the_edge_is_refused_and_the_token_stays_active(stack, make_client, issuer):
    client, _ = await make_client()
    token = (await issuer.issue(IssueRequest(client_id=client.client_id, subject=client.client_id,
                                             scopes=("api.read",), format="jwt", lifetime_seconds=600))).access_token
    assert (await issuer.introspect(token)).active
    hour_ahead_ms = int(time.time() * 1000) + 3600_000
    forged = _event(token_revoked=events_pb2.TokenRevoked(
        kind="client", client_id=client.client_id, revoked_before=hour_ahead_ms // 1000,
        revoked_before_unix_ms=hour_ahead_ms, expires_at=hour_ahead_ms // 1000, revoked_by="operator:mallory"))

    async def token_inactive() -> bool:
        return not (await issuer.introspect(token)).active

    errors = await _forge(stack, "edge", TOKEN_REVOKED, forged, effect=token_inactive)
    assert (await issuer.introspect(token)).active, "a forged revocation made the token inactive"
    assert any("permissions violation" in str(e).lower() for e in errors)
    assert await _audit_rows(stack, forged.event_id) == 0


async def test_a_registry_change_forged_by_token_issuer_is_refused(stack):
    """Only client_registry announces registry changes (a forged one would make every
    cache drop what it names, and reach the audit log as the registry's word)."""
    forged = _event(registry_changed=registry_changed("client", "forged-" + uuid.uuid4().hex[:8], "deleted").
                    registry_changed)
    errors = await _forge(stack, "token_issuer", CLIENT_CHANGED, forged,
                          effect=lambda: _audit_rows(stack, forged.event_id, caught_up=False))
    assert await _audit_rows(stack, forged.event_id) == 0, "the forged change reached the audit log"
    assert any("permissions violation" in str(e).lower() for e in errors)


async def test_audit_cannot_publish(stack):
    forged = _event(token_issued=events_pb2.TokenIssued(client_id="by-audit", jti=uuid.uuid4().hex))
    errors = await _forge(stack, "audit", TOKEN_ISSUED, forged,
                          effect=lambda: _audit_rows(stack, forged.event_id, caught_up=False))
    assert await _audit_rows(stack, forged.event_id) == 0, "audit's own event reached the audit log"
    assert any("permissions violation" in str(e).lower() for e in errors)


async def test_a_grant_service_cannot_dress_another_event_up_as_its_token_denied(stack):
    """A grant service may send token.denied; what it sends there must be a refusal, not a
    token_issued row, a revocation or a registry change in the audit trail."""
    forged = [_event(token_issued=events_pb2.TokenIssued(client_id="dressed-up", jti=uuid.uuid4().hex)),
              _event(registry_changed=registry_changed("client", "dressed-up", "deleted").registry_changed)]
    marker = _event(token_denied=events_pb2.TokenDenied(client_id="dressed-up", error="invalid_client"))
    nc = await nats_connect(stack, "client_credentials")
    try:
        js = nc.jetstream()
        for event in [*forged, marker]:  # the marker after them: once it is stored, they were handled
            await js.publish(stack.installation.subject(TOKEN_DENIED), event.SerializeToString(),
                             headers={"Nats-Msg-Id": event.event_id})
    finally:
        await nc.close()
    assert await _audit_rows(stack, marker.event_id) == 1
    assert [await _audit_rows(stack, e.event_id, caught_up=False) for e in forged] == [0, 0]


async def test_a_connection_without_credentials_or_without_tls_is_refused(stack):
    settings = stack.nats_settings("edge")
    context = ssl.create_default_context(cafile=settings.ca_file)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(settings.url, tls=context, allow_reconnect=False, connect_timeout=5)
    # The server speaks TLS only: plaintext, even with the right password, does not get in.
    with pytest.raises(Exception):  # noqa: B017 - refused in whichever way nats-py reports it
        await nats.connect(settings.url.replace("tls://", "nats://"), user=settings.user,
                           password=settings.password, allow_reconnect=False, connect_timeout=5)


async def test_a_spooled_event_the_server_refuses_for_good_is_set_aside_not_retried_forever(stack, tmp_path):
    """A spool holding a message the service's credentials may not publish (a deployment
    that changed its permissions, say) must not block the replay for good: the events behind
    it would pile up until the spool is full and every token is refused."""
    refused = _event(token_revoked=events_pb2.TokenRevoked(kind="client", client_id="spool-refused"))
    behind = _event(token_denied=events_pb2.TokenDenied(client_id="spool-behind", error="invalid_client"))
    spooled = Spool(tmp_path / "spool", 1 << 20)
    spooled.open()
    spooled.append([(TOKEN_REVOKED, [refused]), (TOKEN_DENIED, [behind])])  # the edge may send only the second
    spooled.close()
    source = "test-refused-spool"
    bus = EventBus(stack.nats_settings("edge"), source, spool=Spool(tmp_path / "spool", 1 << 20))
    await bus.start()
    try:
        await eventually(lambda: bus.spool.empty, message="the replay moved past the refused message")
        later = _event(token_denied=events_pb2.TokenDenied(client_id="spool-later", error="invalid_client"))
        await asyncio.wait_for(bus.durable(bus.publish(TOKEN_DENIED, later, awaited=True)), 10)
        await bus.flush(10)
    finally:
        await bus.close()
    assert await _audit_rows(stack, behind.event_id) == 1 and await _audit_rows(stack, later.event_id) == 1
    assert await _audit_rows(stack, refused.event_id) == 0
    assert REGISTRY.get_sample_value("inbound_events_rejected_total", {"source": source}) == 1
    # Set aside, in the segments' format: as a segment of another spool folder, it is read back.
    recovered = tmp_path / "recovered"
    recovered.mkdir()
    (tmp_path / "spool" / "rejected").rename(recovered / "0000000000000000.spool")
    reader = Spool(recovered, 1 << 20)
    reader.open()
    assert [(r.subject, [e.event_id for e in r.events]) for r in reader.read(10)] == [
        (TOKEN_REVOKED, [refused.event_id])]
    reader.close()


async def _log_line_of_a_replica(stack, env: dict[str, str], wanted: str) -> tuple[str, list[str]]:
    """Start a second client_credentials with `env`; the first log line containing `wanted`, and every line."""
    replica = stack.start_service("client_credentials", port=free_port(), key="cc-bad-nats", extra_env=env)
    try:
        line = await eventually(lambda: next((x for x in replica.lines if wanted in x), None),
                                message=f"a log line saying {wanted!r}")
        return line, list(replica.lines)
    finally:
        stack.stop_service("cc-bad-nats")


async def test_a_service_with_a_wrong_password_says_so_without_the_password(stack, tmp_path):
    wrong = "wrong-" + uuid.uuid4().hex
    password_file = tmp_path / "password"
    password_file.write_text(wrong)
    password_file.chmod(0o600)
    right = stack.nats_settings("client_credentials").password
    line, lines = await _log_line_of_a_replica(stack, {"INBOUND_NATS_PASSWORD_FILE": str(password_file)},
                                               "refused our credentials")
    assert '"level": "error"' in line and "Authorization Violation" in line  # in the server's words
    assert not any(wrong in x or right in x for x in lines), "a password reached the log"


async def test_a_service_that_does_not_trust_the_nats_server_certificate_says_so(stack, tmp_path):
    other_ca = pki.DevCA(tmp_path / "other-ca")
    line, _ = await _log_line_of_a_replica(stack, {"INBOUND_NATS_CA_FILE": str(other_ca.ca_file)},
                                           "TLS with the NATS server failed")
    assert '"level": "error"' in line and "CERTIFICATE_VERIFY_FAILED" in line


async def test_only_the_trusted_services_may_create_the_stream_the_others_wait_for_it(tmp_path):
    """The edge could make the events stream with limits that discard the trail (JetStream
    would acknowledge events, then drop them): it may not create it; its events wait in its
    spool until a service that may (token_issuer) has, then reach the stream."""
    nats_server = DevNats(tmp_path / "nats", free_port(), pki.DevCA(tmp_path / "pki"), ("gamma",))
    nats_server.start()
    installation = Installation("gamma")

    def settings(identity: str) -> NatsSettings:
        return NatsSettings.from_env(Env(nats_server.env("gamma", identity))).for_identity(identity)

    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    try:
        nc = await nats.connect(**settings("edge").connect_options(), error_cb=on_error, allow_reconnect=False)
        try:
            with pytest.raises(Exception):  # noqa: B017 - refused (no answer comes), however nats-py says it
                await nc.jetstream(timeout=2).add_stream(name=installation.stream, subjects=[installation.subjects],
                                                         max_age=1)
        finally:
            await nc.close()
        assert any("permissions violation" in str(e).lower() for e in errors)
        edge = EventBus(settings("edge"), "test-stream-edge", spool=Spool(tmp_path / "spool", 1 << 20))
        await edge.start()
        try:
            waited = _event(token_denied=events_pb2.TokenDenied(client_id="waits-for-stream"))
            await asyncio.wait_for(edge.durable(edge.publish(TOKEN_DENIED, waited, awaited=True)), 10)
            issuer = EventBus(settings("token_issuer"), "test-stream-issuer")
            await issuer.start()
            try:
                await asyncio.wait_for(issuer.connected.wait(), 10)
            finally:
                await issuer.close()
            await eventually(lambda: edge.spool.empty, message="the edge's spool replayed once the stream exists")
        finally:
            await edge.close()
        nc = await nats.connect(**settings("audit").connect_options())
        try:
            info = await nc.jetstream().stream_info(installation.stream)
        finally:
            await nc.close()
        assert info.config.max_age != 1 and info.state.messages == 1
    finally:
        nats_server.stop()


# --- two installations on one NATS ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_nats(tmp_path_factory):
    directory = Path(tmp_path_factory.mktemp("shared-nats"))
    nats_server = DevNats(directory / "nats", free_port(), pki.DevCA(directory / "pki"), ("alpha", "beta"))
    nats_server.start()
    yield nats_server
    nats_server.stop()


async def test_two_installations_on_one_nats_keep_separate_audit_logs(shared_nats, fresh_database,
                                                                       tmp_path_factory):
    stacks = [Stack(Path(tmp_path_factory.mktemp(name)), fixed_ports=False, echo=False,
                    database_url=fresh_database(), nats_url="", single=True, installation=name,
                    shared_nats=shared_nats, extra_env={"INBOUND_KEY_ACTIVATION_DELAY": "0"})
              for name in ("alpha", "beta")]
    try:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in stacks))
        # Enough events in each that a shared stream or consumer could not keep them apart by chance.
        sent: dict[str, set[str]] = {}
        for s in stacks:
            bus = EventBus(s.nats_settings("all_in_one"), "two-installations-test")
            await bus.start()
            try:
                events = [_event(token_issued=events_pb2.TokenIssued(client_id=s.installation.name,
                                                                      jti=uuid.uuid4().hex)) for _ in range(20)]
                for event in events:
                    bus.publish(TOKEN_ISSUED, event)
                await bus.flush(10)
                assert bus.pending == 0
            finally:
                await bus.close()
            sent[s.installation.name] = {e.token_issued.jti for e in events}
        for s in stacks:
            await audit_caught_up(s)
        for s in stacks:
            conn = await asyncpg.connect(s.database_url)
            try:
                stored = {r["jti"] for r in await conn.fetch(
                    "SELECT detail->>'jti' AS jti FROM audit_log WHERE type = 'token_issued'")}
            finally:
                await conn.close()
            mine, other = s.installation.name, next(name for name in sent if name != s.installation.name)
            assert sent[mine] <= stored, f"{mine}'s events are missing from its audit log"
            assert not sent[other] & stored, f"{other}'s events are in {mine}'s audit log"
    finally:
        for s in stacks:
            s.stop()

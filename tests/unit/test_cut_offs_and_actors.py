"""Cut-offs to the millisecond, subject revocations, time-ordered jtis and the
actor on every event, without any server."""
from __future__ import annotations

import time
import uuid

import pytest

from inbound.events.v1 import events_pb2
from inboundlib import actors
from inboundlib.events import EventBus, registry_changed
from services.client_registry.api import RevocationRecord, client_cut_off, subject_cut_off
from services.client_registry.wire import revocation_event, revocation_from_event, revocation_from_pb, revocation_to_pb
from services.token_issuer.jti import issued_at_ms, new_jti
from services.token_issuer.revocations import RevocationSet

NOW_MS = int(time.time() * 1000)


def revoked(s: RevocationSet, *, at_ms: int, client="c", subject="s") -> bool:
    return s.is_revoked(jti="j", grant_id="", client_id=client, issued_at_ms=at_ms, subject=subject)


def test_a_client_cut_off_compares_to_the_millisecond():
    s = RevocationSet()
    s.apply(client_cut_off("c", NOW_MS, "operator:alice"))
    assert revoked(s, at_ms=NOW_MS - 1) and revoked(s, at_ms=NOW_MS)  # before, or in the same ms
    assert not revoked(s, at_ms=NOW_MS + 1)  # right after: valid, though in the same second
    assert not revoked(s, at_ms=NOW_MS - 1, client="other")


def test_a_subject_cut_off_covers_every_client_of_that_subject_only():
    s = RevocationSet()
    s.apply(subject_cut_off("alice", NOW_MS, "service:users"))
    assert revoked(s, at_ms=NOW_MS, client="c1", subject="alice")
    assert revoked(s, at_ms=NOW_MS - 5000, client="c2", subject="alice")
    assert not revoked(s, at_ms=NOW_MS + 1, client="c1", subject="alice")
    assert not revoked(s, at_ms=NOW_MS, client="c1", subject="bob")
    assert not revoked(s, at_ms=NOW_MS, client="alice", subject="")  # not a client cut-off
    assert s.prune(NOW_MS / 1000 + 11 * 365 * 86400) == 1  # kept as long as any token can live, then dropped


@pytest.mark.parametrize("record", [client_cut_off("c", NOW_MS, "operator:a"), subject_cut_off("u", NOW_MS, "x"),
                                    RevocationRecord(kind="jti", value="j", client_id="c", expires_at=5)])
def test_cut_offs_keep_their_milliseconds_through_the_contract_and_events(record):
    assert revocation_from_pb(revocation_to_pb(record)) == record
    back = revocation_from_event(revocation_event(record).token_revoked)
    assert (back.kind, back.value, back.client_id, back.revoked_before_ms) == \
        (record.kind, record.value, record.client_id, record.revoked_before_ms)


def test_a_cut_off_from_an_older_writer_in_seconds_covers_its_whole_second():
    event = events_pb2.TokenRevoked(kind="client", client_id="c", revoked_before=NOW_MS // 1000, expires_at=1)
    record = revocation_from_event(event)
    assert record.revoked_before_ms == NOW_MS // 1000 * 1000 + 999


def test_a_jti_carries_its_issue_time_to_the_millisecond():
    jti = new_jti(NOW_MS)
    assert uuid.UUID(jti).version == 7 and len({new_jti(NOW_MS) for _ in range(1000)}) == 1000
    assert issued_at_ms(jti, NOW_MS // 1000) == NOW_MS
    assert issued_at_ms(jti, NOW_MS // 1000 + 1) == (NOW_MS // 1000 + 1) * 1000  # disagrees with iat: iat wins
    assert issued_at_ms("an-old-random-jti", 1700000000) == 1700000000000
    assert new_jti(NOW_MS + 1) > jti  # time-ordered


def test_the_actor_from_call_metadata_is_parsed_strictly():
    assert actors.parse("operator:alice") == actors.Actor("operator", "alice")
    assert actors.parse("operator:a\x1b[31mb") == actors.Actor("operator", "a?[31mb")
    assert actors.parse("root:alice") is None and actors.parse("operator:") is None and actors.parse("") is None
    assert len(actors.parse("user:" + "x" * 1000).id) == actors.MAX_ID_LENGTH


async def test_every_event_names_an_actor_the_one_in_context_or_the_service():
    bus = EventBus("nats://127.0.0.1:1", "client_registry")  # never started: events stay buffered
    bus.publish("inbound.events.test", events_pb2.Event(token_issued=events_pb2.TokenIssued(client_id="c")))
    token = actors.actor_var.set(actors.actor(actors.OPERATOR, "alice"))
    try:
        bus.publish("inbound.events.registry.client", registry_changed("client", "c", "updated"))
        bus.publish("inbound.events.test", events_pb2.Event(
            actor=events_pb2.Actor(kind="client", id="c"), token_revoked=events_pb2.TokenRevoked(kind="jti")))
    finally:
        actors.actor_var.reset(token)
    (_, by_service, _), (_, by_operator, _), (_, by_client, _) = list(bus._buffer)
    assert (by_service.actor.kind, by_service.actor.id) == ("service", "client_registry")
    assert (by_operator.actor.kind, by_operator.actor.id) == ("operator", "alice")
    assert by_operator.registry_changed.actor == by_operator.actor
    assert (by_client.actor.kind, by_client.actor.id) == ("client", "c")

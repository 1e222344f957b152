"""The audit log's event-to-JSON conversion matches protobuf's own JSON mapping."""
from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from inbound.events.v1 import events_pb2
from services.audit.log import _as_dict, decode, decode_batch

PAYLOADS = [field.name for field in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields]


def filled(name: str, message=None):
    """A payload with every field set to something non-default (sub-messages too)."""
    message = getattr(events_pb2.Event(), name).__class__() if message is None else message
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None:
            filled("", getattr(message, field.name))
        elif field.type == field.TYPE_STRING:
            setattr(message, field.name, f"{field.name}-välue")
        elif field.type == field.TYPE_BOOL:
            setattr(message, field.name, True)
        elif field.type in (field.TYPE_UINT32, field.TYPE_INT32):
            setattr(message, field.name, 2**20 + field.number)
        else:
            setattr(message, field.name, 2**40 + field.number)
    return message


@pytest.mark.parametrize("name", PAYLOADS)
@pytest.mark.parametrize("empty", [False, True])
def test_every_payload_converts_like_json_format(name, empty):
    payload = getattr(events_pb2.Event(), name).__class__() if empty else filled(name)
    expected = json.loads(json_format.MessageToJson(
        payload, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=None,
        unquote_int64_if_possible=True))
    assert _as_dict(payload) == expected


def test_a_batch_decodes_into_one_record_per_event_with_their_own_ids():
    events = [events_pb2.Event(event_id=f"e{i}", occurred_at_unix_ms=1000 + i,
                               token_issued=events_pb2.TokenIssued(client_id="c", jti=f"j{i}")) for i in range(3)]
    data = events_pb2.EventBatch(events=events).SerializeToString()
    records = decode_batch(data, fallback_id="m", fallback_time_ms=5)
    assert [r.event_id for r in records] == ["e0", "e1", "e2"]
    assert [json.loads(r.detail_json)["jti"] for r in records] == ["j0", "j1", "j2"]
    assert all(r.client_id == "c" and r.type == "token_issued" for r in records)
    single = decode(events[0].SerializeToString(), fallback_id="m", fallback_time_ms=5)
    assert single == records[0]

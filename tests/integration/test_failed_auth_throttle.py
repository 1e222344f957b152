"""Failed client authentication throttled by a real edge process in front of the
session's real grant service: one address guessing a client's secret gets 429
with Retry-After, unchecked; the client with its right secret from another
address (127.0.0.2: all of 127/8 is this machine) gets its token. Measured apart
from the edge: the grant service's own count of refusals, and the audit table."""
from __future__ import annotations

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inboundlib import redact
from services.devstack import free_port
from tests.support import eventually

pytestmark = pytest.mark.separate_processes

GRANT = {"grant_type": "client_credentials"}


def invalid_client_refusals(stack) -> float:
    """The client_credentials service's count of invalid_client answers."""
    for family in text_string_to_metric_families(httpx.get(stack.metrics_url("client_credentials")).text):
        for sample in family.samples:
            if sample.name == "inbound_token_requests_total" and sample.labels.get("outcome") == "invalid_client":
                return sample.value
    return 0.0


async def test_a_guessing_address_is_held_back_and_the_client_elsewhere_is_not(stack, make_client):
    port = free_port()
    stack.start_service("edge", port=port, key="edge-throttle", extra_env={
        "INBOUND_AUTH_FAILURE_BURST": "2", "INBOUND_AUTH_FAILURE_BACKOFF": "60"})
    client, secret = await make_client()
    url = f"http://127.0.0.1:{port}"
    try:
        async with (httpx.AsyncClient(base_url=url, transport=httpx.AsyncHTTPTransport(
                        local_address="127.0.0.1")) as guesser,
                    httpx.AsyncClient(base_url=url, transport=httpx.AsyncHTTPTransport(
                        local_address="127.0.0.2")) as owner):
            refused_before = invalid_client_refusals(stack)
            guesses = [await guesser.post("/oauth/token", data=GRANT, auth=(client.client_id, f"guess-{n}"))
                       for n in range(2)]
            throttled = await guesser.post("/oauth/token", data=GRANT, auth=(client.client_id, secret))
            elsewhere = await owner.post("/oauth/token", data=GRANT, auth=(client.client_id, secret))
            refused_after = invalid_client_refusals(stack)
    finally:
        stack.stop_service("edge-throttle")
    assert [reply.status_code for reply in guesses] == [401, 401]
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert throttled.json()["error"] == "temporarily_unavailable"
    assert elsewhere.status_code == 200 and elsewhere.json()["access_token"]
    assert refused_after - refused_before == 2  # the throttled request never reached the grant service

    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await eventually(lambda: conn.fetch(
            "SELECT detail::text AS detail FROM audit_log WHERE type = 'token_denied'"
            " AND detail->>'client_id' = $1 AND detail->>'error' = 'temporarily_unavailable'",
            redact.unverified(client.client_id)), message="the throttled request's audit record")
    finally:
        await conn.close()
    assert "127.0.0.1" in rows[0]["detail"] and secret not in rows[0]["detail"]

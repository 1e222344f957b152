"""Revocation across token_issuer replicas: applied on every replica over NATS,
and honoured by a replica that starts after it was made. (How fast it arrives is
the SLO set's: tests/slo/test_propagation.py.)"""
from __future__ import annotations

from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, ClientCredentials
from services.devstack import free_port
from services.token_issuer.api import IssueRequest
from tests.support import IssuerAs, eventually, serving


async def test_a_token_revoked_on_one_replica_is_inactive_on_the_other(stack, issuer, make_client):
    client, secret = await make_client()
    caller = ClientCredentials(CLIENT_SECRET_BASIC, client.client_id, secret)
    port = free_port()
    stack.start_service("token_issuer", port=port, key="issuer-b")
    await serving(stack, "token_issuer", f"127.0.0.1:{port}")
    other = IssuerAs(stack, f"127.0.0.1:{port}")
    try:
        tokens = [(await issuer.issue(IssueRequest(client_id=client.client_id, subject=client.client_id, scopes=(),
                                                   format=fmt, lifetime_seconds=300))).access_token
                  for fmt in ("jwt", "opaque", "jwt")]
        assert [(await other.introspect(t)).active for t in tokens] == [True, True, True]
        for token in tokens[:2]:
            await issuer.revoke(token, caller)

        async def active_on_the_other() -> list[bool]:
            return [(await other.introspect(t)).active for t in tokens]

        await eventually(active_on_the_other, until=lambda active: active == [False, False, True],
                         message="the revocations applied on the other replica (and only those)")
    finally:
        await other.close()
        stack.stop_service("issuer-b")


async def test_a_replica_started_after_revocations_treats_those_tokens_as_revoked(stack, issuer, make_client):
    client, secret = await make_client(token_format="opaque")
    caller = ClientCredentials(CLIENT_SECRET_BASIC, client.client_id, secret)
    tokens = [(await issuer.issue(IssueRequest(client_id=client.client_id, subject=client.client_id, scopes=(),
                                               format=fmt, lifetime_seconds=300))).access_token
              for fmt in ("jwt", "opaque", "jwt")]
    for token in tokens[:2]:
        await issuer.revoke(token, caller)
    port = free_port()
    stack.start_service("token_issuer", port=port, key="issuer-late")
    await serving(stack, "token_issuer", f"127.0.0.1:{port}")
    late = IssuerAs(stack, f"127.0.0.1:{port}")
    try:
        assert [(await late.introspect(t)).active for t in tokens] == [False, False, True]
    finally:
        await late.close()
        stack.stop_service("issuer-late")

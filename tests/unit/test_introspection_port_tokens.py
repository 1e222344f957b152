"""A resource server without a certificate may use the introspection port with a
client-credentials access token carrying `inbound.introspect`, verified by the issuer
itself (TokenChecker.resource_server_of): anything less is no caller at all."""
from __future__ import annotations

import time

from inboundlib import actors, identity
from inboundlib.events import REVOKED_TOKEN_INTROSPECTED
from services.client_registry.api import REVOKE_JTI, RevocationRecord
from tests.fakes import client_record
from tests.unit.test_token_checker import checker, mint

RS = "c0ffee"


def rs_checker(**overrides):
    return checker(client_record(client_id=RS, scopes=("inbound.introspect",), **overrides))


async def test_a_client_credentials_token_with_the_scope_names_its_client_as_a_resource_server():
    token = mint(sub=RS, client_id=RS, scope="inbound.introspect")
    assert await rs_checker().resource_server_of(token) == (identity.resource_server(RS),
                                                            actors.actor(actors.CLIENT, RS))


async def test_tokens_that_do_not_qualify_name_no_one():
    c = rs_checker()
    assert await c.resource_server_of(mint(sub=RS, client_id=RS, scope="api.read")) is None  # no scope
    assert await c.resource_server_of(mint(sub="user-1", client_id=RS, scope="inbound.introspect")) is None
    assert await c.resource_server_of(mint(sub=RS, client_id=RS, scope="inbound.introspect",
                                           username="alice")) is None  # a user's token
    expired = mint(sub=RS, client_id=RS, scope="inbound.introspect", exp=int(time.time()) - 1)
    assert await c.resource_server_of(expired) is None
    assert await c.resource_server_of(mint(sub=RS, client_id=RS, scope="inbound.introspect",
                                           iss="https://other.example")) is None
    assert await c.resource_server_of("not.a.token") is None
    disabled = rs_checker(active=False)
    assert await disabled.resource_server_of(mint(sub=RS, client_id=RS, scope="inbound.introspect")) is None


async def test_a_revoked_token_names_no_one():
    c = rs_checker()
    token = mint(sub=RS, client_id=RS, scope="inbound.introspect", jti="revoked-1")
    assert await c.resource_server_of(token) is not None
    c.revocations.apply(RevocationRecord(kind=REVOKE_JTI, value="revoked-1", client_id=RS,
                                         expires_at=int(time.time()) + 600))
    assert await c.resource_server_of(token) is None


async def test_a_revoked_bearer_token_is_not_audited_as_an_introspection():
    """Anyone who can reach the port may present one again and again: each would be a
    durable row in the append-only audit log. (Introspecting it is, as the control shows.)"""
    published = []

    class Events:
        def publish(self, subject, event, **kwargs):
            published.append(subject)

        async def durable(self, publishing):
            return publishing

    c = rs_checker()
    c.events = Events()
    token = mint(sub=RS, client_id=RS, scope="inbound.introspect", jti="revoked-2")
    c.revocations.apply(RevocationRecord(kind=REVOKE_JTI, value="revoked-2", client_id=RS,
                                         expires_at=int(time.time()) + 600))
    for _ in range(3):
        assert await c.resource_server_of(token) is None
    assert published == []
    assert not (await c.introspect(token, None, internal=True)).active
    assert published == [REVOKED_TOKEN_INTROSPECTED]

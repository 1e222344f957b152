"""Revocation cut-offs to the millisecond, and subject (user-wide) revocations,
through the real system: a token issued right after `revoke-tokens` or right
after re-enabling a client is valid, one issued before is not (no waiting for
the next second), for JWT and opaque tokens alike."""
from __future__ import annotations

import uuid

import httpx
import pytest

from inboundlib.events import EventBus
from services.client_registry.api import ClientSpec, ClientUpdate
from services.client_registry.client import RegistryClient
from services.token_issuer.api import IssueRequest
from services.token_issuer.introspection import TokenChecker
from services.token_issuer.revocations import RevocationSet
from tests.support import ISSUER_SERVICE, ensure_scopes, eventually

pytestmark = pytest.mark.both_modes


@pytest.fixture(scope="module")
async def resource_server(registry):
    await ensure_scopes(registry, ["inbound.introspect"])
    return await registry.create_client(ClientSpec(name="precision-rs", grant_types=["client_credentials"],
                                                   scopes=["inbound.introspect"]))


async def token(http: httpx.AsyncClient, client, secret) -> str:
    reply = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                            auth=(client.client_id, secret))
    assert reply.status_code == 200, reply.text
    return reply.json()["access_token"]


async def active(http: httpx.AsyncClient, rs, token_: str) -> bool:
    client, secret = rs
    reply = await http.post("/oauth/introspect", data={"token": token_}, auth=(client.client_id, secret))
    assert reply.status_code == 200, reply.text
    return reply.json()["active"]


async def until(check, expected: bool) -> None:
    await eventually(check, until=lambda result: result == expected, message=f"the check answering {expected}")


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
async def test_a_token_issued_right_after_revoke_tokens_is_valid_and_one_before_is_not(
        stack, issuer, make_client, resource_server, token_format):
    client, secret = await make_client(token_format=token_format)
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        for _ in range(3):  # each round: the cut-off and the fresh token share a second, nearly always
            before = await token(http, client, secret)
            await issuer.revoke_client_tokens(client.client_id)
            after = await token(http, client, secret)
            assert not await active(http, resource_server, before)
            assert await active(http, resource_server, after)


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
async def test_a_token_issued_right_after_re_enabling_a_client_is_valid(
        stack, registry, make_client, resource_server, token_format):
    client, secret = await make_client(token_format=token_format)
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
        before = await token(http, client, secret)
        await registry.update_client(client.client_id, ClientUpdate(active=False))
        await registry.update_client(client.client_id, ClientUpdate(active=True))
        # Caches learn of the enabling over NATS.
        reply = await eventually(lambda: http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                                   auth=(client.client_id, secret)),
                                 until=lambda r: r.status_code == 200, message="a token once re-enabled")
        after = reply.json()["access_token"]
        assert await active(http, resource_server, after)
        # The disabling's cut-off reaches token_issuer over NATS (the grant service may have
        # issued `after` from its cached record before either event arrived): wait for it,
        # then `after` must still be valid — issued after the enabling's cut-off.
        await eventually(lambda: active(http, resource_server, before), until=lambda is_active: not is_active,
                         message="the token from before the disabling revoked")
        assert await active(http, resource_server, after)


async def test_a_subject_revocation_covers_every_client_and_both_formats(stack, issuer, make_client,
                                                                        resource_server):
    """Every token of one subject (a user, for the coming user grants), of any client,
    issued before the cut-off, is inactive on every replica; others' tokens and the
    subject's later ones are not."""
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    (first, _), (second, _) = await make_client(), await make_client(token_format="opaque")

    async def issue(client, subject: str, fmt: str) -> str:
        return (await issuer.issue(IssueRequest(client_id=client.client_id, subject=subject, scopes=("api.read",),
                                                format=fmt, lifetime_seconds=600))).access_token

    old = [await issue(first, alice, "jwt"), await issue(second, alice, "opaque")]
    others = [await issue(first, bob, "jwt"), await issue(second, bob, "opaque")]
    channel = stack.channel("client_registry", caller=ISSUER_SERVICE)  # a checker wired like token_issuer's
    bus = EventBus(stack.nats_settings("token_issuer"), "test-subject-revocation")  # as token_issuer does
    await bus.start()
    try:
        # What the users service will do: revoke through a checker wired like token_issuer's.
        revoker = TokenChecker(issuer=stack.edge_url, keyring=lambda: None, revocations=RevocationSet(),
                               clients=None, registry=RegistryClient(channel), events=bus)
        await revoker.revoke_subject_tokens(alice)
        fresh = [await issue(first, alice, "jwt"), await issue(second, alice, "opaque")]
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
            for t in old:
                await until(lambda t=t: active(http, resource_server, t), False)
            for t in others + fresh:
                assert await active(http, resource_server, t)
            assert not (await issuer.introspect(old[0])).active  # the gRPC path too
    finally:
        await bus.close()
        await channel.close()

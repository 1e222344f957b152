"""The registry by domain, against the running registry process: one gRPC service
per domain, domain errors as status codes and back, and batched RPCs where one
poisoned item (a NUL in an id, which Postgres text refuses; an over-long value)
gets its own answer while its neighbours in the same call succeed."""
from __future__ import annotations

import hashlib
import time
import uuid

import grpc
import pytest

from inbound.events.v1 import events_pb2
from inbound.registry.v1 import registry_pb2 as pb
from inbound.registry.v1 import registry_pb2_grpc
from inboundlib import actors
from inboundlib.events import CLIENT_CHANGED, TOKEN_REVOKED
from services.client_registry import server, wire
from services.client_registry.api import (
    ClientSpec,
    ClientUpdate,
    InvalidArgument,
    NotFound,
    OpaqueTokenRecord,
    RevocationCursor,
    RevocationRecord,
)
from services.client_registry.client import RegistryClient
from services.token_issuer.revocations import RevocationSet
from tests.support import GRANT_SERVICE, ISSUER_SERVICE, OPERATOR, eventually, nats_connect

POISON = ["bad\x00id", "x" * 5000, "tab\there"]


@pytest.fixture
async def channel_as(stack):
    """`channel_as(caller)`: a channel to the registry as `caller` (each RPC has its callers)."""
    opened = []

    def open_channel(caller):
        opened.append(stack.channel("client_registry", caller=caller))
        return opened[-1]

    yield open_channel
    for channel in opened:
        await channel.close()


async def test_each_domain_is_its_own_service(channel_as):
    assert server.SERVICE_NAMES[:4] == ("inbound.registry.v1.Clients", "inbound.registry.v1.SigningKeys",
                                        "inbound.registry.v1.Tokens", "inbound.registry.v1.Revocations")
    assert "inbound.registry.v1.RefreshTokens" in server.SERVICE_NAMES
    await registry_pb2_grpc.ClientsStub(channel_as(OPERATOR)).ListClients(pb.ListClientsRequest(), timeout=5)
    channel = channel_as(ISSUER_SERVICE)
    keys = await registry_pb2_grpc.SigningKeysStub(channel).ListSigningKeys(pb.ListSigningKeysRequest(), timeout=5)
    assert keys.keys
    await registry_pb2_grpc.TokensStub(channel).GetOpaqueTokens(pb.GetOpaqueTokensRequest(), timeout=5)
    await registry_pb2_grpc.RevocationsStub(channel).ListRevocations(pb.ListRevocationsRequest(limit=1), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # the old all-in-one service is gone
        await channel.unary_unary("/inbound.registry.v1.ClientRegistry/ListClients")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_domain_errors_travel_as_status_codes_and_come_back_as_domain_errors(channel_as, registry):
    stub = registry_pb2_grpc.ClientsStub(channel_as(OPERATOR))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateClient(pb.UpdateClientRequest(client_id="no-such-client", active=False), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateClient(pb.CreateClientRequest(spec=pb.ClientSpec(name="")), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in caught.value.details()
    with pytest.raises(NotFound):
        await registry.rotate_client_secret("bad\x00id")
    with pytest.raises(InvalidArgument):
        await registry.create_client(ClientSpec(name="x", token_format="nope"))


async def test_get_clients_answers_each_id_even_beside_poisoned_ones(channel_as, make_client):
    channel = channel_as(GRANT_SERVICE)
    (a, _), (b, _) = await make_client(), await make_client()
    ids = [a.client_id, POISON[0], b.client_id, POISON[1], "unknown", POISON[2]]
    reply = await registry_pb2_grpc.ClientsStub(channel).GetClients(pb.GetClientsRequest(client_ids=ids), timeout=5)
    found = [r.client.client_id if r.HasField("client") else None for r in reply.results]
    assert found == [a.client_id, None, b.client_id, None, None, None]


def opaque(client_id: str, **overrides) -> pb.OpaqueToken:
    now = int(time.time())
    record = OpaqueTokenRecord(token_hash=hashlib.sha256(uuid.uuid4().bytes).digest(), jti=uuid.uuid4().hex,
                               client_id=client_id, subject="s", username="", scopes=("a",), audience=("api",),
                               issued_at=now, issued_at_ms=now * 1000 + 123, expires_at=now + 600)
    return wire.opaque_to_pb(OpaqueTokenRecord(**{**record.__dict__, **overrides}))


async def test_storing_and_reading_opaque_tokens_beside_poisoned_ones(channel_as, make_client):
    channel = channel_as(ISSUER_SERVICE)
    client, _ = await make_client()
    good = [opaque(client.client_id) for _ in range(3)]
    batch = [good[0], opaque(client.client_id, subject="nul\x00subject"), good[1],
             opaque("no-such-client"),  # Postgres refuses it (foreign key): found only by storing it
             opaque(client.client_id, scopes=("x" * 5000,)), good[2], opaque(client.client_id, token_hash=b"short")]
    stub = registry_pb2_grpc.TokensStub(channel)
    reply = await stub.StoreOpaqueTokens(pb.StoreOpaqueTokensRequest(tokens=batch), timeout=5)
    assert [bool(e.code) for e in reply.errors] == [False, True, False, True, True, False, True]
    assert reply.errors[1].code == "invalid_argument" and reply.errors[3].code == "internal"

    hashes = [good[0].token_hash, b"\x00" * 5, good[1].token_hash, b"x" * 5000, batch[1].token_hash,
              good[2].token_hash]
    found = (await stub.GetOpaqueTokens(pb.GetOpaqueTokensRequest(token_hashes=hashes), timeout=5)).results
    assert [r.HasField("token") for r in found] == [True, False, True, False, False, True]
    assert found[0].token.issued_at_unix_ms == good[0].issued_at_unix_ms  # to the millisecond


async def test_adding_revocations_beside_poisoned_ones(channel_as):
    channel = channel_as(ISSUER_SERVICE)
    now = int(time.time())

    def revocation(value: str, **overrides) -> pb.Revocation:
        return wire.revocation_to_pb(RevocationRecord(**{
            **dict(kind="jti", value=value, client_id="c", expires_at=now + 600), **overrides}))

    good = [f"poison-neighbour-{uuid.uuid4().hex}" for _ in range(3)]
    batch = [revocation(good[0]), revocation("nul\x00jti"), revocation(good[1]), revocation("x" * 5000),
             revocation("k", kind="nonsense"), revocation("c", kind="client"),  # a cut-off without a time
             revocation(good[2]), revocation("far", expires_at=10**15)]
    stub = registry_pb2_grpc.RevocationsStub(channel)
    reply = await stub.AddRevocations(pb.AddRevocationsRequest(revocations=batch), timeout=5)
    outcomes = [r.WhichOneof("outcome") for r in reply.results]
    assert outcomes == ["id", "error", "id", "error", "error", "error", "id", "error"]
    assert all(r.error.code == "invalid_argument" for r in reply.results if r.HasField("error"))

    listed: set[str] = set()
    cursor = pb.RevocationCursor()
    while True:
        page = await stub.ListRevocations(pb.ListRevocationsRequest(after=cursor), timeout=5)
        listed |= {r.value for r in page.revocations}
        cursor = page.next
        if not page.more:
            break
    assert set(good) <= listed


async def test_deleting_a_client_records_a_client_cut_off(stack, registry, make_client, channel_as):
    """A checker that cannot reach the registry refuses the deleted client's tokens
    from its revocation set alone."""
    client, _ = await make_client()
    issued_ms = int(time.time() * 1000)
    assert await registry.delete_client(client.client_id)
    revocations = RevocationSet()
    cursor = RevocationCursor()
    checker = RegistryClient(channel_as(ISSUER_SERVICE))  # who reads revocations: token_issuer
    while True:
        page = await checker.list_revocations(cursor)
        for record in page.records:
            revocations.apply(record)
        cursor = page.next
        if not page.more:
            break
    assert revocations.client_cut_off_ms(client.client_id) >= issued_ms
    assert revocations.is_revoked(jti="j", grant_id="", client_id=client.client_id, issued_at_ms=issued_ms)
    assert not await registry.delete_client(client.client_id)  # gone: nothing more to do


async def test_registry_changes_name_the_operator_of_the_certificate_not_the_one_in_call_metadata(
        stack, registry, make_client):
    client, _ = await make_client()
    nc = await nats_connect(stack, "token_issuer")  # a listener of both subjects
    seen: list[events_pb2.Event] = []

    async def collect(msg) -> None:
        event = events_pb2.Event()
        event.ParseFromString(msg.data)
        seen.append(event)

    await nc.subscribe(stack.installation.subject(CLIENT_CHANGED), cb=collect)
    await nc.subscribe(stack.installation.subject(TOKEN_REVOKED), cb=collect)
    # The call claims "alice" in its metadata (x-inbound-actor); the certificate says OPERATOR.
    token = actors.actor_var.set(actors.actor(actors.OPERATOR, "alice"))
    try:
        await registry.update_client(client.client_id, ClientUpdate(active=False))
    finally:
        actors.actor_var.reset(token)
    try:
        await eventually(lambda: [e for e in seen if client.client_id in (e.registry_changed.id,
                                                                          e.token_revoked.client_id)],
                         until=lambda mine: len(mine) >= 2, message="the change and the cut-off events")
    finally:
        await nc.close()
    changed = next(e for e in seen if e.registry_changed.id == client.client_id)
    assert (changed.actor.kind, changed.actor.id) == ("operator", OPERATOR.name)
    assert changed.registry_changed.actor == changed.actor
    assert (changed.registry_changed.entity, changed.registry_changed.change) == ("client", "updated")
    revoked = next(e for e in seen if e.token_revoked.client_id == client.client_id)
    assert (revoked.actor.kind, revoked.actor.id) == ("operator", OPERATOR.name)
    assert revoked.token_revoked.revoked_by.startswith(f"operator:{OPERATOR.name}:")

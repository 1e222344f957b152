"""The access table (services/access.py) on the real stack: for every gRPC port and
every RPC it serves, each of Inbound's identities the table does not allow is refused
(PERMISSION_DENIED) and the refusal is audited under the caller's name; secret hashes
reach only the services that verify secrets; the introspection port admits outside
resource servers with an `inbound.introspect` client-credentials token and nobody else."""
from __future__ import annotations

import json

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inbound.issuer.v1 import issuer_pb2, issuer_pb2_grpc
from inboundlib import identity
from inboundlib.hosting import HTTP
from services import access
from services.client_registry.api import ClientSpec
from services.client_registry.client import RegistryClient
from services.modules import ALL_IN_ONE, NAMES, TABLE
from services.token_issuer.client import IssuerClient
from tests.support import (
    GRANT_SERVICE,
    ISSUER_SERVICE,
    OPERATOR,
    RESOURCE_SERVER,
    eventually,
    introspection_channel,
)

EDGE = identity.service("edge")
# Every kind of identity an Inbound installation issues.
IDENTITIES = (*(identity.service(n) for n in NAMES), identity.service(ALL_IN_ONE), OPERATOR, RESOURCE_SERVER)


# Not a valid protobuf message: a served method fails before any handler runs; an unserved one
# answers UNIMPLEMENTED (the probe of test_module_ports).
UNDECODABLE = b"\xff"


async def served(channel) -> list[str]:
    """The RPCs of the contracts a port serves."""
    found = []
    for method in sorted(access.RULES):
        try:
            await channel.unary_unary(method)(UNDECODABLE, timeout=10)
            found.append(method)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                found.append(method)
    return found


async def test_every_port_refuses_every_rpc_to_every_identity_not_on_its_list(stack):
    refused, checked_ports = set(), 0
    for module in TABLE.values():
        for port in module.ports:
            if port.kind == HTTP:
                continue
            async with stack.channel(module.name, kind=port.kind, caller=OPERATOR) as channel:
                methods = await served(channel)
            assert methods, f"{module.name} {port.kind} serves nothing?"
            checked_ports += 1
            for caller in IDENTITIES:
                outsiders = [m for m in methods if not access.RULES[m].admits(caller)]
                async with stack.channel(module.name, kind=port.kind, caller=caller) as channel:
                    for method in outsiders:
                        with pytest.raises(grpc.aio.AioRpcError) as call:
                            await channel.unary_unary(method)(b"", timeout=10)
                        assert call.value.code() == grpc.StatusCode.PERMISSION_DENIED, (module.name, method, caller)
                        refused.add(method)
    assert checked_ports == sum(1 for m in TABLE.values() for p in m.ports if p.kind != HTTP)
    # Every RPC of the contracts was refused to someone (no row admits every identity but health's).
    assert refused == {m for m, rule in access.RULES.items() if not all(rule.admits(c) for c in IDENTITIES)}


async def test_an_anonymous_peer_on_the_introspection_port_gets_health_checks_and_no_watch(stack):
    async with introspection_channel(stack, None) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert (await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as call:
            async for _ in stub.Watch(health_pb2.HealthCheckRequest(), timeout=10):
                pass
    assert call.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def audit_row(stack, caller: str, method: str) -> dict:
    conn = await asyncpg.connect(stack.database_url)
    try:
        row = await eventually(lambda: conn.fetchrow(
            "SELECT detail::text AS detail, actor_kind, actor_id FROM audit_log WHERE type = 'access_denied'"
            " AND detail->>'caller' = $1 AND detail->>'method' = $2 ORDER BY seq DESC LIMIT 1", caller, method),
            message=f"the access_denied audit row of {caller} calling {method}")
        return {**json.loads(row["detail"]), "actor": f"{row['actor_kind']}:{row['actor_id']}"}
    finally:
        await conn.close()


async def test_a_grant_service_cannot_create_clients(stack, registry):
    name = "made-by-a-grant-" + OPERATOR.name
    async with stack.channel("client_registry", caller=GRANT_SERVICE) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as call:
            await RegistryClient(channel).create_client(ClientSpec(name=name, grant_types=["client_credentials"]))
    assert call.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not [c for c in await registry.list_clients() if c.name == name]
    row = await audit_row(stack, "service/client_credentials", "/inbound.registry.v1.Clients/CreateClient")
    assert row["port"] == int(stack.addr("client_registry").rsplit(":", 1)[1])
    assert row["actor"] == "service:client_credentials" and row["denials"] >= 1


async def test_the_edge_cannot_rotate_keys_and_the_refusal_names_it(stack, issuer):
    before = await issuer.list_keys()
    async with stack.channel("token_issuer", caller=EDGE) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as call:
            await IssuerClient(channel).rotate_key()
    assert call.value.code() == grpc.StatusCode.PERMISSION_DENIED and call.value.details() == "not allowed"
    assert await issuer.list_keys() == before
    row = await audit_row(stack, "service/edge", "/inbound.issuer.v1.TokenIssuer/RotateKey")
    assert row["port"] == int(stack.addr("token_issuer").rsplit(":", 1)[1]) and row["actor"] == "service:edge"


async def test_secret_hashes_reach_only_the_services_that_verify_secrets(stack, registry, make_client):
    client, _ = await make_client()
    assert (await registry.get_client(client.client_id)).secret_hash == ""  # the operator's view
    assert all(c.secret_hash == "" for c in await registry.list_clients())
    for verifier in (ISSUER_SERVICE, GRANT_SERVICE):
        async with stack.channel("client_registry", caller=verifier) as channel:
            assert (await RegistryClient(channel).get_client(client.client_id)).secret_hash.startswith("sha256$")


async def introspect_on_the_introspection_port(stack, token: str, metadata=()) -> issuer_pb2.TokenInfo:
    """As an outside resource server without a client certificate would."""
    async with introspection_channel(stack, None) as channel:
        reply = await issuer_pb2_grpc.TokenIssuerStub(channel).Introspect(
            issuer_pb2.IntrospectBatch(requests=[issuer_pb2.IntrospectRequest(token=token)]),
            metadata=metadata, timeout=10)
    return reply.results[0].info


def client_credentials_token(http, client_id: str, secret: str, scope: str) -> str:
    reply = http.post("/oauth/token", data={"grant_type": "client_credentials", "scope": scope},
                      auth=(client_id, secret))
    assert reply.status_code == 200, reply.text
    return reply.json()["access_token"]


async def test_the_introspection_port_admits_a_token_with_the_introspect_scope_and_nobody_else(
        stack, http, make_client, issuer):
    rs, rs_secret = await make_client(scopes=["inbound.introspect", "api.read"])
    app, app_secret = await make_client()
    token = client_credentials_token(http, app.client_id, app_secret, "api.read")
    pass_ = client_credentials_token(http, rs.client_id, rs_secret, "inbound.introspect")
    assert (await introspect_on_the_introspection_port(stack, token, (("authorization", f"Bearer {pass_}"),))).active

    weak = client_credentials_token(http, rs.client_id, rs_secret, "api.read")  # no inbound.introspect
    for metadata in ((), (("authorization", f"Bearer {weak}"),), (("authorization", f"Bearer {token}"),),
                     (("authorization", "Bearer junk"),)):
        with pytest.raises(grpc.aio.AioRpcError) as call:
            await introspect_on_the_introspection_port(stack, token, metadata)
        assert call.value.code() == grpc.StatusCode.PERMISSION_DENIED, metadata

    # A revoked pass stops working at once (the issuer checks it like any token).
    await issuer.revoke_client_tokens(rs.client_id)
    with pytest.raises(grpc.aio.AioRpcError) as call:
        await introspect_on_the_introspection_port(stack, token, (("authorization", f"Bearer {pass_}"),))
    assert call.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_resource_server_certificate_introspects_on_the_main_port(stack, http, make_client):
    app, app_secret = await make_client()
    token = client_credentials_token(http, app.client_id, app_secret, "api.read")
    async with stack.channel("token_issuer", caller=RESOURCE_SERVER) as channel:
        assert (await IssuerClient(channel).introspect(token)).active

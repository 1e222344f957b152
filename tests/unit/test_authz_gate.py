"""The per-RPC access check in grpcx's server interceptor, on a real in-process gRPC
server with mutual TLS (certificates from pki.DevCA): who may call what, who the
actor is, the refusal's audit report and its rate limit, bearer tokens."""
from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inboundlib import actors, authz, grpcx, identity, pki

EDGE, ISSUER = identity.service("edge"), identity.service("token_issuer")
ALICE, RS = identity.operator("alice"), identity.resource_server("rs1")
ECHO = "/test.Echo/Call"
ADMIN = "/test.Echo/Admin"
UNLISTED = "/test.Echo/Unlisted"
BOOM, BOOM_STREAM = "/test.Echo/Boom", "/test.Echo/BoomStream"
SECRET_TEXT = "dsn=postgres://runtime:hunter2@db"  # what an exception's text may hold

POLICY = authz.Policy(rules={
    ECHO: authz.callers(EDGE, ISSUER) | authz.kinds(identity.RESOURCE_SERVER),
    ADMIN: authz.kinds(identity.OPERATOR),
    BOOM: authz.kinds(identity.OPERATOR),
    BOOM_STREAM: authz.kinds(identity.OPERATOR),
    "/grpc.health.v1.Health/Check": authz.ANYONE,
    # Watch has no rule: a streaming handler is checked too.
}, relays=frozenset({ISSUER}))


async def echo(request: bytes, context) -> bytes:
    """Who the server thinks is calling, and as whom."""
    who = actors.current()
    return f"{authz.caller_var.get()}|{who}".encode()


async def boom(request: bytes, context) -> bytes:
    raise RuntimeError(SECRET_TEXT)


async def boom_stream(request: bytes, context):
    yield b"first"
    raise RuntimeError(SECRET_TEXT)


class Reports(list):
    def __call__(self, caller, method, port, denials):
        self.append((caller, method, port, denials))


async def good_token(token: str):
    return (identity.resource_server("c0ffee"), actors.actor(actors.CLIENT, "c0ffee")) if token == "good" else None


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    ca = pki.DevCA(tmp_path_factory.mktemp("ca"))
    files = {c: ca.issue_for(c) for c in (EDGE, ISSUER, ALICE, RS)}
    files["server"] = ca.issue("server", dns_names=("localhost",))
    return ca, files


async def serve(ca, *, require_client_cert: bool, bearer=None):
    _, files = ca
    reports = Reports()
    gate = authz.Gate(POLICY, 4242, reports, bearer=bearer)
    server = grpc.aio.server(interceptors=[grpcx._ServerInterceptor((), gate)])
    handlers = {name.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(echo)
                for name in (ECHO, ADMIN, UNLISTED)}
    handlers["Boom"] = grpc.unary_unary_rpc_method_handler(boom)
    handlers["BoomStream"] = grpc.unary_stream_rpc_method_handler(boom_stream)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    creds = grpc.ssl_server_credentials([(files["server"].key.read_bytes(), files["server"].cert.read_bytes())],
                                        root_certificates=files["server"].ca.read_bytes(),
                                        require_client_auth=require_client_cert)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, port, reports, gate


def channel(ca, port: int, caller=None) -> grpc.aio.Channel:
    dev_ca, files = ca
    key = files[caller].key.read_bytes() if caller else None
    cert = files[caller].cert.read_bytes() if caller else None
    creds = grpc.ssl_channel_credentials(dev_ca.ca_file.read_bytes(), key, cert)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")])


@pytest.fixture(scope="module")
async def mtls(ca):
    server, port, reports, gate = await serve(ca, require_client_cert=True)
    yield port, reports, gate
    await server.stop(0)


async def call(ca, port, caller, method=ECHO, metadata=()):
    async with channel(ca, port, caller) as ch:
        return (await ch.unary_unary(method)(b"", metadata=metadata, timeout=10)).decode()


async def test_an_allowed_caller_is_served_as_itself(ca, mtls):
    port, _, _ = mtls
    assert await call(ca, port, EDGE) == "service/edge|service:edge"
    assert await call(ca, port, RS) == "resource_server/rs1|resource_server:rs1"


async def test_a_caller_not_on_the_list_is_refused_and_reported_by_name(ca, mtls):
    port, reports, _ = mtls
    reports.clear()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(ca, port, EDGE, ADMIN)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == "not allowed"  # generic: it names neither the rule nor the caller
    assert reports == [(EDGE, ADMIN, 4242, 1)]


async def test_an_rpc_without_a_rule_is_refused_even_to_operators(ca, mtls):
    port, _, _ = mtls
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(ca, port, ALICE, UNLISTED)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_streaming_handlers_are_checked_too(ca, mtls):
    port, _, _ = mtls
    async with channel(ca, port, EDGE) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        assert (await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Watch(health_pb2.HealthCheckRequest(), timeout=10):
                pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_operator_is_the_one_its_certificate_names_whatever_the_metadata_says(ca, mtls):
    port, _, _ = mtls
    claimed = ((actors.ACTOR_METADATA_KEY, "operator:mallory"),)
    assert await call(ca, port, ALICE, ADMIN, claimed) == "operator/alice|operator:alice"


async def test_only_a_relay_may_name_someone_else_as_the_actor(ca, mtls):
    port, _, _ = mtls
    claimed = ((actors.ACTOR_METADATA_KEY, "operator:alice"),)
    assert await call(ca, port, ISSUER, ECHO, claimed) == "service/token_issuer|operator:alice"
    assert await call(ca, port, ISSUER) == "service/token_issuer|service:token_issuer"
    assert await call(ca, port, EDGE, ECHO, claimed) == "service/edge|service:edge"


def test_refusals_are_reported_once_per_caller_and_method_per_interval():
    reports = Reports()
    now = [100.0]
    gate = authz.Gate(POLICY, 1, reports, interval=10.0, clock=lambda: now[0])
    for _ in range(1000):
        gate.denied(EDGE, ADMIN)
    gate.denied(None, ADMIN)
    gate.denied(EDGE, ECHO)
    assert reports == [(EDGE, ADMIN, 1, 1), (None, ADMIN, 1, 1), (EDGE, ECHO, 1, 1)]
    now[0] += 9.9
    gate.denied(EDGE, ADMIN)
    assert len(reports) == 3
    now[0] += 0.1
    gate.denied(EDGE, ADMIN)
    assert reports[-1] == (EDGE, ADMIN, 1, 1001)  # this one and the 1000 not reported before


async def test_without_a_certificate_only_open_rpcs_and_good_bearer_tokens_pass(ca):
    server, port, reports, _ = await serve(ca, require_client_cert=False, bearer=good_token)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(ca, port, None)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reports[-1] == (None, ECHO, 4242, 1)
        for bad in ("Bearer bad", "Basic good", "good", "Bearer "):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(ca, port, None, metadata=(("authorization", bad),))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, bad
        for good in ("Bearer good", "bearer good"):
            assert await call(ca, port, None, metadata=(("authorization", good),)) == \
                "resource_server/c0ffee|client:c0ffee"
        # A token admits its holder to what resource servers may call, not more.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(ca, port, None, ADMIN, metadata=(("authorization", "Bearer good"),))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with channel(ca, port) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)


async def test_a_port_without_a_token_check_ignores_bearer_tokens(ca):
    server, port, _, _ = await serve(ca, require_client_cert=False)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(ca, port, None, metadata=(("authorization", "Bearer good"),))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop(0)


def test_a_decision_is_made_once_per_peer_identity_and_method():
    gate = authz.Gate(POLICY, 1, Reports())
    auth = {identity.SPIFFE_PROPERTY: [EDGE.spiffe_id().encode()]}
    first = gate.decide(ECHO, auth)
    assert first.allowed and first.caller == EDGE and gate.decide(ECHO, dict(auth)) is first
    assert not gate.decide(ADMIN, auth).allowed
    other_domain = {identity.SPIFFE_PROPERTY: [EDGE.spiffe_id("elsewhere").encode()]}
    assert gate.decide(ECHO, other_domain).caller is None and not gate.decide(ECHO, other_domain).allowed


def test_the_refusal_event_names_the_caller_and_the_audit_log_stores_it_so():
    from inboundlib.events import ACCESS_DENIED
    from services.audit.log import decode

    published = []

    class Bus:
        def publish(self, subject, event, *, low_priority=False):
            published.append((subject, event, low_priority))

    report = authz.denial_reporter(Bus())
    report(EDGE, "/inbound.issuer.v1.TokenIssuer/RotateKey", 50052, 3)
    report(None, ADMIN, 50053, 1)
    (subject, event, low), (_, anonymous, _) = published
    assert subject == ACCESS_DENIED and low  # a caller can cause it at will
    record = decode(event.SerializeToString(), fallback_id="x", fallback_time_ms=1)
    assert record.type == "access_denied" and (record.actor_kind, record.actor_id) == ("service", "edge")
    assert json.loads(record.detail_json) == {"caller": "service/edge", "method": "/inbound.issuer.v1.TokenIssuer/RotateKey",
                             "port": 50052, "denials": 3}
    assert anonymous.access_denied.caller == "unauthenticated" and not anonymous.HasField("actor")


async def test_an_unexpected_exception_is_a_generic_internal_error_with_its_detail_only_in_the_log(ca, mtls, caplog):
    port, _, _ = mtls
    with caplog.at_level("ERROR", logger="inboundlib.grpcx"):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(ca, port, ALICE, BOOM)
        async with channel(ca, port, ALICE) as ch:
            replies = []
            with pytest.raises(grpc.aio.AioRpcError) as failed_stream:
                async for reply in ch.unary_stream(BOOM_STREAM)(b"", timeout=10):
                    replies.append(reply)
    for error in (failed.value, failed_stream.value):
        assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, "internal error")
        assert "hunter2" not in str(error) and "RuntimeError" not in str(error)
    assert replies == [b"first"]
    logged = [r for r in caplog.records if r.exc_info and SECRET_TEXT in str(r.exc_info[1])]
    assert [r.method for r in logged] == [BOOM, BOOM_STREAM]

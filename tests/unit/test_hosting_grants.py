"""hosting: the services of a process reach each grant in process when it is hosted
there, and over gRPC otherwise; a grant hosted elsewhere is never dropped."""
from __future__ import annotations

import asyncio

from inboundlib import tls
from inboundlib.config import Env
from inboundlib.events import NatsSettings
from inboundlib.hosting import GRPC, HTTP, Context, Module, Port, _Host


def table() -> dict[str, Module]:
    rows = (
        Module("grant_a", "services.grant_process", ports=(Port(GRPC, "INBOUND_GRPC_PORT", 50061),), grant_type="a"),
        Module("grant_b", "services.grant_process", ports=(Port(GRPC, "INBOUND_GRPC_PORT", 50062),), grant_type="b"),
        Module("edge", "services.edge.assembly", calls_grants=True, ports=(Port(HTTP, "INBOUND_HTTP_PORT", 8080),)),
    )
    return {m.name: m for m in rows}


async def test_a_grant_hosted_elsewhere_is_reached_over_grpc_beside_one_hosted_here():
    modules = table()
    host = _Host(modules, tls.PLAINTEXT_CONFIG)  # no connection is made: plaintext is enough

    class InProcess:
        api = object()

    host.components["grant_a"] = InProcess()
    ctx = Context(module=modules["edge"], env=Env({}), events=None, nats=NatsSettings(), stop=asyncio.Event(),
                  ports={}, host="127.0.0.1", _host=host)
    grants = host.grants(ctx)
    try:
        assert grants["a"] is InProcess.api
        assert "b" in grants and grants["b"] is not InProcess.api  # a gRPC client, not dropped
    finally:
        for channel in host.channels.values():
            await channel.close()

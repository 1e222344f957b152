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


async def test_a_service_called_later_is_resolved_at_its_first_use():
    """Module.calls_later: a service that starts after its caller (it calls the caller
    too) is the in-process component once it runs; until then a call is
    temporarily_unavailable, not a connection to a process that does not exist."""
    import pytest

    from inboundlib.hosting import in_dependency_order
    from inboundlib.oauth.errors import TemporarilyUnavailable

    rows = (
        Module("issuer", "services.token_issuer.assembly", ports=(Port(GRPC, "INBOUND_GRPC_PORT", 50052),),
               address_env="INBOUND_ISSUER_ADDR", calls_later=("foreign",)),
        Module("foreign", "services.grant_process", depends_on=("issuer",),
               ports=(Port(GRPC, "INBOUND_GRPC_PORT", 50066),), grant_type="f", address_env="INBOUND_FOREIGN_ADDR"),
    )
    modules = {m.name: m for m in rows}
    assert in_dependency_order(modules, ["foreign", "issuer"]) == ["issuer", "foreign"]  # no cycle
    host = _Host(modules, tls.PLAINTEXT_CONFIG, ["issuer", "foreign"])
    ctx = Context(module=modules["issuer"], env=Env({}), events=None, nats=NatsSettings(), stop=asyncio.Event(),
                  ports={}, host="127.0.0.1", _host=host)
    foreign = ctx.later("foreign")
    with pytest.raises(TemporarilyUnavailable):
        foreign.introspect_foreign  # noqa: B018 (not started yet)

    class Api:
        async def introspect_foreign(self):
            return "in process"

    class Component:
        api = Api()

    host.components["foreign"] = Component()
    assert await foreign.introspect_foreign() == "in process"
    with pytest.raises(ValueError):
        ctx.later("issuer")  # not declared


async def test_a_service_called_later_from_another_process_is_its_grpc_client():
    from services.grant_process import connect  # noqa: F401 (the grant client's module loads)

    rows = (
        Module("issuer", "services.token_issuer.assembly", ports=(Port(GRPC, "INBOUND_GRPC_PORT", 50052),),
               calls_later=("foreign",)),
        Module("foreign", "services.grant_process", depends_on=("issuer",),
               ports=(Port(GRPC, "INBOUND_GRPC_PORT", 50066),), grant_type="f", address_env="INBOUND_FOREIGN_ADDR"),
    )
    modules = {m.name: m for m in rows}
    host = _Host(modules, tls.PLAINTEXT_CONFIG, ["issuer"])
    ctx = Context(module=modules["issuer"], env=Env({"INBOUND_FOREIGN_ADDR": "127.0.0.1:1"}), events=None,
                  nats=NatsSettings(), stop=asyncio.Event(), ports={}, host="127.0.0.1", _host=host)
    try:
        assert ctx.later("foreign").grant_type == "f"  # the GrantClient at INBOUND_FOREIGN_ADDR
        assert list(host.channels) == ["foreign@127.0.0.1:1"]
    finally:
        for channel in host.channels.values():
            await channel.close()

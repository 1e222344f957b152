"""Each gRPC port serves exactly what the module table's layout says, in both
modes: the separate processes and the one process (services.all_in_one) answer
the same set of RPCs on each (service, port), and the introspection-only port
answers Introspect and the JWKS alone (registry and admin RPCs: UNIMPLEMENTED)."""
from __future__ import annotations

import importlib
from pathlib import Path

import grpc
import pytest

import inbound
from inboundlib import hosting
from services.client_registry.client import RegistryClient
from services.modules import MODULES
from services.token_issuer.client import IssuerClient
from tests.support import OPERATOR, introspection_channel, introspection_pass

# Not a valid protobuf message: a served method fails to decode it (INTERNAL) before any
# handler runs, so probing has no side effect; an unserved one answers UNIMPLEMENTED.
UNDECODABLE = b"\xff"


def _all_methods() -> list[str]:
    methods = []
    root = Path(list(inbound.__path__)[0])
    for path in root.rglob("*_pb2.py"):  # namespace packages: pkgutil would not walk them
        module = "inbound." + ".".join(path.relative_to(root).with_suffix("").parts)
        for service in importlib.import_module(module).DESCRIPTOR.services_by_name.values():
            methods += [f"/{service.full_name}/{m.name}" for m in service.methods]
    return sorted(methods)


GRPC_PORTS = [(m.name, p.kind) for m in MODULES for p in m.ports if p.kind != hosting.HTTP]


async def _served(stack, name: str, kind: str | None = None) -> frozenset[str]:
    channel = stack.channel(name, kind=kind, caller=OPERATOR)
    served = set()
    try:
        for method in _all_methods():
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            try:
                await call(UNDECODABLE, timeout=5)
                served.add(method)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    served.add(method)
    finally:
        await channel.close()
    return frozenset(served)


async def test_the_probe_tells_served_from_unserved(separate_stack):
    assert len(_all_methods()) > 10
    served = await _served(separate_stack, "token_issuer")
    assert "/inbound.issuer.v1.TokenIssuer/Issue" in served
    assert not {m for m in served if not m.startswith("/inbound.issuer.")}


async def test_each_port_serves_the_same_rpcs_in_both_modes(separate_stack, single_stack):
    for name, kind in GRPC_PORTS:
        separate = await _served(separate_stack, name, kind)
        assert separate, f"{name} {kind} serves nothing"
        assert await _served(single_stack, name, kind) == separate, f"{name} {kind}: one process differs"


async def test_the_introspection_port_serves_introspection_only(separate_stack, single_stack):
    for s in (separate_stack, single_stack):
        assert await _served(s, "token_issuer", hosting.INTROSPECTION) == {"/inbound.issuer.v1.TokenIssuer/Introspect",
                                       "/inbound.issuer.v1.TokenIssuer/GetJwks"}
        # A resource server outside Inbound: a token there, no client certificate.
        channel = introspection_channel(s, await introspection_pass(s))
        try:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await RegistryClient(channel).list_clients()
            assert denied.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await IssuerClient(channel).rotate_key()
            assert denied.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert (await IssuerClient(channel).jwks())["keys"]
        finally:
            await channel.close()

"""The registry over gRPC, for other services and inboundctl: same interface as Registry.

Hot-path calls (client lookups, opaque token writes) are coalesced into
batches; admin calls go one by one. gRPC INVALID_ARGUMENT / NOT_FOUND come
back as the registry's own exceptions.
"""
from __future__ import annotations

import asyncio

import grpc

from inbound.registry.v1 import registry_pb2 as pb
from inbound.registry.v1 import registry_pb2_grpc
from inboundlib.batching import Coalescer
from inboundlib.grpcx import request_metadata
from services.client_registry import wire
from services.client_registry.api import (
    ClientRecord,
    ClientSpec,
    ClientUpdate,
    InvalidArgument,
    NotFound,
    OpaqueTokenRecord,
    RevocationRecord,
    SigningKeyRecord,
)

ADMIN_TIMEOUT = 10.0
HOT_TIMEOUT = 3.0


def _translate(exc: grpc.aio.AioRpcError) -> Exception:
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(exc.details())
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return NotFound(exc.details())
    return exc


class RegistryClient:
    def __init__(self, channel: grpc.aio.Channel):
        self.stub = registry_pb2_grpc.ClientRegistryStub(channel)
        self._lookups = Coalescer("registry.GetClients", self._send_lookups, max_batch=64)
        self._opaque = Coalescer("registry.StoreOpaqueTokens", self._send_opaque, max_batch=64)
        self._opaque_lookups = Coalescer("registry.GetOpaqueTokens", self._send_opaque_lookups, max_batch=64)

    async def _admin(self, method, request):
        try:
            return await method(request, timeout=ADMIN_TIMEOUT, metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from None

    async def create_client(self, spec: ClientSpec) -> tuple[ClientRecord, str]:
        reply = await self._admin(self.stub.CreateClient, pb.CreateClientRequest(spec=wire.spec_to_pb(spec)))
        return wire.client_from_pb(reply.client), reply.client_secret

    async def _send_lookups(self, client_ids: list[str], timeout: float) -> list[ClientRecord | None]:
        reply = await self.stub.GetClients(pb.GetClientsRequest(client_ids=client_ids), timeout=timeout)
        return [wire.client_from_pb(r.client) if r.HasField("client") else None for r in reply.results]

    async def get_client(self, client_id: str) -> ClientRecord | None:
        return await self._lookups.submit(client_id, HOT_TIMEOUT)

    async def get_clients(self, client_ids: list[str]) -> list[ClientRecord | None]:
        return list(await asyncio.gather(*(self.get_client(client_id) for client_id in client_ids)))

    async def list_clients(self) -> list[ClientRecord]:
        reply = await self._admin(self.stub.ListClients, pb.ListClientsRequest())
        return [wire.client_from_pb(c) for c in reply.clients]

    async def update_client(self, client_id: str, update: ClientUpdate) -> ClientRecord:
        reply = await self._admin(self.stub.UpdateClient, wire.update_to_pb(client_id, update))
        return wire.client_from_pb(reply.client)

    async def delete_client(self, client_id: str) -> bool:
        reply = await self._admin(self.stub.DeleteClient, pb.DeleteClientRequest(client_id=client_id))
        return reply.deleted

    async def rotate_client_secret(self, client_id: str) -> tuple[ClientRecord, str]:
        reply = await self._admin(self.stub.RotateClientSecret, pb.RotateClientSecretRequest(client_id=client_id))
        return wire.client_from_pb(reply.client), reply.client_secret

    async def list_signing_keys(self) -> list[SigningKeyRecord]:
        reply = await self._admin(self.stub.ListSigningKeys, pb.ListSigningKeysRequest())
        return [wire.key_from_pb(k) for k in reply.keys]

    async def add_signing_key(self, key: SigningKeyRecord, only_if_none: bool) -> bool:
        reply = await self._admin(self.stub.AddSigningKey,
                                  pb.AddSigningKeyRequest(key=wire.key_to_pb(key), only_if_none=only_if_none))
        return reply.added

    async def _send_opaque(self, tokens: list[OpaqueTokenRecord], timeout: float) -> list[str | None]:
        reply = await self.stub.StoreOpaqueTokens(
            pb.StoreOpaqueTokensRequest(tokens=[wire.opaque_to_pb(t) for t in tokens]), timeout=timeout)
        return [e.description or e.code or None for e in reply.errors]

    async def store_opaque_token(self, token: OpaqueTokenRecord) -> str | None:
        return await self._opaque.submit(token, HOT_TIMEOUT)

    async def store_opaque_tokens(self, tokens: list[OpaqueTokenRecord]) -> list[str | None]:
        return list(await asyncio.gather(*(self.store_opaque_token(t) for t in tokens)))

    async def _send_opaque_lookups(self, hashes: list[bytes], timeout: float) -> list[OpaqueTokenRecord | None]:
        reply = await self.stub.GetOpaqueTokens(pb.GetOpaqueTokensRequest(token_hashes=hashes), timeout=timeout)
        return [wire.opaque_from_pb(r.token) if r.HasField("token") else None for r in reply.results]

    async def get_opaque_token(self, token_hash: bytes) -> OpaqueTokenRecord | None:
        return await self._opaque_lookups.submit(token_hash, HOT_TIMEOUT)

    async def get_opaque_tokens(self, token_hashes: list[bytes]) -> list[OpaqueTokenRecord | None]:
        return list(await asyncio.gather(*(self.get_opaque_token(h) for h in token_hashes)))

    async def add_revocations(self, revocations: list[RevocationRecord]) -> list[int]:
        reply = await self._admin(self.stub.AddRevocations, pb.AddRevocationsRequest(
            revocations=[wire.revocation_to_pb(r) for r in revocations]))
        return list(reply.ids)

    async def list_revocations(self, after_id: int = 0, limit: int = 10_000) -> list[RevocationRecord]:
        reply = await self._admin(self.stub.ListRevocations, pb.ListRevocationsRequest(after_id=after_id, limit=limit))
        return [wire.revocation_from_pb(r) for r in reply.revocations]

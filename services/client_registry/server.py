"""gRPC servicer for client_registry: protobuf in, domain calls, protobuf out."""
from __future__ import annotations

import grpc

from inbound.common.v1 import common_pb2
from inbound.registry.v1 import registry_pb2 as pb
from inbound.registry.v1 import registry_pb2_grpc
from services.client_registry import wire
from services.client_registry.api import ClientRegistryApi, InvalidArgument, NotFound

SERVICE_NAME = "inbound.registry.v1.ClientRegistry"
MAX_BATCH = 256


class ClientRegistryServicer(registry_pb2_grpc.ClientRegistryServicer):
    def __init__(self, registry: ClientRegistryApi):
        self.registry = registry

    async def _call(self, context, coro):
        try:
            return await coro
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such client")

    async def CreateClient(self, request, context):
        client, secret = await self._call(context, self.registry.create_client(wire.spec_from_pb(request.spec)))
        return pb.CreateClientResponse(client=wire.client_to_pb(client), client_secret=secret)

    async def GetClients(self, request, context):
        if len(request.client_ids) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} ids a call")
        found = await self.registry.get_clients(list(request.client_ids))
        return pb.GetClientsResponse(results=[
            pb.ClientLookup(client=wire.client_to_pb(c)) if c else pb.ClientLookup() for c in found])

    async def ListClients(self, request, context):
        return pb.ListClientsResponse(clients=[wire.client_to_pb(c) for c in await self.registry.list_clients()])

    async def UpdateClient(self, request, context):
        client = await self._call(context, self.registry.update_client(request.client_id,
                                                                       wire.update_from_pb(request)))
        return pb.UpdateClientResponse(client=wire.client_to_pb(client))

    async def DeleteClient(self, request, context):
        return pb.DeleteClientResponse(deleted=await self.registry.delete_client(request.client_id))

    async def RotateClientSecret(self, request, context):
        client, secret = await self._call(context, self.registry.rotate_client_secret(request.client_id))
        return pb.RotateClientSecretResponse(client=wire.client_to_pb(client), client_secret=secret)

    async def ListSigningKeys(self, request, context):
        return pb.ListSigningKeysResponse(keys=[wire.key_to_pb(k) for k in await self.registry.list_signing_keys()])

    async def AddSigningKey(self, request, context):
        added = await self.registry.add_signing_key(wire.key_from_pb(request.key), request.only_if_none)
        return pb.AddSigningKeyResponse(added=added)

    async def StoreOpaqueTokens(self, request, context):
        if len(request.tokens) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} tokens a call")
        errors = await self.registry.store_opaque_tokens([wire.opaque_from_pb(t) for t in request.tokens])
        return pb.StoreOpaqueTokensResponse(errors=[
            common_pb2.OAuthError(code="server_error", description=e) if e else common_pb2.OAuthError()
            for e in errors])

    async def GetOpaqueTokens(self, request, context):
        if len(request.token_hashes) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} hashes a call")
        found = await self.registry.get_opaque_tokens(list(request.token_hashes))
        return pb.GetOpaqueTokensResponse(results=[
            pb.OpaqueTokenLookup(token=wire.opaque_to_pb(t)) if t else pb.OpaqueTokenLookup() for t in found])

    async def AddRevocations(self, request, context):
        ids = await self._call(context, self.registry.add_revocations(
            [wire.revocation_from_pb(r) for r in request.revocations]))
        return pb.AddRevocationsResponse(ids=ids)

    async def ListRevocations(self, request, context):
        limit = request.limit if 0 < request.limit <= 10_000 else 10_000
        found = await self.registry.list_revocations(request.after_id, limit)
        return pb.ListRevocationsResponse(revocations=[wire.revocation_to_pb(r) for r in found])


def add_to_server(registry: ClientRegistryApi, server: grpc.aio.Server) -> None:
    registry_pb2_grpc.add_ClientRegistryServicer_to_server(ClientRegistryServicer(registry), server)


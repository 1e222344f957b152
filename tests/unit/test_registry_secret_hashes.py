"""The registry hands a client's secret hash only to the callers that verify client
secrets (services/access.py SECRET_VERIFIERS: grant services and token_issuer);
every other caller gets the record without it."""
from __future__ import annotations

import pytest

from inbound.registry.v1 import registry_pb2 as pb
from inboundlib import authz, identity
from inboundlib.oauth.client_auth import hash_client_secret
from services.client_registry.server import ClientsServicer
from tests.fakes import FakeClients, client_record

HASH = hash_client_secret("s3cret-of-every-test-client-0123")


class Clients(FakeClients):
    async def list_clients(self):
        return list(self.clients.values())

    # What an operator's changes answer with: the record (and, once, a new secret).
    async def create_client(self, spec):
        return self.clients["app"], "new-secret"

    async def update_client(self, client_id, update):
        return self.clients[client_id]

    async def rotate_client_secret(self, client_id, token_endpoint_auth_method=None):
        return self.clients[client_id], "new-secret"


async def hashes_seen_by(caller) -> tuple[str, str]:
    servicer = ClientsServicer(Clients(client_record(secret_hash=HASH)))
    token = authz.caller_var.set(caller)
    try:
        got = await servicer.GetClients(pb.GetClientsRequest(client_ids=["app"]), None)
        listed = await servicer.ListClients(pb.ListClientsRequest(), None)
    finally:
        authz.caller_var.reset(token)
    assert got.results[0].client.client_id == listed.clients[0].client_id == "app"
    return got.results[0].client.secret_hash, listed.clients[0].secret_hash


@pytest.mark.parametrize("caller", [identity.service("token_issuer"), identity.service("client_credentials"),
                                    identity.service("all_in_one")])
async def test_services_that_verify_secrets_get_the_hash(caller):
    assert await hashes_seen_by(caller) == (HASH, HASH)


@pytest.mark.parametrize("caller", [identity.operator("alice"), identity.service("edge"), identity.service("audit"),
                                    identity.resource_server("rs"), None])
async def test_everyone_else_gets_the_record_without_it(caller):
    assert await hashes_seen_by(caller) == ("", "")


async def test_an_operators_changes_answer_with_the_record_without_it():
    servicer = ClientsServicer(Clients(client_record(secret_hash=HASH)))
    token = authz.caller_var.set(identity.operator("alice"))
    try:
        created = await servicer.CreateClient(pb.CreateClientRequest(), None)
        updated = await servicer.UpdateClient(pb.UpdateClientRequest(client_id="app"), None)
        rotated = await servicer.RotateClientSecret(pb.RotateClientSecretRequest(client_id="app"), None)
    finally:
        authz.caller_var.reset(token)
    assert created.client_secret == rotated.client_secret == "new-secret"  # the operator's to hand on, once
    assert [r.client.client_id for r in (created, updated, rotated)] == ["app"] * 3
    assert [r.client.secret_hash for r in (created, updated, rotated)] == ["", "", ""]

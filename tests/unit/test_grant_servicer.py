"""The GrantService servicer: each item of a batch answered on its own, within its own budget."""
from __future__ import annotations

import asyncio

from inbound.common.v1 import common_pb2
from inbound.grant.v1 import grant_pb2 as pb
from inboundlib import budget
from inboundlib.grants.api import GrantParameters, TokenResponse
from inboundlib.grants.server import GrantServicer
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, ClientCredentials, hash_client_secret
from inboundlib.wire import credentials_to_pb
from tests.fakes import BatchedClients, FakeClients, PostgresLikeClients, client_record

SECRET = "s3cret-of-every-test-client-0123"


class RecordingHandler:
    grant_type = "client_credentials"
    parameters = GrantParameters(single=frozenset({"scope"}))
    authenticates_client = False

    def __init__(self, *, fail_for: str = ""):
        self.calls: list[str] = []
        self.budgets: list[float] = []
        self.fail_for = fail_for

    async def handle(self, request, client):
        self.calls.append(client.client_id)
        self.budgets.append(budget.remaining(float("inf")))
        if client.client_id == self.fail_for:
            raise RuntimeError("a bug in this one item's path")
        await asyncio.sleep(0)
        return TokenResponse(access_token=f"token-{client.client_id}", token_type="Bearer", expires_in=60)


def records(*ids: str):
    return [client_record(client_id=i, name=i, secret_hash=hash_client_secret(SECRET)) for i in ids]


def item(client_id: str, *, timeout_ms: int = 2000) -> pb.TokenRequest:
    return pb.TokenRequest(meta=common_pb2.RequestMeta(request_id=f"r-{client_id!r}", timeout_ms=timeout_ms),
                           grant_type="client_credentials",
                           client=credentials_to_pb(ClientCredentials(CLIENT_SECRET_BASIC, client_id, SECRET)))


async def token_batch(servicer: GrantServicer, items) -> list[pb.TokenResult]:
    return list((await servicer.Token(pb.TokenBatch(requests=items), None)).results)


async def test_a_grant_type_the_service_does_not_serve_is_unsupported_grant_type():
    handler = RecordingHandler()
    result = await GrantServicer(handler, FakeClients())._one(pb.TokenRequest(grant_type="password"))
    assert result.HasField("error") and result.error.code == "unsupported_grant_type"
    assert handler.calls == []


async def test_a_nul_in_one_client_id_fails_only_that_item_of_a_batch():
    """The lookups of one batch share one registry call (as through RegistryClient); a NUL
    there fails the whole call. The runner refuses the malformed id before any lookup."""
    source = PostgresLikeClients(*records("a", "b", "c"))
    servicer = GrantServicer(RecordingHandler(), BatchedClients(source))
    results = await token_batch(servicer, [item("a"), item("abc\x00"), item("b"), item("c")])
    assert [r.WhichOneof("outcome") for r in results] == ["token", "error", "token", "token"]
    assert results[1].error.code == "invalid_client"
    assert "abc\x00" not in source.lookups


async def test_an_unexpected_failure_in_one_item_is_that_items_server_error_alone():
    handler = RecordingHandler(fail_for="b")
    results = await token_batch(GrantServicer(handler, FakeClients(*records("a", "b", "c"))),
                                [item("a"), item("b"), item("c")])
    assert [r.WhichOneof("outcome") for r in results] == ["token", "error", "token"]
    assert results[1].error.code == "server_error"


async def test_an_item_whose_budget_has_passed_is_answered_without_work():
    handler = RecordingHandler()
    source = FakeClients(*records("a"))
    results = await token_batch(GrantServicer(handler, source), [item("a", timeout_ms=-1)])
    assert results[0].error.code == "temporarily_unavailable"
    assert handler.calls == [] and source.lookups == []


async def test_the_item_is_handled_within_the_budget_it_carries():
    handler = RecordingHandler()
    await token_batch(GrantServicer(handler, FakeClients(*records("a"))), [item("a", timeout_ms=300)])
    assert 0 < handler.budgets[0] <= 0.3

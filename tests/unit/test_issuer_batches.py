"""token_issuer's batched RPCs (Issue, Introspect, Revoke): one poisoned item among
good ones fails alone, whatever breaks in it; an item out of time is answered
without work."""
from __future__ import annotations

import os
import time

import jwt
import pytest

from inbound.common.v1 import common_pb2
from inbound.issuer.v1 import issuer_pb2 as pb
from inboundlib import authz, identity
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, ClientCredentials, hash_client_secret
from inboundlib.oauth.errors import KeysPending
from inboundlib.wire import credentials_to_pb
from services.token_issuer.introspection import TokenChecker
from services.token_issuer.keys import KeyEncryptor, KeyRing, new_key_record, open_key_record
from services.token_issuer.revocations import RevocationSet
from services.token_issuer.server import TokenIssuerServicer
from tests.fakes import BatchedClients, FakeIssuer, FakeRegistry, PostgresLikeClients, client_record

ISSUER = "https://issuer.example"
SECRET = "introspecting-client-secret-0123456"
ENC = KeyEncryptor(os.urandom(32))
KEY = open_key_record(new_key_record("ES256", ENC), ENC)
RING = KeyRing([KEY])


def mint(client_id: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "sub": client_id, "client_id": client_id, "scope": "api.read",
                       "jti": os.urandom(8).hex(), "iat": now, "exp": now + 600},
                      KEY.private_key, algorithm="ES256", headers={"kid": KEY.kid, "typ": "at+jwt"})


def servicer(issuer=None) -> tuple[TokenIssuerServicer, PostgresLikeClients, FakeRegistry]:
    source = PostgresLikeClients(*(client_record(client_id=c, name=c, secret_hash=hash_client_secret(SECRET))
                                   for c in ("a", "b", "c")))
    registry = FakeRegistry()
    checker = TokenChecker(issuer=ISSUER, keyring=lambda: RING, revocations=RevocationSet(),
                           clients=BatchedClients(source), registry=registry)
    return TokenIssuerServicer(issuer or FakeIssuer(), checker), source, registry


def meta(timeout_ms: int = 2000) -> common_pb2.RequestMeta:
    return common_pb2.RequestMeta(request_id="r", timeout_ms=timeout_ms)


def caller(client_id: str):
    return credentials_to_pb(ClientCredentials(CLIENT_SECRET_BASIC, client_id, SECRET))


async def test_introspect_batch_with_a_nul_caller_among_good_ones():
    svc, source, _ = servicer()
    items = [pb.IntrospectRequest(meta=meta(), token=mint(c), caller=caller(c)) for c in ("a", "b\x00", "c")]
    results = (await svc.Introspect(pb.IntrospectBatch(requests=items), None)).results
    assert results[0].info.active and results[2].info.active
    assert results[1].error.code == "invalid_client"
    assert not any("\x00" in i for i in source.lookups)


async def test_revoke_batch_with_a_nul_caller_among_good_ones():
    svc, _, registry = servicer()
    items = [pb.RevokeRequest(meta=meta(), token=mint(c), caller=caller(c)) for c in ("a", "b\x00", "c")]
    results = (await svc.Revoke(pb.RevokeBatch(requests=items), None)).results
    assert [r.HasField("error") for r in results] == [False, True, False]
    assert results[1].error.code == "invalid_client"
    assert sorted(r.client_id for r in registry.revocation_rows) == ["a", "c"]


class PoisonableIssuer(FakeIssuer):
    """Signing breaks for one client id (as a database would on a NUL in it)."""

    async def issue(self, request):
        if "\x00" in request.client_id:
            raise ValueError("invalid byte sequence for encoding UTF8: 0x00")
        return await super().issue(request)


async def test_issue_batch_with_a_poisoned_item_among_good_ones():
    issuer = PoisonableIssuer()
    svc, _, _ = servicer(issuer)
    items = [pb.IssueRequest(meta=meta(), client_id=c, subject=c, lifetime_seconds=60) for c in ("a", "b\x00", "c")]
    results = (await svc.Issue(pb.IssueBatch(requests=items), None)).results
    assert [r.WhichOneof("outcome") for r in results] == ["token", "error", "token"]
    assert results[1].error.code == "server_error"
    assert [r.client_id for r in issuer.requests] == ["a", "c"]


async def test_items_out_of_time_are_answered_without_work():
    issuer = FakeIssuer()
    svc, source, registry = servicer(issuer)
    issued = (await svc.Issue(pb.IssueBatch(requests=[pb.IssueRequest(meta=meta(-1), client_id="a")]), None)).results
    revoked = (await svc.Revoke(pb.RevokeBatch(requests=[
        pb.RevokeRequest(meta=meta(-1), token=mint("a"), caller=caller("a"))]), None)).results
    assert issued[0].error.code == "temporarily_unavailable" and revoked[0].error.code == "temporarily_unavailable"
    assert issuer.requests == [] and source.lookups == [] and registry.revocation_rows == []


@pytest.mark.parametrize("who, code", [
    (identity.service("edge"), "keys_pending"),  # the edge sends the request again
    (identity.resource_server("api"), "temporarily_unavailable"),
    (identity.service("authorization_code"), "temporarily_unavailable"),
])
async def test_keys_pending_reaches_only_the_edge_as_such(who, code):
    svc, _, _ = servicer()

    async def pending(*args, **kwargs):
        raise KeysPending(detail="the caller's jwks_uri is being fetched")
    svc.checker.introspect = svc.checker.revoke = pending
    token = authz.caller_var.set(who)
    try:
        introspected = await svc.Introspect(pb.IntrospectBatch(requests=[
            pb.IntrospectRequest(meta=meta(), token=mint("a"), caller=caller("a"))]), None)
        revoked = await svc.Revoke(pb.RevokeBatch(requests=[
            pb.RevokeRequest(meta=meta(), token=mint("a"), caller=caller("a"))]), None)
    finally:
        authz.caller_var.reset(token)
    assert introspected.results[0].error.code == code and revoked.results[0].error.code == code

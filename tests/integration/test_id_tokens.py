"""OpenID Connect ID tokens from a running token_issuer, over gRPC (both layouts): verified
against the JWKS the edge publishes, the claims carried both ways, bad claims JSON refused
per item, the audit row. (The claims' rules one by one, in-process:
tests/unit/test_id_token_issuing.py.)"""
from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

import asyncpg
import httpx
import jwt
import pytest

from services.devstack import free_port
from services.token_issuer.api import IdTokenRequest, IssueRequest
from tests.support import GRANT_SERVICE, IssuerAs, eventually, serving

pytestmark = pytest.mark.both_modes


def left_half_sha256(value: str) -> str:
    """OpenID Connect Core §3.1.3.6 for RS256/ES256, computed here (not by the issuer's helper)."""
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode("ascii")).digest()[:16]).decode().rstrip("=")


def published_jwks(stack) -> dict:
    reply = httpx.get(stack.edge_url + "/oauth/jwks", timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


async def verified(stack, token: str, alg: str, audience: str) -> dict:
    """Verified against the edge's JWKS (its cache may predate a key another test made: waits)."""
    kid = jwt.get_unverified_header(token)["kid"]
    jwks = await eventually(lambda: published_jwks(stack), until=lambda j: kid in {k["kid"] for k in j["keys"]},
                            message=f"key {kid} in the published JWKS")
    key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid)
    return jwt.decode(token, key.key, algorithms=[alg], audience=audience, issuer=stack.edge_url)


def id_token_request(client_id: str, **id_token) -> IssueRequest:
    return IssueRequest(client_id=client_id, subject="user-" + uuid.uuid4().hex[:8], scopes=("openid", "email"),
                        format="jwt", lifetime_seconds=300, grant_type="authorization_code",
                        id_token=IdTokenRequest(**id_token))


async def test_an_id_token_over_grpc_verifies_rs256_against_the_published_jwks(stack, issuer):
    client_id = "rp-" + uuid.uuid4().hex[:8]
    code = "ibc_" + uuid.uuid4().hex
    auth_time = int(time.time()) - 5
    request = id_token_request(client_id, nonce="n-" + uuid.uuid4().hex, auth_time=auth_time, sid="sid-abc",
                               code=code, at_hash=True, claims={"email": "jane@example.com", "email_verified": True,
                                                                "sub": "forged", "iss": "forged"})
    issued = await issuer.issue(request)
    header = jwt.get_unverified_header(issued.id_token)
    assert (header["alg"], header["typ"]) == ("RS256", "JWT")
    claims = await verified(stack, issued.id_token, "RS256", client_id)
    assert claims == {"iss": stack.edge_url, "sub": request.subject, "aud": [client_id], "azp": client_id,
                      "iat": issued.issued_at, "exp": issued.issued_at + 3600, "auth_time": auth_time,
                      "nonce": request.id_token.nonce, "sid": "sid-abc",
                      "at_hash": left_half_sha256(issued.access_token), "c_hash": left_half_sha256(code),
                      "email": "jane@example.com", "email_verified": True}
    assert jwt.get_unverified_header(issued.access_token)["alg"] == "ES256"
    access = await verified(stack, issued.access_token, "ES256", stack.edge_url + "/api")
    assert access["sub"] == request.subject and access["iat"] == claims["iat"]
    # An ID token is no access token: introspection refuses it (RFC 9068 §4, typ).
    assert not (await issuer.introspect(issued.id_token)).active


async def test_claims_json_that_is_malformed_or_not_an_object_fails_its_item_alone(stack):
    """A caller's bug (claims_json broken) answers server_error for that item; its batch
    neighbour gets its tokens and the issuer keeps serving."""
    from inbound.issuer.v1 import issuer_pb2 as pb
    from inbound.issuer.v1 import issuer_pb2_grpc

    channel = stack.channel("token_issuer", caller=GRANT_SERVICE)
    try:
        stub = issuer_pb2_grpc.TokenIssuerStub(channel)

        def item(claims_json: str) -> pb.IssueRequest:
            return pb.IssueRequest(client_id="rp", subject="u", scopes=["openid"], format=pb.TOKEN_FORMAT_JWT,
                                   lifetime_seconds=60, id_token=pb.IdTokenRequest(claims_json=claims_json))

        bad = ["{not json", "[1, 2]", '"a string"', json.dumps({"name": "x" * 20_000})]
        reply = await stub.Issue(pb.IssueBatch(requests=[item(b) for b in bad] + [item('{"name": "Jane"}')]),
                                 timeout=10)
        *refused, good = reply.results
        assert [r.error.code for r in refused] == ["server_error"] * len(bad)
        assert good.token.id_token and jwt.decode(good.token.id_token, options={"verify_signature": False})[
            "name"] == "Jane"
    finally:
        await channel.close()


async def test_the_audit_row_says_an_id_token_was_issued_and_holds_no_token(stack, issuer):
    issued = await issuer.issue(id_token_request("rp-" + uuid.uuid4().hex[:8], nonce="n", at_hash=True))
    plain = await issuer.issue(IssueRequest(client_id="rp", subject="u", scopes=(), format="jwt",
                                            lifetime_seconds=60))
    conn = await asyncpg.connect(stack.database_url)
    try:
        async def rows():
            return {r["jti"]: r for r in await conn.fetch(
                "SELECT detail->>'jti' AS jti, detail::text AS text FROM audit_log WHERE detail->>'jti' = ANY($1)",
                [issued.jti, plain.jti])}

        conn_rows = await eventually(rows, until=lambda r: len(r) == 2, message="both token.issued audit rows")
    finally:
        await conn.close()
    assert json.loads(conn_rows[issued.jti]["text"])["id_token_issued"] is True
    assert json.loads(conn_rows[plain.jti]["text"])["id_token_issued"] is False
    signature = issued.id_token.rsplit(".", 1)[1]
    assert issued.id_token not in conn_rows[issued.jti]["text"] and signature not in conn_rows[issued.jti]["text"]


@pytest.mark.separate_processes
async def test_a_replica_configured_for_es256_id_tokens_signs_them_es256(stack):
    port = free_port()
    stack.start_service("token_issuer", port=port, key="issuer-es256-id",
                        extra_env={"INBOUND_ID_TOKEN_ALG": "ES256"})
    replica = IssuerAs(stack, f"127.0.0.1:{port}")
    try:
        await serving(stack, "token_issuer", f"127.0.0.1:{port}")
        issued = await replica.issue(id_token_request("rp-es", nonce="n-es", at_hash=True))
        assert jwt.get_unverified_header(issued.id_token)["alg"] == "ES256"
        claims = await verified(stack, issued.id_token, "ES256", "rp-es")
        assert claims["nonce"] == "n-es" and claims["at_hash"] == left_half_sha256(issued.access_token)
    finally:
        await replica.close()
        stack.stop_service("issuer-es256-id")

"""private_key_jwt with the client's keys at a jwks_uri (the demo identity provider over
HTTPS on loopback, with a certificate of the stack's CA): while jwt_bearer fetches them (it
never waits for HTTP inside a batch: keys_pending), the edge sends the request again after
a short back-off and it is answered once they are in; the next assertion uses the cached set."""
from __future__ import annotations

import asyncio
import time
import uuid

import httpx

from inboundlib.oauth.client_auth import JWT_ASSERTION_TYPE, PRIVATE_KEY_JWT
from services.demo_idp import DemoIdp
from tests.support import ensure_scopes, eventually

RETRIES = 'inbound_http_keys_pending_retries_total{route="token"}'


def retries(metrics: str) -> float:
    lines = [line for line in metrics.splitlines() if line.startswith(RETRIES)]
    return float(lines[0].split()[-1]) if lines else 0.0


async def test_keys_at_a_jwks_uri_are_fetched_while_the_edge_waits(stack, registry):
    from services.client_registry.api import ClientSpec

    async with DemoIdp(stack.ca) as idp:
        # Every fetch of the client's keys waits until the test lets it through: the first
        # assertion surely finds them still coming (whether the fetch began at the client's
        # change event or at the assertion), however fast or slow the machine.
        idp.hold = asyncio.Event()
        await ensure_scopes(registry, ["api.read"])
        client, _ = await registry.create_client(ClientSpec(
            name="pk-jwks-uri", grant_types=["client_credentials"], scopes=["api.read"],
            token_endpoint_auth_method=PRIVATE_KEY_JWT, jwks_uri=idp.jwks_uri))

        async def token(http: httpx.AsyncClient) -> httpx.Response:
            now = int(time.time())
            signed = idp.mint({"iss": client.client_id, "sub": client.client_id, "aud": stack.edge_url + "/oauth/token",
                               "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}, alg="ES256")
            return await http.post("/oauth/token", data={"grant_type": "client_credentials",
                                                         "client_assertion_type": JWT_ASSERTION_TYPE,
                                                         "client_assertion": signed})

        async def edge_retries(http: httpx.AsyncClient) -> float:
            return retries((await http.get(stack.metrics_url("edge"))).text)

        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
            before = await edge_retries(http)
            first = asyncio.create_task(token(http))
            # keys_pending reached the edge, which sends the request again while the fetch is held
            await eventually(lambda: edge_retries(http), until=lambda n: n > before)
            assert not first.done()
            idp.hold.set()
            reply = await first
            assert reply.status_code == 200, reply.text
            fetched = idp.fetches["/jwks"]
            reply = await token(http)
            assert reply.status_code == 200, reply.text
        assert fetched >= 1 and idp.fetches["/jwks"] == fetched, "the second used the cached keys"


async def test_introspection_by_a_client_whose_keys_are_coming_is_sent_again_by_the_edge(stack, registry):
    # token_issuer answers keys_pending as such to the edge alone (others: temporarily_unavailable):
    # over the stack's mTLS, the edge's identity must be the one it recognises.
    from services.client_registry.api import ClientSpec

    async with DemoIdp(stack.ca) as idp:
        idp.hold = asyncio.Event()
        client, _ = await registry.create_client(ClientSpec(
            name="pk-jwks-uri-introspect", grant_types=["client_credentials"], scopes=[],
            token_endpoint_auth_method=PRIVATE_KEY_JWT, jwks_uri=idp.jwks_uri))
        now = int(time.time())
        signed = idp.mint({"iss": client.client_id, "sub": client.client_id,
                           "aud": stack.edge_url + "/oauth/introspect", "iat": now, "exp": now + 60,
                           "jti": str(uuid.uuid4())}, alg="ES256")
        metric = RETRIES.replace('"token"', '"introspect"')
        async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as http:
            async def edge_retries() -> float:
                lines = [line for line in (await http.get(stack.metrics_url("edge"))).text.splitlines()
                         if line.startswith(metric)]
                return float(lines[0].split()[-1]) if lines else 0.0

            before = await edge_retries()
            first = asyncio.create_task(http.post("/oauth/introspect", data={
                "token": "not-a-token", "client_assertion_type": JWT_ASSERTION_TYPE, "client_assertion": signed}))
            await eventually(edge_retries, until=lambda n: n > before)
            idp.hold.set()
            reply = await first
        assert reply.status_code == 200 and reply.json() == {"active": False}, reply.text

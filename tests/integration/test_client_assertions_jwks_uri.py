"""private_key_jwt with the client's keys at a jwks_uri (the demo identity provider over
HTTPS on loopback): jwt_bearer fetches them ahead (the client's change event) and uses the
cached set; after the client rotates its key, an assertion with the new kid finds it not
yet fetched (keys_pending inside jwt_bearer, which never waits for HTTP in a batch), the
edge sends it again after a short back-off, and it is answered once the refetch is in."""
from __future__ import annotations

import time
import uuid

import httpx

from inboundlib.oauth.client_auth import JWT_ASSERTION_TYPE, PRIVATE_KEY_JWT
from services.demo_idp import DemoIdp
from tests.support import OPERATOR, ensure_scopes


async def test_keys_at_a_jwks_uri_are_fetched_while_the_edge_waits(private_stack, tmp_path):
    from services.client_registry.api import ClientSpec
    from services.client_registry.client import RegistryClient

    async with DemoIdp(tmp_path / "idp-ca") as idp:
        with private_stack("client-jwks-uri", extra_env={"INBOUND_FEDERATION_ALLOW_LOOPBACK": "true",
                                                         "INBOUND_FEDERATION_CA_FILE": idp.ca_file,
                                                         "INBOUND_FEDERATION_REFETCH_INTERVAL": "0"}) as s:
            channel = s.channel("client_registry", caller=OPERATOR)
            registry = RegistryClient(channel)
            await ensure_scopes(registry, ["api.read"])
            client, _ = await registry.create_client(ClientSpec(
                name="pk-jwks-uri", grant_types=["client_credentials"], scopes=["api.read"],
                token_endpoint_auth_method=PRIVATE_KEY_JWT, jwks_uri=idp.jwks_uri))
            await channel.close()

            def assertion() -> str:
                now = int(time.time())
                return idp.mint({"iss": client.client_id, "sub": client.client_id, "aud": s.edge_url + "/oauth/token",
                                 "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}, alg="ES256")

            async def token() -> httpx.Response:
                return await http.post("/oauth/token", data={
                    "grant_type": "client_credentials", "client_assertion_type": JWT_ASSERTION_TYPE,
                    "client_assertion": assertion()})

            def retries(metrics: str) -> float:
                lines = [line for line in metrics.splitlines()
                         if line.startswith('inbound_http_keys_pending_retries_total{route="token"}')]
                return float(lines[0].split()[-1]) if lines else 0.0

            async with httpx.AsyncClient(base_url=s.edge_url, timeout=10) as http:
                for _ in range(2):
                    reply = await token()
                    assert reply.status_code == 200, reply.text
                assert idp.fetches["/jwks"] == 1, "fetched once, then served from the cache"
                before = retries((await http.get(s.metrics_url("edge"))).text)
                idp.rotate()
                reply = await token()
                assert reply.status_code == 200, reply.text
                after = retries((await http.get(s.metrics_url("edge"))).text)
            assert idp.fetches["/jwks"] >= 2, "the unknown kid was refetched"
            assert after > before, "the request with the new kid waited for the keys"

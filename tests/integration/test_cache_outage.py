"""Postgres down longer than the client-cache TTL, through the real system (both modes,
a stack of the test's own with a 1 s TTL and 15 s of serve-stale):

- a client cached before the outage keeps getting tokens after its TTL has passed,
  until the maximum staleness, then gets temporarily_unavailable; a client that was
  not cached gets temporarily_unavailable at once (so Postgres is really out of reach);
- gRPC introspection of a valid JWT whose client the issuer never cached answers
  active; a disabled client's token and a revoked token stay inactive; an opaque
  token the issuer never looked up needs the registry: temporarily_unavailable;
- everything recovers when Postgres is back.
"""
from __future__ import annotations

import time

import httpx
import pytest

from inboundlib.oauth.errors import TemporarilyUnavailable
from services.client_registry.api import ClientSpec, ClientUpdate
from services.client_registry.client import RegistryClient
from services.token_issuer.client import IssuerClient
from tests.support import OPERATOR, RESOURCE_SERVER, ensure_scopes, eventually

TTL = 1.0
MAX_STALE = 15.0


@pytest.fixture(scope="module", params=["separate", "single"])
def outage_stack(request, private_stack):
    with private_stack(f"cache-outage-{request.param}", own_postgres=True, single=request.param == "single",
                       extra_env={"INBOUND_CLIENT_CACHE_TTL": str(TTL),
                                  "INBOUND_CLIENT_CACHE_MAX_STALE": str(MAX_STALE)}) as s:
        yield s


async def test_cached_clients_keep_getting_tokens_and_jwts_stay_introspectable_while_postgres_is_down(outage_stack):
    stack = outage_stack
    if stack.postgres is None:
        pytest.skip("needs the private Postgres")
    registry_channel = stack.channel("client_registry", caller=OPERATOR)
    issuer_channel = stack.channel("token_issuer", caller=RESOURCE_SERVER)  # it introspects
    registry, issuer = RegistryClient(registry_channel), IssuerClient(issuer_channel)
    http = httpx.AsyncClient(base_url=stack.edge_url, timeout=10)

    async def make(name: str, **kwargs):
        await ensure_scopes(registry, ["api.read"])
        return await registry.create_client(ClientSpec(name=name, grant_types=["client_credentials"],
                                                       scopes=["api.read"], **kwargs))

    async def token(client_and_secret) -> httpx.Response:
        client, secret = client_and_secret
        return await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                               auth=(client.client_id, secret))

    async def access_token(client_and_secret) -> str:
        reply = await token(client_and_secret)
        assert reply.status_code == 200, reply.text
        return reply.json()["access_token"]

    try:
        cached = await make("cached")
        unseen = await make("unseen")
        never_used = await make("never-used")
        disabled = await make("disabled")
        opaque = await make("opaque", token_format="opaque")

        # Tokens before the outage. The issuer looks no client up to sign, so (in separate
        # processes) it has cached none of these owners; in one process the grant shares its
        # cache, so the decision without the record shows once that entry is past serving.
        jwt_of_unseen_owner = await access_token(unseen)
        revoked = await access_token(cached)
        disabled_token = await access_token(disabled)
        opaque_token = await access_token(opaque)
        revoked_reply = await http.post("/oauth/revoke", data={"token": revoked}, auth=(cached[0].client_id, cached[1]))
        assert revoked_reply.status_code == 200
        await registry.update_client(disabled[0].client_id, ClientUpdate(active=False))

        await eventually(lambda: issuer.introspect(disabled_token), until=lambda info: not info.active,
                         message="the disabled client's cut-off reached the issuer")
        assert not (await issuer.introspect(revoked)).active

        reply = await token(cached)  # the last load of `cached` by the grant before the outage
        assert reply.status_code == 200, reply.text
        loaded_by = time.monotonic()

        stack.postgres.stop()
        try:
            # A client that was not cached cannot be served: Postgres is out of reach.
            refused = await token(never_used)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "temporarily_unavailable"

            # The cached client keeps getting tokens after its TTL has passed (serve-stale).
            served = 0
            while True:
                reply = await token(cached)
                assert reply.status_code == 200, (served, reply.text)
                served += 1
                if time.monotonic() > loaded_by + TTL + 3:
                    break
            assert served >= 2

            # gRPC introspection decides on signature, expiry and the revocation set.
            assert (await issuer.introspect(jwt_of_unseen_owner)).active
            assert not (await issuer.introspect(disabled_token)).active
            assert not (await issuer.introspect(revoked)).active
            with pytest.raises(TemporarilyUnavailable):
                await issuer.introspect(opaque_token)  # never looked up: only the registry knows it

            # Past the maximum staleness, the error shows.
            refused = await eventually(lambda: token(cached), until=lambda reply: reply.status_code != 200,
                                       timeout=MAX_STALE + 45, message="tokens refused past the maximum staleness")
            assert time.monotonic() > loaded_by + MAX_STALE - 1, "served stale up to the bound"
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "temporarily_unavailable"
            # No cache holds these owners any more (past serving stale): decided without the registry.
            assert (await issuer.introspect(jwt_of_unseen_owner)).active
            assert not (await issuer.introspect(disabled_token)).active
        finally:
            stack.postgres.start()

        for client in (never_used, cached):
            await eventually(lambda: token(client), until=lambda reply: reply.status_code == 200,
                             message="tokens issued again once Postgres is back")
        assert (await issuer.introspect(opaque_token)).active
        assert (await issuer.introspect(jwt_of_unseen_owner)).active
        for sp in stack.services.values():
            assert sp.proc.poll() is None, f"{sp.name} died during the outage"
    finally:
        await http.aclose()
        await registry_channel.close()
        await issuer_channel.close()

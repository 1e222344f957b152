"""Bad input and failures tried from outside, against the real system: a poisoned
client id among good requests, trailing slashes, oversized headers, and services
stopped (SIGTERM) under concurrent load: every answer is 200 or 503, never 500."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import urllib.parse

import httpx
import pytest

from services.client_registry.api import ClientSpec
from services.client_registry.client import RegistryClient
from services.devstack import Stack
from tests.support import OPERATOR, eventually

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TOKEN_BODY = b"grant_type=client_credentials"


# --- on the shared system -----------------------------------------------------------------------------

async def test_a_nul_in_the_client_id_is_invalid_client_and_its_batch_neighbours_get_tokens(stack, make_client):
    """`curl -u 'abc%00:x' -d grant_type=client_credentials .../oauth/token`, among good requests."""
    client, secret = await make_client()
    good = (client.client_id, secret)
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=30) as http:
        async def poisoned():
            # The Basic header as curl -u sends it: the id form-urlencoded (RFC 6749 §2.3.1).
            return await http.post("/oauth/token", content=TOKEN_BODY, auth=("abc%00", "x"), headers=FORM)

        async def fine():
            return await http.post("/oauth/token", content=TOKEN_BODY, auth=good, headers=FORM)

        replies = await asyncio.gather(*[f() for _ in range(10) for f in (fine, poisoned, fine)])
    for reply in replies[1::3]:
        assert reply.status_code == 401, reply.text
        assert reply.json()["error"] == "invalid_client"
        assert reply.headers["www-authenticate"].startswith("Basic ")
    assert [r.status_code for i, r in enumerate(replies) if i % 3 != 1] == [200] * 20


@pytest.mark.parametrize("path", ["/oauth/token/", "/oauth_token.do/", "/oauth/introspect/", "/oauth/revoke/"])
def test_a_trailing_slash_is_404_never_a_redirect_to_the_host_header(http, path):
    reply = http.post(path, content=TOKEN_BODY, headers={**FORM, "Host": "attacker.example"},
                      auth=("some-client", "its-secret"), follow_redirects=False)
    assert reply.status_code == 404
    assert "location" not in reply.headers


def test_metrics_are_not_on_the_public_port(http):
    assert http.get("/metrics").status_code == 404


def test_oversized_headers_are_431(stack):
    url = urllib.parse.urlsplit(stack.edge_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 100_000 + b"\r\n\r\n")
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]


# --- services stopped under load, on a system of this module's own -----------------------------------------

@pytest.fixture(scope="module")
def own_stack(private_stack):
    with private_stack("edge-failures") as s:
        yield s


@pytest.fixture(scope="module")
async def own_client(own_stack):
    channel = own_stack.channel("client_registry", caller=OPERATOR)
    client, secret = await RegistryClient(channel).create_client(ClientSpec(name="stop-under-load"))
    await channel.close()
    return client.client_id, secret


async def _under_load(stack: Stack, auth, stop_service: str, *, workers: int = 16) -> list[int]:
    """Token requests from `workers` concurrent callers while `stop_service` gets SIGTERM;
    returns every status seen."""
    statuses: list[int] = []
    stopped = asyncio.Event()

    async def caller(http: httpx.AsyncClient) -> None:
        after_stop = 0
        while after_stop < 20:
            reply = await http.post("/oauth/token", content=TOKEN_BODY, auth=auth, headers=FORM)
            statuses.append(reply.status_code)
            if reply.status_code not in (200, 503):
                print(reply.status_code, reply.text)
            if stopped.is_set():
                after_stop += 1

    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=30,
                                 limits=httpx.Limits(max_connections=workers)) as http:
        tasks = [asyncio.create_task(caller(http)) for _ in range(workers)]
        await eventually(lambda: len(statuses), until=lambda n: n >= 100, message="load before the stop")
        code = await asyncio.to_thread(stack.stop_service, stop_service)
        stopped.set()
        await asyncio.gather(*tasks)
    assert code == 0, f"{stop_service} did not stop cleanly: exit {code}"
    return statuses


async def test_a_grant_service_stopped_under_load_answers_200_or_503_and_the_edge_stays_ready(own_stack,
                                                                                              own_client):
    statuses = await _under_load(own_stack, own_client, "client_credentials")
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 100
    async with httpx.AsyncClient(base_url=own_stack.edge_url, timeout=30) as http:
        reply = await http.post("/oauth/token", content=TOKEN_BODY, auth=own_client, headers=FORM)
        assert reply.status_code == 503
        assert reply.json()["error"] == "temporarily_unavailable"
        # One grant down takes that grant out, not the edge out of rotation.
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/oauth/jwks")).status_code == 200
        introspection = await http.post("/oauth/introspect", content=b"token=not-a-token", auth=own_client,
                                        headers=FORM)
        assert introspection.status_code == 200 and introspection.json() == {"active": False}
    own_stack.start_service("client_credentials")
    async with httpx.AsyncClient(base_url=own_stack.edge_url, timeout=30) as http:
        await eventually(lambda: http.post("/oauth/token", content=TOKEN_BODY, auth=own_client, headers=FORM),
                         until=lambda r: r.status_code == 200, message="tokens again once the grant is back")


async def test_the_issuer_stopped_under_load_answers_200_or_503_never_500(own_stack, own_client):
    statuses = await _under_load(own_stack, own_client, "token_issuer")
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 100

"""Bad input at the token endpoint: each case gets the RFC 6749 §5.2 error with
the right status, nothing is written, nothing crashes, no secret is logged;
against the separate processes and the one-process mode."""
from __future__ import annotations

import base64

import asyncpg
import httpx
import pytest

pytestmark = pytest.mark.both_modes

FORM = "application/x-www-form-urlencoded"


def b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


@pytest.fixture(scope="module")
async def victim(make_client_module):
    return await make_client_module(token_format="opaque")


@pytest.fixture(scope="module")
async def make_client_module(registry):
    from services.client_registry.api import ClientSpec
    from tests.support import ensure_scopes

    async def make(**kwargs):
        kwargs.setdefault("name", "bad-input")
        kwargs.setdefault("grant_types", ["client_credentials"])
        kwargs.setdefault("scopes", ["api.read"])
        await ensure_scopes(registry, kwargs["scopes"])
        return await registry.create_client(ClientSpec(**kwargs))

    return make


def cases(cid: str, secret: str) -> list[tuple[str, dict, bytes | None, int, str]]:
    """(name, headers, body, expected status, expected error)."""
    good_basic = {"Authorization": "Basic " + b64(f"{cid}:{secret}".encode()), "Content-Type": FORM}
    return [
        ("duplicated grant_type", good_basic, b"grant_type=client_credentials&grant_type=client_credentials",
         400, "invalid_request"),
        ("duplicated scope", good_basic, b"grant_type=client_credentials&scope=api.read&scope=api.read",
         400, "invalid_request"),
        ("duplicated client_secret", {"Content-Type": FORM},
         f"grant_type=client_credentials&client_id={cid}&client_secret={secret}&client_secret={secret}".encode(),
         400, "invalid_request"),
        ("json content type", {**good_basic, "Content-Type": "application/json"},
         b'{"grant_type":"client_credentials"}', 400, "invalid_request"),
        ("no content type", {"Authorization": good_basic["Authorization"]}, b"grant_type=client_credentials",
         400, "invalid_request"),
        ("latin-1 charset", {**good_basic, "Content-Type": FORM + "; charset=ISO-8859-1"},
         b"grant_type=client_credentials", 400, "invalid_request"),
        ("multipart body", {**good_basic, "Content-Type": "multipart/form-data; boundary=x"},
         b"--x\r\nContent-Disposition: form-data; name=\"grant_type\"\r\n\r\nclient_credentials\r\n--x--",
         400, "invalid_request"),
        ("body over the limit", good_basic, b"grant_type=client_credentials&pad=" + b"a" * 20000,
         413, "invalid_request"),
        ("non-UTF-8 bytes", good_basic, b"grant_type=client_credentials&scope=\xff\xfe", 400, "invalid_request"),
        ("percent-encoded non-UTF-8", good_basic, b"grant_type=client_credentials&scope=%ff%fe",
         400, "invalid_request"),
        ("NUL byte", good_basic, b"grant_type=client_credentials&scope=api%00read", 400, "invalid_request"),
        ("too many parameters", good_basic,
         b"grant_type=client_credentials&" + b"&".join(b"p%d=1" % i for i in range(100)), 400, "invalid_request"),
        ("missing grant_type", good_basic, b"scope=api.read", 400, "invalid_request"),
        ("empty grant_type", good_basic, b"grant_type=", 400, "invalid_request"),
        ("unknown grant type", good_basic, b"grant_type=magic", 400, "unsupported_grant_type"),
        ("grant type served nowhere", good_basic, b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=x",
         400, "unsupported_grant_type"),
        ("malformed scope", good_basic, b"grant_type=client_credentials&scope=api.read%20a%22b",
         400, "invalid_scope"),
        ("scope beyond the client's", good_basic, b"grant_type=client_credentials&scope=api.write",
         400, "invalid_scope"),
        ("wrong secret (basic)", {**good_basic, "Authorization": "Basic " + b64(f"{cid}:nope".encode())},
         b"grant_type=client_credentials", 401, "invalid_client"),
        ("wrong secret (post)", {"Content-Type": FORM},
         f"grant_type=client_credentials&client_id={cid}&client_secret=nope".encode(), 401, "invalid_client"),
        ("no credentials", {"Content-Type": FORM}, b"grant_type=client_credentials", 401, "invalid_client"),
        ("client_id without secret", {"Content-Type": FORM},
         f"grant_type=client_credentials&client_id={cid}".encode(), 401, "invalid_client"),
        ("unknown client", {**good_basic, "Authorization": "Basic " + b64(b"nobody:secret")},
         b"grant_type=client_credentials", 401, "invalid_client"),
        ("basic not base64", {**good_basic, "Authorization": "Basic !!!not-base64!!!"},
         b"grant_type=client_credentials", 401, "invalid_client"),
        ("basic without colon", {**good_basic, "Authorization": "Basic " + b64(cid.encode())},
         b"grant_type=client_credentials", 401, "invalid_client"),
        ("basic with non-UTF-8", {**good_basic, "Authorization": "Basic " + b64(b"\xff\xfe:\xfd")},
         b"grant_type=client_credentials", 401, "invalid_client"),
        ("basic empty", {**good_basic, "Authorization": "Basic"}, b"grant_type=client_credentials",
         401, "invalid_client"),
        ("bearer instead of basic", {**good_basic, "Authorization": "Bearer abc.def.ghi"},
         b"grant_type=client_credentials", 401, "invalid_client"),
        ("basic and secret in body", good_basic,
         f"grant_type=client_credentials&client_secret={secret}".encode(), 400, "invalid_request"),
        ("basic and another client_id in body", good_basic,
         b"grant_type=client_credentials&client_id=someone-else", 400, "invalid_request"),
        ("client_id far too long", {"Content-Type": FORM},
         b"grant_type=client_credentials&client_secret=x&client_id=" + b"a" * 5000, 401, "invalid_client"),
    ]


CASE_NAMES = [c[0] for c in cases("id", "secret")]


@pytest.mark.parametrize("name", CASE_NAMES)
async def test_bad_input_gets_the_standard_error_and_writes_nothing(stack, victim, name):
    client, secret = victim
    _, headers, body, status, error = next(c for c in cases(client.client_id, secret) if c[0] == name)
    conn = await asyncpg.connect(stack.database_url)
    try:
        before = await conn.fetchval("SELECT count(*) FROM opaque_tokens")
        async with httpx.AsyncClient(base_url=stack.edge_url) as http:
            reply = await http.post("/oauth/token", content=body, headers=headers)
        after = await conn.fetchval("SELECT count(*) FROM opaque_tokens")
    finally:
        await conn.close()
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    payload = reply.json()
    assert payload["error"] == error
    assert set(payload) <= {"error", "error_description", "error_uri"}
    assert secret not in reply.text
    assert after == before, "a refused request wrote a token"
    if status == 401:  # RFC 6749 §5.2, RFC 7235 §3.1
        assert reply.headers["www-authenticate"].startswith("Basic")


async def test_a_good_request_from_the_same_client_still_works(stack, victim):
    client, secret = victim
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        reply = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                auth=(client.client_id, secret))
    assert reply.status_code == 200


async def test_chunked_body_over_the_limit_is_refused(stack, victim):
    client, secret = victim

    async def chunks():
        yield b"grant_type=client_credentials&pad="
        for _ in range(40):
            yield b"a" * 1024

    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        reply = await http.post("/oauth/token", content=chunks(), auth=(client.client_id, secret),
                                headers={"Content-Type": FORM})
    assert reply.status_code == 413
    assert reply.json()["error"] == "invalid_request"


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
async def test_parameters_in_the_uri_are_refused_and_not_logged(stack, victim, path):
    client, secret = victim
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        reply = await http.post(f"{path}?client_secret={secret}", data={"grant_type": "client_credentials",
                                                                        "token": "x"},
                                auth=(client.client_id, secret))
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_request"
    assert secret not in reply.text


async def test_get_on_the_token_endpoint_is_refused(stack):
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        reply = await http.get("/oauth/token", params={"grant_type": "client_credentials"})
    assert reply.status_code == 405
    assert reply.headers["allow"] == "POST"
    assert reply.json()["error"] == "invalid_request"


async def test_secret_in_basic_is_form_urlencoded_per_rfc6749_2_3_1(stack, make_client_module):
    """A secret with reserved characters must be form-urlencoded inside Basic; ours are URL-safe, so
    encoding changes nothing, but '+' in an encoded id must decode to a space and fail cleanly."""
    client, secret = await make_client_module()
    encoded = b64(f"{client.client_id}:{secret}".encode())
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        ok = await http.post("/oauth/token", content=b"grant_type=client_credentials",
                             headers={"Authorization": f"Basic {encoded}", "Content-Type": FORM})
        plus = await http.post("/oauth/token", content=b"grant_type=client_credentials",
                               headers={"Authorization": "Basic " + b64(f"{client.client_id}+:{secret}".encode()),
                                        "Content-Type": FORM})
    assert ok.status_code == 200
    assert plus.status_code == 401


async def test_services_are_alive_and_no_secret_reached_any_log(stack, victim):
    client, secret = victim
    async with httpx.AsyncClient(base_url=stack.edge_url) as http:
        assert (await http.get("/readyz")).status_code == 200
    for name, service in stack.services.items():
        assert service.proc.poll() is None, f"{name} died"
        text = "\n".join(service.lines)
        assert secret not in text, f"{name} logged a client secret"
        assert "Basic " not in text, f"{name} logged an Authorization header"
        assert "eyJ" not in text, f"{name} logged what looks like a JWT"

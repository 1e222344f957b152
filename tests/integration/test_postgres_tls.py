"""Postgres over TLS when the URL asks for it (`sslmode`): the services' pool
(inboundlib.db.create_pool) verifies the server's certificate against the CA the
URL names, and refuses a server whose certificate another CA signed."""
from __future__ import annotations

import shutil
import ssl
import tempfile
from pathlib import Path

import pytest

from inboundlib import db
from inboundlib.localservers import PrivatePostgres, free_port
from inboundlib.pki import DevCA


async def test_the_database_pool_speaks_verified_tls_when_the_url_asks_for_it():
    state = Path(tempfile.mkdtemp(prefix="inbound-test-pgtls-"))
    ca, other_ca = DevCA(state / "ca"), DevCA(state / "other-ca")
    server = ca.issue("postgres", dns_names=("localhost",), ips=("127.0.0.1",), client=False)
    postgres = PrivatePostgres(state / "postgres", free_port(), tls=(server.cert, server.key))
    url = postgres.start()
    try:
        pool = await db.create_pool(f"{url}?sslmode=verify-full&sslrootcert={ca.ca_file}", min_size=1, max_size=1)
        try:
            # The server's own view of the connection: encrypted.
            assert await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
        finally:
            await pool.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await db.create_pool(f"{url}?sslmode=verify-full&sslrootcert={other_ca.ca_file}", min_size=1, max_size=1)
        plain = await db.create_pool(f"{url}?sslmode=disable", min_size=1, max_size=1)
        try:
            assert await plain.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is False
        finally:
            await plain.close()
    finally:
        postgres.stop()
        shutil.rmtree(state, ignore_errors=True)

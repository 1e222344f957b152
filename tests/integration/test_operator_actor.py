"""Changes made through inboundctl carry the operator into every event they cause
and into the audit log (not yet authenticated: the name inboundctl passes)."""
from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys

import asyncpg

from tests.support import OPERATOR, eventually


async def ctl(stack, *args: str, **env: str) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_")}
    environ.update(INBOUND_REGISTRY_ADDR=stack.addr("client_registry"), INBOUND_ISSUER_ADDR=stack.addr("token_issuer"),
                   INBOUND_AUDIT_ADDR=stack.addr("audit"), **stack.tls_env(OPERATOR), **env)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "inboundctl", *args, env=environ,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


async def audit_rows(stack, client_id: str, want: int) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await eventually(lambda: conn.fetch(
            "SELECT type, actor_kind, actor_id, detail::text AS detail FROM audit_log"
            " WHERE client_id = $1 AND actor_kind = 'operator' ORDER BY seq", client_id),
            until=lambda rows: len(rows) >= want, message=f"{want} audit rows with the operator as actor")
    finally:
        await conn.close()


async def test_the_operator_is_the_actor_of_what_inboundctl_changes(stack, make_client):
    client, _ = await make_client()
    code, _, err = await ctl(stack, "--operator", "alice", "client", "disable", client.client_id)
    assert code == 0, err
    code, _, err = await ctl(stack, "client", "revoke-tokens", client.client_id, INBOUND_OPERATOR="bob")
    assert code == 0, err
    rows = await audit_rows(stack, client.client_id, 3)
    by = {(r["type"], r["actor_id"]) for r in rows}
    assert ("registry_changed", "alice") in by  # the client changed ...
    assert ("token_revoked", "alice") in by  # ... and its cut-off, in the same operator's name
    assert ("token_revoked", "bob") in by  # through token_issuer: the actor travelled one more hop
    revoked = [json.loads(r["detail"]) for r in rows if r["type"] == "token_revoked" and r["actor_id"] == "bob"]
    assert revoked[0]["revoked_by"] == "operator:bob" and revoked[0]["revoked_before_unix_ms"] > 0

    code, out, err = await ctl(stack, "audit", "search", "--client", client.client_id, "--actor", "operator:alice",
                               "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found and all(r["actor"] == {"kind": "operator", "id": "alice"} for r in found)
    code, out, _ = await ctl(stack, "audit", "search", "--client", client.client_id, "--actor", "operator:alice")
    assert "actor=operator:alice" in out


async def test_without_a_name_the_operator_is_the_local_user(stack, make_client):
    client, _ = await make_client()
    code, _, err = await ctl(stack, "client", "update", client.client_id, "--comments", "who?")
    assert code == 0, err
    rows = await audit_rows(stack, client.client_id, 1)
    assert [(r["type"], r["actor_id"]) for r in rows] == [("registry_changed", getpass.getuser())]

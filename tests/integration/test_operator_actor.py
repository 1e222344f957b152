"""Changes made through inboundctl carry the operator its certificate names into every
event they cause and into the audit log, whatever name inboundctl is given; through
token_issuer too (it relays the operator to the registry: services/access.py RELAYS)."""
from __future__ import annotations

import asyncio
import json
import os
import sys

import asyncpg

from inboundlib import identity
from tests.support import eventually

ALICE, BOB = identity.operator("alice"), identity.operator("bob")


async def ctl(stack, operator: identity.Caller, *args: str, **env: str) -> tuple[int, str, str]:
    """inboundctl with `operator`'s certificate."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_")}
    environ.update(INBOUND_REGISTRY_ADDR=stack.addr("client_registry"), INBOUND_ISSUER_ADDR=stack.addr("token_issuer"),
                   INBOUND_AUDIT_ADDR=stack.addr("audit"), **stack.tls_env(operator), **env)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "inboundctl", *args, env=environ,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


async def audit_rows(stack, where: str, arg: str, want: set[tuple[str, str]]) -> list[asyncpg.Record]:
    """The audit rows with an operator as actor, once those of `want` (type, operator) are all there."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await eventually(lambda: conn.fetch(
            "SELECT type, actor_kind, actor_id, detail::text AS detail FROM audit_log"
            f" WHERE {where} = $1 AND actor_kind = 'operator' ORDER BY seq", arg),
            until=lambda rows: want <= {(r["type"], r["actor_id"]) for r in rows},
            message=f"audit rows {sorted(want)}")
    finally:
        await conn.close()


async def test_the_operator_of_the_certificate_is_the_actor_of_what_inboundctl_changes(stack, make_client):
    client, _ = await make_client()
    # The name given on the command line or in the environment is not who is acting.
    code, _, err = await ctl(stack, ALICE, "--operator", "mallory", "client", "disable", client.client_id)
    assert code == 0, err
    code, _, err = await ctl(stack, BOB, "client", "revoke-tokens", client.client_id, INBOUND_OPERATOR="mallory")
    assert code == 0, err
    # The client changed, and its cut-off, in alice's name; bob's revocation through token_issuer.
    rows = await audit_rows(stack, "client_id", client.client_id,
                            {("registry_changed", "alice"), ("token_revoked", "alice"), ("token_revoked", "bob")})
    assert not [r for r in rows if r["actor_id"] == "mallory"]
    revoked = [json.loads(r["detail"]) for r in rows if r["type"] == "token_revoked" and r["actor_id"] == "bob"]
    assert revoked[0]["revoked_by"] == "operator:bob" and revoked[0]["revoked_before_unix_ms"] > 0

    code, out, err = await ctl(stack, BOB, "audit", "search", "--client", client.client_id, "--actor",
                               "operator:alice", "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found and all(r["actor"] == {"kind": "operator", "id": "alice"} for r in found)


async def test_a_key_rotation_names_the_operator_in_the_registry_change_that_token_issuer_makes(stack):
    """token_issuer adds the key through the registry, passing the operator on: the
    registry believes it from token_issuer (a relay), not from anyone else."""
    code, out, err = await ctl(stack, ALICE, "--operator", "mallory", "keys", "rotate", "--activation-delay", "3600",
                               "--json")
    assert code == 0, err
    kid = json.loads(out)["kid"]
    rows = await audit_rows(stack, "detail->>'id'", kid, {("registry_changed", "alice")})
    assert [(r["type"], r["actor_id"]) for r in rows] == [("registry_changed", "alice")]
    assert json.loads(rows[0]["detail"])["entity"] == "signing_key"

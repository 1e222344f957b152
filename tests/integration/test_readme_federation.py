"""The README's federation examples run as written: every shell block the README marks
runnable (`<!-- runnable: README federation examples ... -->`) — the provider registered with
inboundctl, a provider's ID token introspected as-is, exchanged (RFC 8693), a JWT-bearer
integration's assertion traded (RFC 7523 §2.1), a private_key_jwt client (RFC 7523 §2.2) —
through bash, curl and inboundctl against the session's stack and the demo identity provider,
with only the addresses of `make run` replaced by this stack's."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from services.client_registry.api import UserSpec
from services.devstack import DEMO_CATALOG
from tests.support import OPERATOR, ensure_scopes

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runnable: README federation examples"
BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
# What `make run` listens on, as the README writes it.
MAKE_RUN_EDGE, MAKE_RUN_IDP, MAKE_RUN_CA = "http://127.0.0.1:8080", "https://127.0.0.1:8091", ".run/pki/ca.pem"


def runnable_blocks(readme: str) -> list[str]:
    """The shell block after each marker, the one defining CA, IDP and TOKEN_URL first (the client
    authentication example, earlier in the README, uses them)."""
    blocks = []
    for part in readme.split(MARKER)[1:]:
        found = BLOCK.search(part)
        assert found and part[:found.start()].count("\n") <= 2, "a runnable marker must sit right above a ```sh block"
        blocks.append(found.group(1))
    return sorted(blocks, key=lambda block: not block.startswith("CA="))


def test_the_readme_marks_its_federation_examples():
    blocks = runnable_blocks((ROOT / "README.md").read_text())
    assert blocks[0].startswith("CA=") and len(blocks) >= 6, [b[:40] for b in blocks]
    text = "".join(blocks)
    for example in ("provider add", "/oauth/introspect", "token-exchange", "integration add", "jwt-bearer",
                    "--auth-method private_key_jwt"):
        assert example in text, example


def test_the_examples_use_only_scopes_make_run_puts_in_the_catalog():
    """A client may only be given catalog scopes: every `--scope` of the examples must be one
    `make run` adds (services/devstack.py DEMO_CATALOG), or the example fails on a fresh run."""
    text = "".join(runnable_blocks((ROOT / "README.md").read_text()))
    used = set(re.findall(r"--(?:exchange-)?scope ([\w.:-]+)", text))
    assert used and used <= set(DEMO_CATALOG), sorted(used - set(DEMO_CATALOG))


def json_answers(output: str) -> list[dict]:
    """The JSON objects curl printed (without a newline after them, so amid inboundctl's lines)."""
    decoder, answers, at = json.JSONDecoder(), [], output.find('{"')
    while at != -1:
        answer, end = decoder.raw_decode(output, at)
        answers.append(answer)
        at = output.find('{"', end)
    return answers


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")
async def test_the_readme_federation_examples_run(stack, registry, idp):
    # What make run has made before the examples start: the demo user and the catalog's scopes.
    if await registry.get_user(username="demo") is None:
        await registry.create_user(UserSpec(username="demo", display_name="Demo User"))
    await ensure_scopes(registry, DEMO_CATALOG)
    script = "\n".join(runnable_blocks((ROOT / "README.md").read_text()))
    script = (script.replace(MAKE_RUN_EDGE, stack.edge_url).replace(MAKE_RUN_IDP, idp.issuer)
              .replace(MAKE_RUN_CA, str(stack.ca.ca_file)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_")}
    env.update(stack.tls_env(OPERATOR), INBOUND_REGISTRY_ADDR=stack.addr("client_registry"),
               INBOUND_ISSUER_ADDR=stack.addr("token_issuer"))
    proc = await asyncio.create_subprocess_exec(  # the IdP answers from this loop meanwhile
        "bash", "-euo", "pipefail", "-c", script, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    out, err = out.decode(), err.decode()
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    answers = json_answers(out)
    tokens = [a for a in answers if "access_token" in a]
    # private_key_jwt's client credentials, the exchange, the JWT bearer grant: three Inbound tokens
    assert len(tokens) == 3 and all(t["token_type"] == "Bearer" and t["scope"] == "api.read" for t in tokens), out
    assert [t.get("issued_token_type") for t in tokens].count("urn:ietf:params:oauth:token-type:access_token") == 1
    introspected, delegated = [a for a in answers if "active" in a]
    demo = await registry.get_user(username="demo")
    assert introspected["active"] is True and introspected["provider"] == "local-idp", introspected
    assert introspected["sub"] == demo.id and introspected["username"] == "demo" and introspected["iss"] == idp.issuer
    # the exchange with an actor: Inbound's own token, for the demo user, acted on by the portal
    assert delegated["active"] is True and delegated["sub"] == demo.id and delegated["iss"] == stack.edge_url
    assert delegated["act"] == {"sub": delegated["client_id"], "iss": stack.edge_url}, delegated

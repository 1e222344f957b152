"""inboundctl scope ... and client --post-logout-redirect-uri, as a subprocess against the
running system (exit codes per cli/inboundctl/errors.py)."""
from __future__ import annotations

import secrets

from tests.integration.test_inboundctl import ctl, ok


async def test_scope_lifecycle_through_the_cli(stack):
    name = f"ctl.scope.{secrets.token_hex(4)}"
    created = (await ok(stack, "scope", "create", name, "--description", "Read your things", "--json")).json()
    assert created["name"] == name and created["consent_required"] is True
    assert created["description"] == "Read your things"
    again = await ctl(stack, "scope", "create", name, "--description", "again")
    assert again.code == 4 and name in again.err

    listed = (await ok(stack, "scope", "list", "--json")).json()
    assert {"openid", "profile", "email", name} <= {s["name"] for s in listed}
    assert name in (await ok(stack, "scope", "list")).out
    shown = await ok(stack, "scope", "show", name)
    assert "Read your things" in shown.out and "consent_required:" in shown.out

    updated = (await ok(stack, "scope", "update", name, "--no-consent-required", "--json")).json()
    assert updated["consent_required"] is False and updated["description"] == "Read your things"
    assert (await ctl(stack, "scope", "update", name)).code == 2  # nothing to update

    client = (await ok(stack, "client", "create", "--name", "ctl-scoped", "--scope", name, "--json")).json()
    in_use = await ctl(stack, "scope", "delete", name)
    assert in_use.code == 2 and client["client"]["client_id"] in in_use.err
    await ok(stack, "client", "update", client["client"]["client_id"], "--clear-scopes")
    assert f"scope {name} deleted" in (await ok(stack, "scope", "delete", name)).out
    for command in (("show", name), ("delete", name), ("update", name, "--description", "x")):
        missing = await ctl(stack, "scope", *command)
        assert missing.code == 3 and "no scope" in missing.err


async def test_bad_scopes_and_uncatalogued_scopes_exit_2(stack):
    bad = await ctl(stack, "scope", "create", 'bad"scope', "--description", "x")
    assert bad.code == 2 and "scope token" in bad.err
    empty = await ctl(stack, "scope", "create", "fine.scope", "--description", " ")
    assert empty.code == 2 and "description" in empty.err
    unknown = f"ctl.unknown.{secrets.token_hex(4)}"
    refused = await ctl(stack, "client", "create", "--name", "ctl-unknown-scope", "--scope", unknown)
    assert refused.code == 2 and f"not in the catalog: {unknown}" in refused.err


async def test_post_logout_redirect_uris_through_the_cli(stack):
    client = (await ok(stack, "client", "create", "--name", "ctl-rp", "--grant-type", "authorization_code",
                       "--redirect-uri", "https://rp.example/cb",
                       "--post-logout-redirect-uri", "https://rp.example/bye",
                       "--post-logout-redirect-uri", "https://rp.example/later", "--json")).json()["client"]
    assert client["post_logout_redirect_uris"] == ["https://rp.example/bye", "https://rp.example/later"]
    shown = await ok(stack, "client", "show", client["client_id"])
    assert "https://rp.example/bye" in shown.out
    replaced = (await ok(stack, "client", "update", client["client_id"], "--post-logout-redirect-uri",
                         "https://rp.example/only", "--json")).json()
    assert replaced["post_logout_redirect_uris"] == ["https://rp.example/only"]
    bad = await ctl(stack, "client", "update", client["client_id"], "--post-logout-redirect-uri",
                    "http://rp.example/plain")
    assert bad.code == 2 and "post-logout redirect URI" in bad.err
    cleared = (await ok(stack, "client", "update", client["client_id"], "--clear-post-logout-redirect-uris",
                        "--json")).json()
    assert cleared["post_logout_redirect_uris"] == []

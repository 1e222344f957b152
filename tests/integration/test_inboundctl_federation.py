"""inboundctl's federation commands as a subprocess against the running registry: client
authentication methods and keys (a client_secret_jwt secret printed once and kept sealed),
token-exchange policies, JWT-bearer integrations and OpenID providers (templates)."""
from __future__ import annotations

import json
import uuid

from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from inboundlib import identity
from services.client_registry.api import ClientSpec
from services.client_registry.client import RegistryClient
from tests.integration.test_inboundctl import ctl, ok
from tests.support import ensure_scopes


def jwks_file(tmp_path) -> str:
    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return str(path)


async def sealed_secret(stack, client_id: str) -> bytes:
    async with stack.channel("client_registry", caller=identity.service("jwt_bearer")) as channel:
        return (await RegistryClient(channel).get_client_secrets([client_id]))[0]


async def test_client_auth_methods_keys_and_exchange_policy(stack, registry, tmp_path):
    await ensure_scopes(registry, ["api.read"])
    created = (await ok(stack, "client", "create", "--json", "--name", "hmac", "--auth-method", "client_secret_jwt",
                        "--signing-alg", "HS256", "--scope", "api.read")).json()
    client = created["client"]
    assert created["client_secret"] and client["token_endpoint_auth_method"] == "client_secret_jwt"
    assert client["token_endpoint_auth_signing_alg"] == "HS256" and await sealed_secret(stack, client["client_id"])

    keyed = (await ok(stack, "client", "create", "--json", "--name", "keyed", "--auth-method", "private_key_jwt",
                      "--jwks", jwks_file(tmp_path))).json()
    assert keyed["client_secret"] is None and json.loads(keyed["client"]["jwks"])["keys"]
    # Back to a secret: the CLI rotates (the registry makes the secret), printing it this once.
    moved = await ok(stack, "client", "update", keyed["client"]["client_id"], "--auth-method", "client_secret_basic")
    assert "client_secret:" in moved.out and "client_secret_basic" in moved.out
    assert not await sealed_secret(stack, keyed["client"]["client_id"])

    policy = (await ok(stack, "client", "update", client["client_id"], "--json", "--exchange-token-type", "id_token",
                       "--exchange-provider", "okta", "--exchange-scope", "api.read", "--exchange-actor-tokens")).json()
    assert policy["token_exchange"] == {
        "subject_token_types": ["urn:ietf:params:oauth:token-type:id_token"], "providers": ["okta"],
        "own_tokens": False, "scopes": ["api.read"], "audiences": [], "actor_tokens": True}
    shown = await ok(stack, "client", "show", client["client_id"])
    assert "types=id_token providers=okta" in shown.out
    cleared = (await ok(stack, "client", "update", client["client_id"], "--json", "--clear-exchange")).json()
    assert cleared["token_exchange"] is None
    refused = await ctl(stack, "client", "create", "--name", "x", "--auth-method", "private_key_jwt",
                        "--jwks-uri", "http://keys.example/jwks")
    assert refused.code == 2 and "https" in refused.err


async def test_a_move_to_client_secret_jwt_with_other_options_prints_one_document_with_the_secret(stack, registry):
    client, _ = await registry.create_client(ClientSpec(name="mover"))
    moved = await ok(stack, "client", "update", client.client_id, "--json", "--auth-method", "client_secret_jwt",
                     "--signing-alg", "HS256", "--name", "moved")
    shown = moved.json()  # one JSON document: the final record and the new secret
    assert shown["client_secret"] and shown["client"]["name"] == "moved"
    assert shown["client"]["token_endpoint_auth_method"] == "client_secret_jwt"
    assert shown["client"]["token_endpoint_auth_signing_alg"] == "HS256"
    # Another option refused after the rotation: the new secret (the only one that works now) is still shown.
    other, _ = await registry.create_client(ClientSpec(name="other"))
    refused = await ctl(stack, "client", "update", other.client_id, "--json", "--auth-method", "client_secret_jwt",
                        "--scope", "no-such-scope-" + uuid.uuid4().hex[:6])
    assert refused.code == 2 and json.loads(refused.out)["client_secret"]
    assert (await registry.get_client(other.client_id)).token_endpoint_auth_method == "client_secret_jwt"


async def test_integrations_from_add_to_delete(stack, registry, tmp_path):
    await ensure_scopes(registry, ["api.read"])
    partner = (await ok(stack, "client", "create", "--json", "--name", "partner", "--grant-type", "jwt-bearer",
                        "--scope", "api.read")).json()["client"]["client_id"]
    name = "acme-" + uuid.uuid4().hex[:6]
    added = await ok(stack, "integration", "add", "--json", "--name", name, "--client", partner, "--issuer",
                     "https://idp.acme.example", "--generate-hs256-secret", "--alg", "HS256",
                     "--claim-rule", "tenant equals acme corp", "--scope", "api.read")
    record = added.json()
    assert record["allow_hs256"] and len(record["hs256_secret"]) >= 43 and "shown again" in added.err
    assert record["claim_rules"] == [{"claim": "tenant", "operator": "equals", "value": "acme corp"}]
    integration_id = record["id"]
    listed = await ok(stack, "integration", "list")
    assert integration_id in listed.out and "hs256" in listed.out
    shown = await ok(stack, "integration", "show", integration_id)
    assert record["hs256_secret"] not in shown.out  # printed once, never again
    moved = (await ok(stack, "integration", "update", integration_id, "--json", "--jwks", jwks_file(tmp_path),
                      "--alg", "ES256")).json()
    assert moved["jwks"] and not moved["allow_hs256"]
    assert not (await ok(stack, "integration", "disable", integration_id, "--json")).json()["active"]
    assert (await ok(stack, "integration", "enable", integration_id, "--json")).json()["active"]
    bad = await ctl(stack, "integration", "add", "--name", "bad", "--client", partner, "--issuer", "x",
                    "--jwks-uri", "https://k.example/j", "--claim-rule", "tenant matches x")
    assert bad.code == 2 and "operator" in bad.err
    await ok(stack, "integration", "delete", integration_id)
    assert (await ctl(stack, "integration", "show", integration_id)).code == 3


async def test_providers_from_templates(stack):
    name = "okta-" + uuid.uuid4().hex[:6]
    domain = f"{name}.okta.example"
    okta = (await ok(stack, "provider", "add", name, "--json", "--template", "okta", "--domain", domain,
                     "--audience", "api://inbound")).json()
    assert okta["issuer"] == f"https://{domain}/oauth2/default" and okta["template"] == "okta"
    assert okta["discovery_url"] == f"https://{domain}/oauth2/default/.well-known/openid-configuration"
    assert (okta["user_claim"], okta["user_field"], okta["algorithms"]) == ("email", "email", ["RS256"])
    tenant = str(uuid.uuid4())
    azure = (await ok(stack, "provider", "add", "entra-" + tenant[:6], "--json", "--template", "azure",
                      "--tenant", tenant, "--audience", "api://inbound", "--user-claim", "oid",
                      "--provision-users", "--user-field", "username")).json()
    assert azure["issuer"] == f"https://login.microsoftonline.com/{tenant}/v2.0" and azure["user_claim"] == "oid"
    common = await ctl(stack, "provider", "add", "entra-common", "--template", "azure", "--tenant", "common",
                       "--audience", "x")
    assert common.code == 2 and "multi-tenant" in common.err
    taken = await ctl(stack, "provider", "add", name + "-2", "--template", "okta", "--domain", domain,
                      "--audience", "x")
    assert taken.code == 4 and "issuer" in taken.err
    assert name in (await ok(stack, "provider", "list")).out
    updated = (await ok(stack, "provider", "update", name, "--json", "--clock-skew", "60", "--alg", "ES256")).json()
    assert updated["clock_skew"] == 60 and updated["algorithms"] == ["ES256"]
    assert not (await ok(stack, "provider", "disable", name, "--json")).json()["active"]
    await ok(stack, "provider", "delete", name)
    assert (await ctl(stack, "provider", "show", name)).code == 3

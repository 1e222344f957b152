"""A real edge process over HTTPS (a DevCA certificate) in front of the session's
services: tokens over TLS, HSTS on the answers, discovery naming the configured
issuer; and an edge told to serve plain HTTP on a public address refuses to start."""
from __future__ import annotations

import ssl
import subprocess
import sys

import httpx
import pytest

from inboundlib import identity
from inboundlib.pki import DevCA
from services.devstack import ROOT, free_port

pytestmark = pytest.mark.separate_processes


async def test_a_real_edge_over_https_issues_tokens_and_sends_hsts(stack, make_client, tmp_path):
    certificate = DevCA(tmp_path / "ca").issue_for(identity.service("edge"))
    port = free_port()
    issuer = f"https://localhost:{port}"
    stack.start_service("edge", port=port, key="edge-https", extra_env={
        "INBOUND_HTTP_TLS_CERT_FILE": str(certificate.cert), "INBOUND_HTTP_TLS_KEY_FILE": str(certificate.key),
        "INBOUND_ISSUER": issuer, "INBOUND_HSTS_MAX_AGE": "86400"})
    client, secret = await make_client()
    try:
        async with httpx.AsyncClient(base_url=issuer, timeout=10,
                                     verify=ssl.create_default_context(cafile=str(certificate.ca))) as http:
            token = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                    auth=(client.client_id, secret))
            metadata = await http.get("/.well-known/oauth-authorization-server")
            refused = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                      auth=(client.client_id, "wrong"))
            account = await http.get("/account")  # signed out: the account's sign-in form
    finally:
        stack.stop_service("edge-https")
    assert token.status_code == 200 and token.json()["access_token"]
    assert metadata.json()["issuer"] == issuer
    assert metadata.json()["token_endpoint"] == f"{issuer}/oauth/token"
    assert refused.status_code == 401
    for reply in (token, metadata, refused, account):
        assert reply.headers["strict-transport-security"] == "max-age=86400"
    # Over TLS the browser's cookies are __Host- (Secure, Path=/, no Domain): no other site or
    # subdomain, and no plain-http answer, can set them.
    assert account.status_code == 200, account.text
    csrf = [c for c in account.headers.get_list("set-cookie") if c.startswith("__Host-inbound_csrf=")]
    assert len(csrf) == 1 and {"secure", "httponly", "path=/", "samesite=lax"} <= {
        part.strip().lower() for part in csrf[0].split(";")[1:]} and "domain" not in csrf[0].lower()


def test_plain_http_on_a_public_address_stops_the_edge_before_it_serves(stack):
    env = {**stack.service_env("edge"), "INBOUND_BIND_HOST": "0.0.0.0", "INBOUND_HTTP_PORT": str(free_port()),
           "INBOUND_METRICS_PORT": "0"}
    done = subprocess.run([sys.executable, "-m", "services.edge"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "INBOUND_HTTP_PLAINTEXT_PUBLIC=1" in done.stderr
    env["INBOUND_HTTP_PLAINTEXT_PUBLIC"] = "yes-please"  # a bad value is a configuration error too
    done = subprocess.run([sys.executable, "-m", "services.edge"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "INBOUND_HTTP_PLAINTEXT_PUBLIC" in done.stderr

"""`make run`'s JWT bearer part: the banner's two commands mint an assertion for the demo user
at the demo identity provider and trade it at the token endpoint, with the demo-partner
client's secret only when it was just made (the stack itself: tests/integration)."""
from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace

from services.devstack import DEMO_PARTNER, DEMO_USERNAME, README_FEDERATION, ROOT, DemoSeed, demo_idp_banner

EDGE = "http://127.0.0.1:8080"
STACK = SimpleNamespace(edge_url=EDGE, ca=SimpleNamespace(ca_file=Path("/run/pki/ca.pem")))
BASE = dict(client_id="cid", client_secret="", app_client_id="appid", app_secret="", partner_client_id="pid")


def test_a_fresh_partner_shows_its_secret_once_and_ready_commands():
    banner = demo_idp_banner(DemoSeed(**BASE, partner_secret="partner-secret-1"), STACK)
    assert "partner-secret-1" in banner and "shown only this once" in banner
    mint, grant = [line.strip() for line in banner.splitlines() if "curl " in line]
    words = shlex.split(mint.split("$(", 1)[1])
    assert words[:5] == ["curl", "-sS", "--cacert", "/run/pki/ca.pem", "-d"]
    assert f"sub={DEMO_USERNAME}" in words and f"aud={EDGE}/oauth/token" in words
    assert "https://127.0.0.1:8091/token" in words and mint.startswith("ASSERTION=$(")
    words = shlex.split(grant)
    assert "pid:partner-secret-1" in words and "assertion=$ASSERTION" in words
    assert "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer" in words and f"{EDGE}/oauth/token" in words


def test_a_later_start_shows_no_secret():
    banner = demo_idp_banner(DemoSeed(**BASE), STACK)
    assert "pid:$DEMO_PARTNER_SECRET" in banner and "rotate-secret pid" in banner


def test_a_partner_that_could_not_be_made_says_why():
    banner = demo_idp_banner(DemoSeed(**BASE, partner_error="RegistryError: no"), STACK)
    assert DEMO_PARTNER in banner and "RegistryError: no" in banner and "curl" not in banner


def test_the_banner_points_to_the_readme_s_federation_examples():
    """The token exchange and third-party tokens are tried through the README's examples (their
    provider's issuer is the demo IdP's, which make run therefore does not register itself)."""
    banner = demo_idp_banner(DemoSeed(**BASE), STACK)
    assert f'"{README_FEDERATION}"' in banner
    assert f"\n## {README_FEDERATION}\n" in (ROOT / "README.md").read_text()

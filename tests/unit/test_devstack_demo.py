"""`make run`'s demo banner: secrets and the demo password are shown when made and never
again; the curl commands carry what is needed to paste them (the stack itself:
tests/integration/test_inboundctl_users.py)."""
from __future__ import annotations

import shlex

from services.devstack import DEMO_APP, DEMO_USERNAME, DEMO_WEB, DemoSeed, browser_banner, demo_banner

EDGE = "http://127.0.0.1:8080"
PAGE = "http://127.0.0.1:8090/start"
FRESH = DemoSeed(client_id="cid", client_secret="client-secret-1", app_client_id="appid",
                 app_secret="app-secret-2", user_id="uid", user_password="demo-password-3",
                 web_client_id="webid", demo_page_url=PAGE)
AGAIN = DemoSeed(client_id="cid", client_secret="", app_client_id="appid", app_secret="", user_id="uid",
                 web_client_id="webid", demo_page_url=PAGE)


def curl_lines(banner: str) -> list[str]:
    return [line.strip() for line in banner.splitlines() if "curl " in line]


def test_a_fresh_seed_shows_each_secret_and_the_password_with_ready_commands():
    banner = demo_banner(FRESH, EDGE)
    for secret in ("client-secret-1", "app-secret-2", "demo-password-3"):
        assert secret in banner
    assert "shown only this once" in banner
    client_credentials, password_grant, refresh = curl_lines(banner)
    assert "-u cid:client-secret-1" in client_credentials and "grant_type=client_credentials" in client_credentials
    words = shlex.split(password_grant.split("$(", 1)[1])
    assert words[:4] == ["curl", "-sS", "-u", "appid:app-secret-2"]
    assert f"username={DEMO_USERNAME}" in words and "password=demo-password-3" in words
    assert "grant_type=password" in words and f"{EDGE}/oauth/token" in words
    assert password_grant.startswith("REFRESH_TOKEN=$(")
    words = shlex.split(refresh)
    assert "grant_type=refresh_token" in words and "refresh_token=$REFRESH_TOKEN" in words
    assert "appid:app-secret-2" in words


def test_a_later_start_shows_no_secret_and_says_how_to_get_new_ones():
    banner = demo_banner(AGAIN, EDGE)
    for secret in ("client-secret-1", "app-secret-2", "demo-password-3"):
        assert secret not in banner
    assert "shown only this once" not in banner
    assert "rotate-secret appid" in banner and f"user set-password {DEMO_USERNAME}" in banner
    password_grant, refresh = curl_lines(banner)
    assert "appid:$DEMO_APP_SECRET" in password_grant and "password=$DEMO_PASSWORD" in password_grant
    assert "appid:$DEMO_APP_SECRET" in refresh


def test_a_user_that_could_not_be_made_is_said_and_the_clients_still_shown():
    seed = DemoSeed(client_id="cid", client_secret="client-secret-1", app_client_id="appid", app_secret="s",
                    user_error="RuntimeError: registry said no")
    banner = demo_banner(seed, EDGE)
    assert "could not be created: RuntimeError: registry said no" in banner
    assert "client-secret-1" in banner and DEMO_APP not in banner.split("could not")[1]


def test_the_banner_prints_the_browser_sign_in_s_start_url_and_the_demo_user():
    browser = browser_banner(FRESH, EDGE)
    assert browser.startswith("Sign in with a browser")
    assert f"open {PAGE}" in browser and f"{EDGE}/oauth/authorize" in browser
    assert f"username {DEMO_USERNAME}, password demo-password-3" in browser
    assert DEMO_WEB in browser and "webid" in browser and "127.0.0.1 only" in browser
    again = browser_banner(AGAIN, EDGE)
    assert f"open {PAGE}" in again and "demo-password-3" not in again and "set-password" in again


def test_a_public_client_that_could_not_be_made_is_said():
    seed = DemoSeed(client_id="cid", client_secret="", app_client_id="appid", app_secret="", user_id="uid",
                    web_error="InvalidArgument: unknown scopes")
    banner = browser_banner(seed, EDGE)
    assert f"{DEMO_WEB} could not be made: InvalidArgument: unknown scopes" in banner and "open " not in banner
    assert browser_banner(DemoSeed(client_id="cid", client_secret="", app_client_id="appid", app_secret="",
                                   user_error="RuntimeError: no"), EDGE) == ""

"""The README's browser walk-through, driven in Chromium (Playwright, Debian's /usr/bin/chromium):
the demo client page's start URL -> Inbound's sign-in page -> the consent page -> the demo client
page with the tokens; then the account page, and sign-out through the demo page (RP-initiated
logout). It checks each step and, with --screenshots, saves the pages the README shows
(docs/browser-*.png, desktop size).

Against a `make run` already running (give the demo user's password, shown by its banner):

    DEMO_PASSWORD=... .venv/bin/python docs/walkthrough.py [--screenshots]

Or let it start `make run` (or `make run-single`) itself, read the banner, walk through, and stop
it (the demo user's password is read from the banner, which shows it when the user is made, i.e.
on a fresh `.run/`; otherwise give DEMO_PASSWORD):

    .venv/bin/python docs/walkthrough.py --make run|run-single [--screenshots]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
START_URL = "http://127.0.0.1:8090/start"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
DESKTOP = {"width": 1100, "height": 760}
# The pages are found as a person finds them: by labels and button names (as tests/browser/flow.py).
USERNAME_LABEL = re.compile(r"user ?name|e-?mail", re.I)
PASSWORD_LABEL = re.compile(r"password", re.I)
SIGN_IN_BUTTON = re.compile(r"sign in|log in", re.I)
ALLOW_BUTTON = re.compile(r"^\s*(allow|approve|accept|authori[sz]e|yes)", re.I)
SIGN_OUT_BUTTON = re.compile(r"sign out", re.I)


def start_make(target: str) -> tuple[subprocess.Popen, dict]:
    """`make <target>` in its own process group; waits for the banner, returns what it said."""
    proc = subprocess.Popen(["make", target], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    said: dict = {"lines": []}
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            said["lines"].append(line.rstrip("\n"))
            if m := re.match(r"\s+password:\s+(\S+)", line):
                said["password"] = m.group(1)
            if m := re.search(r"sign in as the demo user \(username demo, password (\S+)\)", line):
                said["password"] = said.get("password") or m.group(1).rstrip(",")
            if m := re.match(r"\s+open (http://\S+)", line):
                said["start_url"] = m.group(1)
            if "Ctrl-C stops everything" in line:
                ready.set()
        ready.set()
    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(300) or proc.poll() is not None:
        raise SystemExit(f"make {target} did not come up:\n" + "\n".join(said["lines"][-40:]))
    return proc, said


def stop_make(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: every service stops gracefully
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def walk(start_url: str, username: str, password: str, screenshots: bool) -> list[str]:
    """The walk-through; returns what it saw, a line per step. Raises AssertionError at a wrong step."""
    from playwright.sync_api import expect, sync_playwright

    seen = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=DESKTOP).new_page()
        page.goto(start_url)
        seen.append(f"start {start_url} -> {page.url.split('?')[0]} ({page.title()!r})")
        page.get_by_label(USERNAME_LABEL).first.fill(username)
        page.get_by_label(PASSWORD_LABEL).first.fill(password)
        if screenshots:
            page.screenshot(path=str(DOCS / "browser-sign-in.png"))
        page.get_by_role("button", name=SIGN_IN_BUTTON).click()
        allow = page.get_by_role("button", name=ALLOW_BUTTON)
        expect(allow).to_be_visible()
        seen.append(f"signed in -> consent page {page.url.split('?')[0]} ({page.title()!r}): "
                    f"{' | '.join(t.strip() for t in page.locator('li').all_inner_texts())[:200]}")
        if screenshots:
            page.screenshot(path=str(DOCS / "browser-consent.png"))
        allow.click()
        page.wait_for_url(re.compile(r"/result$"))
        claims = json.loads(page.locator("#id-token-claims").inner_text())
        access = page.locator("#access-token").inner_text()
        refresh = page.locator("#refresh-token").inner_text()
        assert claims.get("preferred_username") == username, claims
        assert access and refresh.startswith("ibr_"), (access[:20], refresh[:20])
        seen.append(f"consented -> demo client page {page.url}: ID token claims {sorted(claims)}, access token "
                    f"{access[:12]}…, refresh token {refresh[:8]}…, scope {page.locator('#scope').inner_text()!r}")
        if screenshots:
            page.screenshot(path=str(DOCS / "browser-demo-client.png"), full_page=False)
        # Again: the session is warm and the consent remembered, so no page appears.
        page.goto(start_url)
        page.wait_for_url(re.compile(r"/result$"))
        seen.append("started again -> straight back to the demo client page (session warm, consent remembered)")
        account = page.get_by_role("link", name=re.compile("account", re.I))
        account.click()
        expect(page.get_by_role("button", name=SIGN_OUT_BUTTON).first).to_be_visible()
        seen.append(f"account page {page.url}: {page.locator('main').inner_text()[:200]!r}")
        if screenshots:
            page.screenshot(path=str(DOCS / "browser-account.png"))
        page.go_back()
        page.get_by_role("button", name=re.compile("sign out of inbound", re.I)).click()
        page.wait_for_url(re.compile(r"/signed-out$"))
        seen.append(f"signed out (RP-initiated logout) -> {page.url}")
        page.goto(start_url)
        expect(page.get_by_label(PASSWORD_LABEL).first).to_be_visible()
        seen.append("started again after sign-out -> the sign-in page again")
        browser.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(prog="docs/walkthrough.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make", choices=["run", "run-single"], help="start `make <target>` first, stop it after")
    parser.add_argument("--start-url", default=START_URL)
    parser.add_argument("--username", default="demo")
    parser.add_argument("--screenshots", action="store_true", help="save docs/browser-*.png")
    args = parser.parse_args()
    proc = None
    password = os.environ.get("DEMO_PASSWORD", "")
    start_url = args.start_url
    try:
        if args.make:
            t0 = time.monotonic()
            proc, said = start_make(args.make)
            print(f"make {args.make} up in {time.monotonic() - t0:.0f} s", flush=True)
            password = said.get("password") or password
            start_url = said.get("start_url") or start_url
        if not password:
            raise SystemExit("the demo user's password: set DEMO_PASSWORD (the banner showed it when the user was made)")
        for line in walk(start_url, args.username, password, args.screenshots):
            print(" -", line, flush=True)
        print("walk-through OK")
    finally:
        if proc is not None:
            stop_make(proc)


if __name__ == "__main__":
    sys.exit(main())

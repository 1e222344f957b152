"""The browser's flow in `make bench`: the authorization code flow with PKCE (RFC 6749 §4.1,
RFC 7636) through the real edge, beside client_credentials of the same stack and run.

- setup: a public client (authorization_code and refresh_token, PKCE, a loopback redirect
  URI nobody listens on: the load generator reads the Location and never follows it) and
  one user per connection. Each connection's browser then signs in and consents once, as a
  person would (GET /oauth/authorize, the sign-in form, the consent form, with httpx and the
  pages' own forms and CSRF tokens), so its session is warm and its consent remembered.
- the whole flow, sessions warm (bench.flowload --mode flow): authorize -> the code in the
  redirect -> the token request with the verifier -> access, refresh and ID tokens.
- the code-for-token exchange alone: codes minted beforehand (the flow's first half, outside
  the measured window), then only their token requests in the window.

Per second per core = 1 / CPU per operation of every measured process (Inbound's, Postgres,
NATS); "Inbound's processes alone" leaves Postgres and NATS out. The ratios set both against
client_credentials (JWT) per core of the same stack in the same run, and the flow's CPU
against the raw signatures it needs (an ES256 access token, an RS256 ID token).
"""
from __future__ import annotations

import asyncio
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

ROOT = Path(__file__).resolve().parents[1]
SCOPE = "openid profile"  # an ID token (RS256) with the profile claims; profile needs consent
REDIRECT_URI = "http://127.0.0.1:9/callback"  # discard port: never followed
FLOW_CONNECTIONS = 16
APPROVE_WORDS = ("allow", "approve", "accept", "authorize", "authorise", "yes")  # as tests/browser/flow.py


# --- a browser's sign-in and consent, through the pages' own forms -----------------------------

class _Forms(HTMLParser):
    """Every <form> of a page: its action, method, fields (name -> value) and submit buttons
    (name, value, the words a person reads on it)."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._button: list | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                               "fields": {}, "types": {}, "buttons": []})
        elif not self.forms:
            return
        elif tag == "input":
            kind = a.get("type", "text").lower()
            if kind == "submit":
                self.forms[-1]["buttons"].append((a.get("name", ""), a.get("value", ""), a.get("value", "")))
            elif a.get("name"):
                self.forms[-1]["fields"][a["name"]] = a.get("value", "")
                self.forms[-1]["types"][a["name"]] = kind
        elif tag == "button" and a.get("type", "submit").lower() == "submit":
            self._button = [a.get("name", ""), a.get("value", ""), ""]

    def handle_data(self, data):
        if self._button is not None:
            self._button[2] += data

    def handle_endtag(self, tag):
        if tag == "button" and self._button is not None and self.forms:
            self.forms[-1]["buttons"].append((self._button[0], self._button[1], self._button[2].strip()))
            self._button = None


def page_forms(html: str) -> list[dict]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def _submission(form: dict, username: str, password: str) -> dict[str, str] | None:
    """The fields a person would send with `form`: credentials typed in a sign-in form, the approving
    button pressed in a consent form; None for a form that is neither (sign-out, deny)."""
    fields = dict(form["fields"])
    if "password" in form["types"].values():
        for name, kind in form["types"].items():
            if kind == "password":
                fields[name] = password
            elif kind in ("text", "email") and not fields[name]:
                fields[name] = username
        return fields
    for name, value, text in form["buttons"]:
        if any(text.lower().startswith(word) or value.lower() == word for word in APPROVE_WORDS):
            if name:
                fields[name] = value
            return fields
    return None


def sign_in_and_consent(http, authorize_url: str, redirect_uri: str, username: str, password: str) -> str:
    """Follow a browser through the authorization request: the sign-in page, the consent page, until
    Inbound redirects to `redirect_uri`; returns that Location. `http`: an httpx.Client on the edge
    (its cookie jar becomes the warm session)."""
    reply = http.get(authorize_url)
    for _ in range(8):
        location = reply.headers.get("location", "")
        if reply.is_redirect:
            if location.startswith(redirect_uri):
                return location
            reply = http.get(urljoin(str(reply.url), location))
            continue
        if reply.status_code != 200:
            raise RuntimeError(f"the authorization request answered {reply.status_code}: {reply.text[:300]}")
        for form in page_forms(reply.text):
            fields = _submission(form, username, password)
            if fields is not None:
                action = urljoin(str(reply.url), form["action"] or str(reply.url))
                reply = http.post(action, data=fields) if form["method"] == "post" else http.get(action, params=fields)
                break
        else:
            raise RuntimeError(f"no sign-in or consent form on the page: {reply.text[:300]}")
    raise RuntimeError("the authorization request did not end at the redirect URI within 8 steps")


# --- setting up: the client, the users, their warm sessions ------------------------------------

async def _create(stack, users: int) -> dict:
    from services.client_registry.api import GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN, ClientSpec, UserSpec
    from services.client_registry.client import RegistryClient

    channel = stack.channel("client_registry")
    try:
        registry = RegistryClient(channel)
        record, _ = await registry.create_client(ClientSpec(
            name=f"bench-web-{secrets.token_hex(3)}", public=True,
            grant_types=[GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN], scopes=SCOPE.split(),
            redirect_uris=[REDIRECT_URI], pkce_required=True, token_format="jwt", comments="created by make bench"))
        tag = secrets.token_hex(3)
        credentials = [(f"bench-browser-{tag}-{i}", secrets.token_urlsafe(18)) for i in range(users)]
        for username, password in credentials:
            await registry.create_user(UserSpec(username=username, password=password, display_name="bench user"))
        return {"client_id": record.client_id, "users": credentials}
    finally:
        await channel.close()


def setup(stack, connections: int) -> dict:
    """The client, one user per connection, and each one's browser signed in with consent given:
    {"client_id", "sessions": [cookie line, ...], "setup_s"}."""
    import httpx

    from bench import flowload
    from inboundlib.oauth import pkce

    t0 = time.monotonic()
    made = asyncio.run(_create(stack, connections))
    sessions = []
    for username, password in made["users"]:
        with httpx.Client(base_url=stack.edge_url, timeout=30) as http:
            verifier = secrets.token_urlsafe(48)
            url = stack.edge_url + flowload.AUTHORIZE_PATH + "?" + str(httpx.QueryParams({
                "response_type": "code", "client_id": made["client_id"], "redirect_uri": REDIRECT_URI,
                "scope": SCOPE, "state": "s", "code_challenge": pkce.s256(verifier), "code_challenge_method": "S256"}))
            location = sign_in_and_consent(http, url, REDIRECT_URI, username, password)
            code = parse_qs(urlsplit(location).query).get("code", [""])[0]
            reply = http.post(flowload.TOKEN_PATH, data={"grant_type": "authorization_code", "code": code,
                                                         "redirect_uri": REDIRECT_URI, "client_id": made["client_id"],
                                                         "code_verifier": verifier})
            if reply.status_code != 200 or not reply.json().get("id_token"):
                raise RuntimeError(f"the first code exchange answered {reply.status_code}: {reply.text[:300]}")
            sessions.append("; ".join(f"{c.name}={c.value}" for c in http.cookies.jar))
    return {"client_id": made["client_id"], "sessions": sessions, "setup_s": time.monotonic() - t0}


# --- the runs ----------------------------------------------------------------------------------

def flowload_cmd(stack, setup_: dict, sessions_file: Path, mode: str, connections: int, seconds: float,
                 **options: str) -> list[str]:
    cmd = [sys.executable, "-m", "bench.flowload", "--url", stack.edge_url, "--client-id", setup_["client_id"],
           "--redirect-uri", REDIRECT_URI, "--scope", SCOPE, "--sessions", str(sessions_file), "--mode", mode,
           "--connections", str(connections), "--seconds", str(seconds)]
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", value]
    return cmd


def run_flowload(*cmd_args, **options) -> dict:
    """One bench.flowload run: the parsed result plus its CPU seconds."""
    from bench.loadgen import parse_result

    cmd = flowload_cmd(*cmd_args, **options)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=float(cmd[cmd.index("--seconds") + 1])
                          + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"bench.flowload exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    result = parse_result(done.stdout)
    result["loadgen_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["loadgen"] = "python-httpx"
    return result


def bench_stack(stack, roots: dict[str, int], metrics_urls: dict[str, str], args) -> dict:
    """Setup, then the whole flow (a warm-up, the measured run), then the exchange alone."""
    from bench import passwords, run

    connections = args.flow_connections
    setup_ = setup(stack, connections)
    out: dict = {"connections": connections, "setup_s": setup_["setup_s"], "scope": SCOPE}
    with tempfile.TemporaryDirectory(prefix="inbound-bench-flow-") as tmp_name:
        tmp = Path(tmp_name)
        sessions = tmp / "sessions.txt"
        sessions.write_text("".join(line + "\n" for line in setup_["sessions"]))
        common = (stack, setup_, sessions)
        if args.warmup > 0:
            run_flowload(*common, "flow", connections, args.warmup)
        offsets = run._log_offsets(stack)
        flow = run.measure_window(roots, lambda: run_flowload(*common, "flow", connections, args.seconds),
                                  metrics_urls=metrics_urls)
        out["flow"] = passwords._annotate(flow, stack, offsets)
        # The exchange alone: enough codes for the measured time at well over the flow's rate (an exchange
        # is the cheaper half), minted just before (codes live 60 s by default).
        count = max(connections * 4, int((flow["ok_per_s"] or 10) * 3 * args.seconds))
        codes = tmp / "codes.txt"
        minted = run_flowload(*common, "mint", connections, args.seconds * 3 + 10, count=str(count),
                              codes_out=str(codes))
        out["minted"] = {"codes": len(codes.read_text().splitlines()), "seconds": minted["seconds"],
                         "non2xx": minted["non2xx"]}
        offsets = run._log_offsets(stack)
        exchange = run.measure_window(roots, lambda: run_flowload(*common, "exchange", connections, args.seconds,
                                                                  codes_in=str(codes)), metrics_urls=metrics_urls)
        out["exchange"] = passwords._annotate(exchange, stack, offsets) | {"planned_s": args.seconds}
    return out


# --- figures -----------------------------------------------------------------------------------

def _div(a, b):
    return a / b if a is not None and b else None


def _per_core(run_: dict | None):
    return 1e6 / run_["server_cpu_us_per_ok"] if run_ and run_.get("server_cpu_us_per_ok") else None


def ratios(results: dict) -> dict:
    """Per mode: flows/s/core and exchanges/s/core over client_credentials (JWT) tokens/s/core of the
    same stack, and the flow's CPU over its raw signatures (ES256 access token + RS256 ID token)."""
    out: dict = {}
    sign = (results.get("signing") or {}).get("cpu_us_per_token")
    rs256 = (results.get("signing_rs256") or {}).get("cpu_us_per_token")
    for mode in ("edge", "single"):
        data = (results.get("browser") or {}).get(mode)
        if not data:
            continue
        cc = _per_core((results.get(mode) or {}).get("jwt"))
        for kind in ("flow", "exchange"):
            run_ = data.get(kind)
            if run_:
                out[f"{mode}_{kind}_per_core_over_cc_per_core"] = _div(run_.get("per_core_s"), cc)
        flow = data.get("flow")
        if flow and sign and rs256:
            out[f"{mode}_flow_cpu_over_raw_signatures"] = _div(flow.get("server_cpu_us_per_ok"), sign + rs256)
    return out


def warnings(results: dict) -> list[str]:
    from bench import run

    out = []
    for mode, data in (results.get("browser") or {}).items():
        for kind in ("flow", "exchange"):
            r = (data or {}).get(kind)
            if not r:
                continue
            label = f"browser {mode} {kind}"
            if r.get("non2xx") or r.get("socket_errors"):
                out.append(f"{label}: INVALID RUN — {r['non2xx']} failed operations, {r['socket_errors']} socket "
                           f"errors; first: {r.get('sample_non2xx') or '—'}")
            out.extend(run.run_warnings(label, r))
        exchange = (data or {}).get("exchange")
        if exchange and exchange.get("codes_left") == 0 and exchange["seconds"] < 0.9 * exchange.get("planned_s", 0):
            out.append(f"browser {mode} exchange: the minted codes ran out before the time was up")
        minted = (data or {}).get("minted") or {}
        if minted.get("non2xx"):
            out.append(f"browser {mode}: {minted['non2xx']} authorization requests failed while minting codes")
    return out


def render(results: dict) -> list[str]:
    browser = results.get("browser") or {}
    if not browser:
        return []
    r = results.get("ratios") or {}
    names = {"edge": "multi-process", "single": "single process"}
    lines = [""]
    w = lines.append
    head = f"{'The browser: authorization code + PKCE, sessions warm':<58}{'ops/s':>9}{'/s/core':>9}{'CPU ms':>9}" \
           f"{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}"
    w(head)
    w("-" * len(head))
    for mode, data in browser.items():
        for kind, label in (("flow", "whole flow (authorize -> code -> token)"), ("exchange", "code exchange alone")):
            run_ = data.get(kind)
            if not run_:
                continue
            w(operation_row(label + ", " + names.get(mode, mode), run_["ok_per_s"], run_.get("per_core_s"),
                            run_.get("server_cpu_us_per_ok"), run_["p50_us"], run_["p99_us"], run_["non2xx"]))
            parts = ", ".join(f"{n} {v / 1000:.2f}" for n, v in run_["cpu_us_per_ok"].items() if v)
            w(f"    {data['connections']} browsers in flight; Inbound's processes alone: "
              f"{_f(run_.get('per_inbound_core_s'), '{:.1f}')}/s/core; CPU ms per op: {parts}")
        cc_row = client_credentials_row(results, mode, names.get(mode, mode))
        if cc_row:
            w(cc_row)
    w(f"  scope {SCOPE!r}: an ES256 access token, a refresh token and an RS256 ID token per flow; the load generator "
      f"(Python httpx) is not counted")
    w("")
    w("Ratios (same run), the browser")
    w("-" * 86)
    rs256 = (results.get("signing_rs256") or {}).get("cpu_us_per_token")
    for mode in browser:
        tag = names.get(mode, mode)
        for key, text in ((f"{mode}_flow_per_core_over_cc_per_core", "whole flows/s/core / client_credentials/s/core"),
                          (f"{mode}_exchange_per_core_over_cc_per_core", "exchanges/s/core / client_credentials/s/core"),
                          (f"{mode}_flow_cpu_over_raw_signatures",
                           f"CPU per flow / raw ES256 + RS256 sign ({_f(rs256, '{:.0f}')} µs RS256)")):
            if key in r:
                w(f"  {tag + ': ' + text:<76}{_f(r[key], '{:.2f}'):>8}")
    return lines


def _f(value, fmt: str = "{:,.0f}", none: str = "—") -> str:
    return none if value is None else fmt.format(value)


def operation_row(label: str, ok_per_s: float, per_core_s: float | None, cpu_us_per_ok: float | None,
                  p50_us: float, p99_us: float, failed: int) -> str:
    """One row of the browser's and federation's tables: ops/s, /s/core, CPU ms, p50 ms, p99 ms, failed."""
    cpu_ms = cpu_us_per_ok / 1000 if cpu_us_per_ok else None
    return (f"{label:<58}{ok_per_s:>9.1f}{_f(per_core_s, '{:.1f}'):>9}{_f(cpu_ms, '{:.2f}'):>9}"
            f"{p50_us / 1000:>9.2f}{p99_us / 1000:>9.2f}{failed:>8,}")


def client_credentials_row(results: dict, mode: str, name: str) -> str | None:
    """The same stack's client_credentials JWT run as a row of those tables (None: not measured)."""
    cc = (results.get(mode) or {}).get("jwt")
    if not cc or not cc.get("server_cpu_us_per_ok"):
        return None
    return operation_row("client_credentials JWT, same stack and run, " + name, cc["ok_per_s"], _per_core(cc),
                         cc["server_cpu_us_per_ok"], cc["p50_us"], cc["p99_us"], cc["non2xx"])


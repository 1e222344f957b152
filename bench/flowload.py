"""The load generator of the browser's flow (bench/codeflow.py): N keep-alive HTTP/1.1
connections (httpx, one connection each), each a browser with a warm session (its
cookies, one line of --sessions each: signed in, consent remembered), in a loop for a
fixed time. Prints the same BENCH_RESULT line as bench.pyload and wrk.

- `--mode flow`: one operation = GET /oauth/authorize with the session cookie, a fresh
  `state`, `nonce` and PKCE S256 challenge (RFC 7636 §4.3) -> its 302 to the redirect URI
  with the code (never followed: nobody listens there) and `state` checked -> POST
  /oauth/token with the code and the verifier (a public client: client_id alone) ->
  200 with an access token (and an ID token when the scope has openid).
- `--mode mint`: the first half only; writes `code verifier` lines to --codes-out until
  --count codes (or the time is up), for `--mode exchange`.
- `--mode exchange`: one operation = the token request alone, for the codes of --codes-in
  (each used once, shared out among the connections); stops at the time or when the codes
  run out (the duration printed is the time taken).

    python -m bench.flowload --url http://127.0.0.1:8080 --client-id C --redirect-uri R --scope 'openid' \\
        --sessions sessions.txt --mode flow --seconds 8
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from bench.loadgen import result_lines, run_on_uvloop
from inboundlib.oauth import pkce

AUTHORIZE_PATH = "/oauth/authorize"
TOKEN_PATH = "/oauth/token"


def _cookies(line: str) -> dict[str, str]:
    pairs = (part.strip().partition("=") for part in line.split(";") if part.strip())
    return {name: value for name, _, value in pairs}


class Failed(Exception):
    """An operation that did not give what it should: status and a short sample of the answer."""


class Flow:
    def __init__(self, args, stats: dict):
        self.args = args
        self.stats = stats

    async def mint(self, http: httpx.AsyncClient) -> tuple[str, str]:
        """One authorization request with the warm session: (code, verifier)."""
        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(16)
        reply = await http.get(AUTHORIZE_PATH, params={
            "response_type": "code", "client_id": self.args.client_id, "redirect_uri": self.args.redirect_uri,
            "scope": self.args.scope, "state": state, "nonce": secrets.token_urlsafe(16),
            "code_challenge": pkce.s256(verifier), "code_challenge_method": pkce.S256})
        location = reply.headers.get("location", "")
        if reply.status_code not in (302, 303) or not location.startswith(self.args.redirect_uri):
            raise Failed(f"authorize {reply.status_code} {location[:120]} {reply.text[:200]}")
        query = parse_qs(urlsplit(location).query)
        if query.get("state") != [state] or not query.get("code"):
            raise Failed(f"authorize redirected without the code or the state: {sorted(query)}")
        return query["code"][0], verifier

    async def exchange(self, http: httpx.AsyncClient, code: str, verifier: str) -> None:
        reply = await http.post(TOKEN_PATH, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.args.redirect_uri,
            "client_id": self.args.client_id, "code_verifier": verifier})
        if reply.status_code != 200:
            raise Failed(f"token {reply.status_code} {reply.text[:200]}")
        answer = reply.json()
        if not answer.get("access_token") or ("openid" in self.args.scope.split() and not answer.get("id_token")):
            raise Failed(f"token answer without the tokens asked for: {sorted(answer)}")

    async def worker(self, cookies: dict[str, str], deadline: float, codes: list[tuple[str, str]] | None,
                     minted: list[tuple[str, str]]) -> None:
        stats = self.stats
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=self.args.url, cookies=cookies, limits=limits, timeout=30.0) as http:
            while time.perf_counter() < deadline:
                if codes is not None and not codes:
                    return
                if self.args.mode == "mint" and len(minted) >= self.args.count:
                    return
                t0 = time.perf_counter()
                try:
                    if self.args.mode == "flow":
                        await self.exchange(http, *await self.mint(http))
                    elif self.args.mode == "mint":
                        minted.append(await self.mint(http))
                    else:
                        await self.exchange(http, *codes.pop())
                except Failed as exc:
                    stats["non2xx"] += 1
                    stats["err_status"] += 1
                    stats["sample"] = stats["sample"] or str(exc)
                    continue
                except httpx.HTTPError:
                    stats["err_read"] += 1
                    return
                stats["latencies"].append((time.perf_counter() - t0) * 1e6)
                stats["requests"] += 1


async def _main(args) -> None:
    sessions = [_cookies(line) for line in Path(args.sessions).read_text().splitlines() if line.strip()]
    if len(sessions) < args.connections:
        raise SystemExit(f"{len(sessions)} sessions in {args.sessions} for {args.connections} connections")
    stats = {"requests": 0, "non2xx": 0, "err_read": 0, "err_status": 0, "latencies": [], "sample": ""}
    codes: list[tuple[str, str]] | None = None
    if args.mode == "exchange":
        codes = [tuple(line.split()) for line in Path(args.codes_in).read_text().splitlines() if line.strip()]
    minted: list[tuple[str, str]] = []
    flow = Flow(args, stats)
    start = time.perf_counter()
    deadline = start + args.seconds
    await asyncio.gather(*(flow.worker(sessions[i], deadline, codes, minted) for i in range(args.connections)))
    duration = time.perf_counter() - start
    if args.mode == "mint":
        Path(args.codes_out).write_text("".join(f"{code} {verifier}\n" for code, verifier in minted))
    print(result_lines(requests=stats["requests"] + stats["non2xx"], seconds=duration,
                       latencies_us=stats["latencies"], non2xx=stats["non2xx"], err_read=stats["err_read"],
                       err_status=stats["err_status"], sample=stats["sample"],
                       codes_left=len(codes) if codes is not None else 0))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flowload")
    parser.add_argument("--url", required=True, help="the edge's base URL")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--redirect-uri", required=True)
    parser.add_argument("--scope", default="openid")
    parser.add_argument("--sessions", required=True, help="one browser's cookies a line (name=value; ...)")
    parser.add_argument("--mode", choices=["flow", "mint", "exchange"], default="flow")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--count", type=int, default=0, help="mint: how many codes")
    parser.add_argument("--codes-out", default="", help="mint: where the codes and verifiers go")
    parser.add_argument("--codes-in", default="", help="exchange: the codes and verifiers to exchange")
    args = parser.parse_args()
    run_on_uvloop(_main(args))


if __name__ == "__main__":
    main()

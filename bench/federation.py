"""Federation in `make bench`: the JWT bearer grant (RFC 7523 §2.1), token exchange (RFC 8693)
of an identity provider's ID tokens, and gRPC introspection of that provider's access tokens
accepted as-is (keys warm), beside client_credentials and our own JWTs of the same stack and run.

- setup: the test identity provider (services/demo_idp.py: HTTPS on loopback, a certificate of
  the stack's private CA) registered as an OpenID provider (its discovery document and JWKS
  fetched by third_party_token, as for Okta or Entra ID); users its tokens map to (by username);
  a JWT-bearer integration whose assertions a key of the bench signs (ES256, an inline JWKS),
  standing for those users; one confidential client (client_secret_basic) allowed both grants,
  with an exchange policy for the provider's ID tokens.
- JWT bearer grants: one operation = POST /oauth/token with grant_type jwt-bearer and an
  assertion (minted before the window, each with its own jti and used once: a second use is a
  replay) -> an access token.
- token exchanges: one operation = POST /oauth/token with grant_type token-exchange and one of
  the provider's ID tokens as subject_token (each used once) -> an Inbound access token.
- introspection of third-party tokens: the provider's access tokens at token_issuer's gRPC
  Introspect (routed to third_party_token by their iss), batched through IssuerClient and as
  one-item calls, after a first pass over every token (so the provider's keys are cached).

Per second per core = 1 / CPU per operation of every measured process (Inbound's, Postgres,
NATS; the identity provider, which only serves its keys, is outside); the load generators
(Python) are not counted. Ratios set each against client_credentials (JWT) tokens/s/core and
our own JWTs' introspection of the same stack and run, and CPU per grant against the raw ES256
verify + sign it needs at least.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from bench.codeflow import _div, _f, _per_core, client_credentials_row, operation_row
from services.client_registry.api import GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE

ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SCOPE = "api.read"
USERS = 16  # the users assertions and the provider's tokens stand for, taken in turn
PROVIDER = "bench-idp"
PROVIDER_AUDIENCE = "bench-api"  # the aud of the provider's tokens (its client id at the IdP)
ASSERTION_ISSUER = "bench-integration"
ASSERTION_LIFETIME = 1200  # seconds: outlives a whole bench run, within the integration's maximum
FOREIGN_TOKENS = 2000  # the provider's access tokens the introspection runs take at random
INTROSPECT_MODES = ("batched", "unary")
OPERATIONS = (("jwt_bearer", "JWT bearer grants (RFC 7523)"), ("exchange", "token exchanges of ID tokens (RFC 8693)"))


# --- setting up ----------------------------------------------------------------------------------

def assertion_key():
    """The integration's signing key (ES256) and its public JWKS, as the operator registers it inline."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    kid = "bench-" + secrets.token_hex(6)
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwks = json.dumps({"keys": [{**public, "kid": kid, "use": "sig", "alg": "ES256"}]})
    return key, kid, jwks


def mint_assertions(key, kid: str, issuer: str, audience: str, users: list[str], count: int) -> list[str]:
    """`count` RFC 7523 §3 assertions, each with its own jti, for `users` in turn."""
    import jwt

    now = int(time.time())
    headers = {"kid": kid, "typ": "JWT"}
    return [jwt.encode({"iss": issuer, "sub": users[i % len(users)], "aud": audience, "iat": now,
                        "exp": now + ASSERTION_LIFETIME, "jti": secrets.token_urlsafe(16)},
                       key, algorithm="ES256", headers=headers) for i in range(count)]


def jwt_bearer_body(assertion: str) -> str:
    return urlencode({"grant_type": GRANT_JWT_BEARER, "assertion": assertion, "scope": SCOPE})


def exchange_body(subject_token: str) -> str:
    return urlencode({"grant_type": GRANT_TOKEN_EXCHANGE, "subject_token": subject_token,
                      "subject_token_type": ID_TOKEN_TYPE, "scope": SCOPE})


class IdpThread:
    """services.demo_idp.DemoIdp serving HTTPS on its own event loop in a thread of the bench process
    (a certificate of the stack's private CA); tokens are minted in process with its keys."""

    def __init__(self, ca):
        from services.demo_idp import DemoIdp

        self.idp = DemoIdp(ca)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="demo-idp", daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.idp.start(), self.loop).result(30)
        return self.idp

    def __exit__(self, *exc) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.idp.stop(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


async def _create(stack, idp, jwks: str) -> dict:
    """The users, the provider, the client and the integration, through the registry as the operator."""
    from services.client_registry.api import (
        ClientSpec,
        JwtBearerIntegration,
        OidcProvider,
        TokenExchangePolicy,
        UserSpec,
    )
    from services.client_registry.client import RegistryClient, add_missing_scopes

    channel = stack.channel("client_registry")
    try:
        registry = RegistryClient(channel)
        await add_missing_scopes(registry, ["api.read", "api.write"])
        tag = secrets.token_hex(3)
        users = [f"bench-fed-{tag}-{i}" for i in range(USERS)]
        for username in users:
            await registry.create_user(UserSpec(username=username, display_name="bench user"))
        provider = f"{PROVIDER}-{tag}"
        await registry.create_provider(OidcProvider(
            name=provider, issuer=idp.issuer, discovery_url=idp.discovery_url, audiences=(PROVIDER_AUDIENCE,),
            algorithms=("RS256",), user_claim="sub", user_field="username", scopes=("api.read", "api.write")))
        record, secret = await registry.create_client(ClientSpec(
            name=f"bench-federation-{tag}", grant_types=[GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE],
            scopes=["api.read", "api.write"], token_format="jwt", comments="created by make bench",
            token_exchange=TokenExchangePolicy(subject_token_types=(ID_TOKEN_TYPE,), providers=(provider,))))
        integration = await registry.create_integration(JwtBearerIntegration(
            id="", name=f"bench-integration-{tag}", client_id=record.client_id, issuer=ASSERTION_ISSUER,
            jwks=jwks, algorithms=("ES256",), subject_kind="user", user_field="username", require_jti=True))
        return {"users": users, "provider": provider, "client": (record.client_id, secret),
                "integration": integration.id}
    finally:
        await channel.close()


def setup(stack, idp) -> dict:
    """Everything the three runs need; the first grant of each kind and one introspection checked by hand."""
    t0 = time.monotonic()
    key, kid, jwks = assertion_key()
    made = asyncio.run(_create(stack, idp, jwks))
    made.update(key=key, kid=kid, token_url=stack.edge_url + "/oauth/token")
    made["setup_s"] = time.monotonic() - t0
    return made


def mint_id_tokens(idp, users: list[str], count: int, lifetime: int = ASSERTION_LIFETIME) -> list[str]:
    """`count` of the provider's tokens (RS256, as Entra ID and Okta sign) for `users` in turn, each with its
    own jti, for the provider's registered audience."""
    return [idp.token(users[i % len(users)], PROVIDER_AUDIENCE, alg="RS256", lifetime=lifetime)
            for i in range(count)]


# --- the runs ------------------------------------------------------------------------------------

def _first(url: str, headers: dict[str, str], body: str, what: str) -> dict:
    """One request by hand before any load: a wiring fault shows here, with the answer."""
    from bench import passwords

    status, text = passwords._post(url, headers, body)
    if status != 200:
        raise RuntimeError(f"{what}: the edge answered {status}: {text[:300]}")
    answer = json.loads(text)
    if answer.get("access_token", "").count(".") != 2:
        raise RuntimeError(f"{what}: no JWT access token in the answer: {sorted(answer)}")
    return answer


def bench_grant(stack, roots: dict[str, int], metrics_urls: dict[str, str], headers: dict[str, str], url: str,
                make_bodies, connections: int, args, tmp: Path, name: str) -> dict:
    """A warm-up with fresh single-use bodies, then the measured run with enough for its time at the warm-up's
    rate (each body once, bench.pyload --once; minted before the window)."""
    from bench import passwords, run

    warm_count = max(connections * 8, 400)
    warm_file = tmp / f"{name}-warm.txt"
    warm_file.write_text("".join(b + "\n" for b in make_bodies(warm_count)))
    warm = passwords.run_pyload(url, headers, connections, max(args.warmup, 0.5), bodies_file=str(warm_file),
                                once=True)
    count = max(connections * 8, int(max(warm["ok_per_s"], 50.0) * args.seconds * 2.5))
    bodies = tmp / f"{name}.txt"
    t0 = time.monotonic()
    bodies.write_text("".join(b + "\n" for b in make_bodies(count)))
    mint_s = time.monotonic() - t0
    offsets = run._log_offsets(stack)
    result = run.measure_window(roots, lambda: passwords.run_pyload(url, headers, connections, args.seconds,
                                                                    bodies_file=str(bodies), once=True),
                                metrics_urls=metrics_urls)
    result.update(connections=connections, bodies=count, mint_s=mint_s, planned_s=args.seconds,
                  warmup_ok_per_s=warm["ok_per_s"], warmup_non2xx=warm["non2xx"],
                  warmup_sample=warm.get("sample_non2xx", ""))
    return passwords._annotate(result, stack, offsets)


def bench_foreign_introspection(stack, roots: dict[str, int], metrics_urls: dict[str, str], tokens: list[str],
                                args, tmp: Path) -> dict:
    """The provider's access tokens at token_issuer's gRPC Introspect (it routes them to third_party_token):
    after grpcload's first pass over every token the provider's keys are cached (warm)."""
    from bench import run
    from inboundlib import identity

    path = tmp / "foreign-tokens.txt"
    path.write_text("".join(t + "\n" for t in tokens))
    out: dict = {}
    for mode in INTROSPECT_MODES:
        offsets = run._log_offsets(stack)
        result = run.grpc_measured_run(mode, stack.addr("token_issuer"), roots, concurrency=args.grpc_concurrency,
                                       seconds=args.grpc_seconds, warmup=args.grpc_warmup, tokens_file=str(path),
                                       metrics_urls=metrics_urls,
                                       tls_env=stack.tls_env(identity.resource_server("sample")))
        result["label"] = f"introspect third-party JWT, {mode}"
        result["tokens"] = len(tokens)
        served = result["rpcs_served"].get(f"token_issuer: {run.INTROSPECT_METHOD}")
        result["issuer_introspect_rpcs"] = served["calls"] if served else 0
        result["service_logs"] = run._log_findings(stack, offsets)
        dead = {n: sp.proc.returncode for n, sp in stack.services.items() if sp.proc.poll() is not None}
        if dead:
            result["dead_services"] = dead
        out[mode] = result
    return out


def bench_stack(stack, roots: dict[str, int], metrics_urls: dict[str, str], args) -> dict:
    """On a running stack (whose fetching services trust its CA and loopback, as every devstack's do): the demo
    IdP, setup, then each run not skipped."""
    from bench import passwords

    out: dict = {"users": USERS}
    with IdpThread(stack.ca) as idp, tempfile.TemporaryDirectory(prefix="inbound-bench-fed-") as tmp_name:
        tmp = Path(tmp_name)
        made = setup(stack, idp)
        out["setup_s"] = made["setup_s"]
        headers = passwords.basic_headers(made["client"])
        url = made["token_url"]
        connections = args.federation_connections

        def assertions(count: int) -> list[str]:
            return [jwt_bearer_body(a) for a in mint_assertions(made["key"], made["kid"], ASSERTION_ISSUER, url,
                                                                made["users"], count)]

        def exchanges(count: int) -> list[str]:
            return [exchange_body(t) for t in mint_id_tokens(idp, made["users"], count)]

        if not args.skip_jwt_bearer:
            _first(url, headers, assertions(1)[0], "JWT bearer grant")
            out["jwt_bearer"] = bench_grant(stack, roots, metrics_urls, headers, url, assertions, connections,
                                            args, tmp, "jwt-bearer")
        if not args.skip_token_exchange:
            _first(url, headers, exchanges(1)[0], "token exchange")
            out["exchange"] = bench_grant(stack, roots, metrics_urls, headers, url, exchanges, connections, args,
                                          tmp, "exchange")
        if not args.skip_foreign_introspection:
            tokens = mint_id_tokens(idp, made["users"], args.introspect_tokens)
            out["introspection"] = bench_foreign_introspection(stack, roots, metrics_urls, tokens, args, tmp)
        out["idp_fetches"] = dict(idp.fetches)
    return out


# --- figures -------------------------------------------------------------------------------------

def ratios(results: dict) -> dict:
    """Per stack: grants/s/core over client_credentials (JWT) tokens/s/core of the same stack; CPU per grant
    over the raw signatures it needs at least (a verify of the assertion or ID token, an ES256 sign); foreign
    introspections/s over our own JWTs' (verified-JWT cache on, and off: every call verified) and over the bare
    gRPC echo, and token_issuer + third_party_token CPU per call over a raw RS256 verify."""
    out: dict = {}
    sign = (results.get("signing") or {}).get("cpu_us_per_token")
    verify = (results.get("verifying") or {}).get("cpu_us_per_token")
    rs256_verify = (results.get("verifying_rs256") or {}).get("cpu_us_per_token")
    echo = results.get("grpc_echo") or {}
    own = results.get("introspection") or {}
    for mode, data in (results.get("federation") or {}).items():
        cc = _per_core((results.get(mode) or {}).get("jwt"))
        for kind, floor in (("jwt_bearer", (verify, sign)), ("exchange", (rs256_verify, sign))):
            run_ = data.get(kind)
            if not run_:
                continue
            out[f"{mode}_{kind}_per_core_over_cc_per_core"] = _div(run_.get("per_core_s"), cc)
            if None not in floor:
                out[f"{mode}_{kind}_cpu_over_raw_signatures"] = _div(run_.get("server_cpu_us_per_ok"), sum(floor))
        for intro_mode, run_ in (data.get("introspection") or {}).items():
            key = f"{mode}_foreign_{intro_mode}"
            out[f"{key}_rate_over_grpc_echo"] = _div(run_.get("ok_per_s"), echo.get("ok_per_s"))
            if mode == "edge":
                for own_kind, tag in (("jwt", "own_warm"), ("jwt_cold", "own_cold")):
                    mine = (own.get(own_kind) or {}).get(intro_mode)
                    if mine:
                        out[f"{key}_rate_over_{tag}"] = _div(run_.get("ok_per_s"), mine.get("ok_per_s"))
            cpu = run_.get("cpu_us_per_ok") or {}
            parts = [cpu.get("token_issuer"), cpu.get("third_party_token")]
            if None not in parts and rs256_verify:
                out[f"{key}_issuer_and_third_party_cpu_over_raw_rs256_verify"] = sum(parts) / rs256_verify
    return out


def warnings(results: dict) -> list[str]:
    from bench import run

    out = []
    for mode, data in (results.get("federation") or {}).items():
        for kind, label in OPERATIONS:
            r = (data or {}).get(kind)
            if not r:
                continue
            tag = f"federation {mode} {kind}"
            if r.get("non2xx") or r.get("socket_errors"):
                out.append(f"{tag}: INVALID RUN — {r['non2xx']} failed operations, {r['socket_errors']} socket "
                           f"errors; first: {r.get('sample_non2xx') or '—'}")
            if r.get("warmup_non2xx"):
                out.append(f"{tag}: {r['warmup_non2xx']} failed during the warm-up; first: {r['warmup_sample']}")
            if r.get("bodies_left") == 0 and r["seconds"] < 0.9 * r.get("planned_s", 0):
                out.append(f"{tag}: the minted {'assertions' if kind == 'jwt_bearer' else 'tokens'} ran out "
                           f"before the time was up ({r['seconds']:.1f} of {r['planned_s']:.0f} s)")
            out.extend(run.run_warnings(tag, r))
        for intro_mode, r in ((data or {}).get("introspection") or {}).items():
            tag = f"federation {mode} introspection {intro_mode}"
            out.extend(run.grpc_failure_warnings(tag, r))
            out.extend(run.run_warnings(tag, r))
    return out


def render(results: dict) -> list[str]:
    federation = results.get("federation") or {}
    if not federation:
        return []
    r = results.get("ratios") or {}
    names = {"edge": "multi-process", "single": "single process"}
    lines = [""]
    w = lines.append
    head = f"{'Federation':<58}{'ops/s':>9}{'/s/core':>9}{'CPU ms':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}"
    w(head)
    w("-" * len(head))
    for mode, data in federation.items():
        for kind, label in OPERATIONS:
            run_ = data.get(kind)
            if not run_:
                continue
            w(operation_row(label + ", " + names.get(mode, mode), run_["ok_per_s"], run_.get("per_core_s"),
                            run_.get("server_cpu_us_per_ok"), run_["p50_us"], run_["p99_us"], run_["non2xx"]))
            parts = ", ".join(f"{n} {v / 1000:.2f}" for n, v in run_["cpu_us_per_ok"].items() if v and v >= 10)
            w(f"    {run_['connections']} connections; Inbound's processes alone: "
              f"{_f(run_.get('per_inbound_core_s'), '{:.1f}')}/s/core; CPU ms per op: {parts}")
        for intro_mode, run_ in (data.get("introspection") or {}).items():
            w(operation_row(run_["label"] + ", " + names.get(mode, mode), run_["ok_per_s"], _per_core(run_),
                            run_["server_cpu_us_per_ok"], run_["p50_us"], run_["p99_us"], run_["failed"]))
            parts = ", ".join(f"{n} {v / 1000:.2f}" for n, v in run_["cpu_us_per_ok"].items() if v and v >= 10)
            w(f"    {results['meta'].get('grpc_concurrency', '?')} in flight, {run_['tokens']:,} tokens, keys warm; "
              f"CPU ms per call: {parts}")
        cc_row = client_credentials_row(results, mode, names.get(mode, mode))
        if cc_row:
            w(cc_row)
    rs256_verify = (results.get("verifying_rs256") or {}).get("cpu_us_per_token")
    w(f"  assertions ES256 (a key of the bench, inline JWKS), the provider's tokens RS256 (services/demo_idp.py, "
      f"raw RS256 verify {_f(rs256_verify, '{:.0f}')} µs); each grant's assertion or token used once; the load "
      f"generators (Python) are not counted")
    w("")
    w("Ratios (same run), federation")
    w("-" * 86)
    for mode in federation:
        tag = names.get(mode, mode)
        for key, text in ((f"{mode}_jwt_bearer_per_core_over_cc_per_core", "JWT bearer grants/s/core / client_credentials/s/core"),
                          (f"{mode}_jwt_bearer_cpu_over_raw_signatures", "CPU per JWT bearer grant / raw ES256 verify + sign"),
                          (f"{mode}_exchange_per_core_over_cc_per_core", "token exchanges/s/core / client_credentials/s/core"),
                          (f"{mode}_exchange_cpu_over_raw_signatures", "CPU per exchange / raw RS256 verify + ES256 sign")):
            if key in r:
                w(f"  {tag + ': ' + text:<76}{_f(r[key], '{:.2f}'):>8}")
        for intro_mode in INTROSPECT_MODES:
            key = f"{mode}_foreign_{intro_mode}"
            for suffix, text in (("rate_over_own_warm", "third-party introspections/s / own JWTs' (cache on)"),
                                 ("rate_over_own_cold", "third-party introspections/s / own JWTs' (verified)"),
                                 ("rate_over_grpc_echo", "third-party introspections/s / bare gRPC echo"),
                                 ("issuer_and_third_party_cpu_over_raw_rs256_verify",
                                  "issuer + third_party_token CPU / raw RS256 verify")):
                if f"{key}_{suffix}" in r:
                    w(f"  {tag + ' ' + intro_mode + ': ' + text:<76}{_f(r[key + '_' + suffix], '{:.2f}'):>8}")
    return lines


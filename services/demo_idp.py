"""The demo identity provider: an OpenID provider that signs whatever it is told to, for
tests and `make run` (issue "Federation").

A DEVELOPMENT AND TEST TOOL ONLY, never deployed: it binds to 127.0.0.1 alone (there is
no option to change that), serves HTTPS with a certificate from the local private CA
(inboundlib.pki, the one `make run` and the tests make), and mints tokens for anyone on
this machine who asks.

- GET  /.well-known/openid-configuration   the discovery document (OpenID Connect Discovery §4)
- GET  /jwks                               the public keys: RS256, ES256 and EdDSA, each with a kid
                                           (and, after `rotate(keep_old=True)`, the previous ones)
- POST /token                              mint a JWT from form fields (loopback callers only):
                                           sub, aud (repeatable), alg (RS256, ES256, EdDSA), lifetime
                                           (seconds, default 300), jti (default random), claims (a JSON
                                           object of extra claims); answers {"token", "alg", "kid"}
- GET  /redirect, /large, /html            test answers: a redirect to /jwks, a JSON document larger
                                           than `large_bytes` (chunked, no Content-Length), a page
                                           that is not JSON

Switches for tests: `down` (every answer 503), `slow` (seconds before answering), `hold` (an
asyncio.Event every answer waits for: a fetch in flight until the test sets it), `fetches`
(requests counted per path), `max_age` (the Cache-Control max-age of /jwks and discovery),
`rotate()`. `mint(claims, alg=..., kid=..., headers=..., secret=...)` signs any claims with
any header, including tokens no verifier should accept (`alg: none`, HS256 keyed with a
public key, a `jku`), for negative tests.

    python -m services.demo_idp --ca-dir .run/pki [--port 8091]

In-process: `async with DemoIdp(ca_dir) as idp: ...` (or `await idp.start()` / `await idp.stop()`).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import secrets
import signal
import ssl
import time
from pathlib import Path

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import HMACAlgorithm

from inboundlib import pki

HOST = "127.0.0.1"  # loopback only: a development tool
DEFAULT_PORT = 8091
ALGORITHMS = ("RS256", "ES256", "EdDSA")
DEFAULT_MAX_AGE = 300
MAX_LIFETIME = 86400  # what POST /token mints at most
_DEFAULT = object()


class _AnyKeyHMAC(HMACAlgorithm):
    """HMAC that takes any bytes as its key, a PEM public key included: pyjwt rightly refuses
    that, and the demo IdP needs it to mint the "HS256 keyed with the public key" forgery."""

    def prepare_key(self, key):
        return key if isinstance(key, bytes) else str(key).encode()


def _forger() -> jwt.PyJWS:
    jws = jwt.PyJWS(algorithms=[])
    for name, hash_alg in (("HS256", HMACAlgorithm.SHA256), ("HS384", HMACAlgorithm.SHA384),
                           ("HS512", HMACAlgorithm.SHA512)):
        jws.register_algorithm(name, _AnyKeyHMAC(hash_alg))
    return jws


def _new_key(alg: str):
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"the demo IdP has no {alg} key")


def _public_jwk(alg: str, kid: str, private_key) -> dict:
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


class SigningKey:
    def __init__(self, alg: str):
        self.alg = alg
        self.private_key = _new_key(alg)
        self.kid = f"{alg.lower()}-{secrets.token_hex(4)}"
        self.jwk = _public_jwk(alg, self.kid, self.private_key)

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)


class DemoIdp:
    """The provider's keys, switches and HTTPS server."""

    def __init__(self, ca: pki.DevCA | Path | str, *, port: int = 0, issuer_host: str = HOST):
        self._ca = ca  # made (or opened) at start: minting needs no CA
        self.requested_port = port
        self.issuer_host = issuer_host
        self.port = 0
        self.keys: dict[str, SigningKey] = {alg: SigningKey(alg) for alg in ALGORITHMS}
        self.retired: list[SigningKey] = []  # still published (rotate(keep_old=True))
        self.down = False
        self.slow = 0.0
        self.hold: asyncio.Event | None = None
        self.max_age = DEFAULT_MAX_AGE
        self.large_bytes = 300 * 1024
        self.fetches: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None

    # ---- keys and tokens

    @property
    def issuer(self) -> str:
        return f"https://{self.issuer_host}:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def ca(self) -> pki.DevCA:
        if not isinstance(self._ca, pki.DevCA):
            self._ca = pki.DevCA(Path(self._ca))
        return self._ca

    @property
    def ca_file(self) -> str:
        return str(self.ca.ca_file)

    def url(self, path: str, host: str | None = None) -> str:
        return f"https://{host or self.issuer_host}:{self.port}{path}"

    def jwks(self) -> dict:
        return {"keys": [k.jwk for k in (*self.keys.values(), *self.retired)]}

    def rotate(self, *, keep_old: bool = False) -> None:
        """New keys (new kids) for every algorithm; the old ones are published on only with keep_old."""
        old = list(self.keys.values())
        self.keys = {alg: SigningKey(alg) for alg in ALGORITHMS}
        self.retired = old if keep_old else []

    def claims(self, sub: str, aud: str | list[str], *, lifetime: int = 300, **extra) -> dict:
        """The usual claims of a fresh token from this issuer, with `extra` added or overriding."""
        now = int(time.time())
        return {"iss": self.issuer, "sub": sub, "aud": aud, "iat": now, "exp": now + lifetime,
                "jti": secrets.token_urlsafe(16), **extra}

    def mint(self, claims: dict, *, alg: str = "RS256", kid=_DEFAULT, headers: dict | None = None,
             secret: bytes | None = None) -> str:
        """Sign `claims` as given (nothing added). `kid`: default the key's own, None for none,
        or any string. `headers`: extra header parameters (jku, x5u, typ ...). `alg` none or
        HS256/384/512 (keyed with `secret`, which may be anything, a public key's PEM included)
        mint tokens a verifier must refuse."""
        header = dict(headers or {})
        if alg == "none":
            if kid not in (_DEFAULT, None):
                header["kid"] = kid
            return jwt.encode(claims, None, algorithm="none", headers=header or None)
        if alg.startswith("HS"):
            if secret is None:
                raise ValueError("an HS* token needs a secret")
            if kid not in (_DEFAULT, None):
                header["kid"] = kid
            payload = json.dumps(claims, separators=(",", ":")).encode()
            return _forger().encode(payload, secret, algorithm=alg, headers=header or None)
        key = self.keys[alg]
        if kid is _DEFAULT:
            kid = key.kid
        if kid is not None:
            header["kid"] = kid
        return jwt.encode(claims, key.private_key, algorithm=alg, headers=header or None)

    def token(self, sub: str, aud: str | list[str], *, alg: str = "RS256", lifetime: int = 300, **extra) -> str:
        """A valid token of this issuer (mint(claims(...)))."""
        return self.mint(self.claims(sub, aud, lifetime=lifetime, **extra), alg=alg)

    # ---- HTTP

    def discovery_document(self) -> dict:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": list(ALGORITHMS),
        }

    def _cached_json(self, document: dict) -> web.Response:
        return web.json_response(document, headers={"Cache-Control": f"public, max-age={self.max_age}"})

    @web.middleware
    async def _switches(self, request: web.Request, handler):
        self.fetches[request.path] += 1
        if self.slow:
            await asyncio.sleep(self.slow)
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            return web.Response(status=503, text="down (demo IdP switch)")
        return await handler(request)

    async def _discovery(self, request: web.Request) -> web.Response:
        return self._cached_json(self.discovery_document())

    async def _jwks(self, request: web.Request) -> web.Response:
        return self._cached_json(self.jwks())

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(self.jwks_uri)

    async def _large(self, request: web.Request) -> web.StreamResponse:
        """Chunked, without Content-Length: only a limit applied while reading stops it."""
        body = json.dumps({"keys": [], "padding": "x" * self.large_bytes}).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 16384):
            await response.write(body[start:start + 16384])
        await response.write_eof()
        return response

    async def _html(self, request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>not JSON</title>", content_type="text/html")

    async def _mint(self, request: web.Request) -> web.Response:
        """POST /token: a demo, for this machine only (README's examples)."""
        if not ipaddress.ip_address(request.remote or "0.0.0.0").is_loopback:
            return web.json_response({"error": "loopback callers only"}, status=403)
        form = await request.post()
        sub = form.get("sub", "")
        audiences = form.getall("aud", [])
        alg = form.get("alg", "RS256")
        if not sub or not audiences:
            return web.json_response({"error": "sub and aud are required"}, status=400)
        if alg not in ALGORITHMS:
            return web.json_response({"error": f"alg must be one of {', '.join(ALGORITHMS)}"}, status=400)
        try:
            lifetime = int(form.get("lifetime", "300"))
            extra = json.loads(form.get("claims", "{}"))
        except ValueError:
            return web.json_response({"error": "lifetime must be an integer and claims a JSON object"}, status=400)
        if not isinstance(extra, dict) or not 0 < lifetime <= MAX_LIFETIME:
            return web.json_response({"error": f"claims must be an object, lifetime 1..{MAX_LIFETIME}"}, status=400)
        if form.get("jti"):
            extra["jti"] = form["jti"]
        aud = audiences[0] if len(audiences) == 1 else list(audiences)
        # `claims` may override the usual ones (a "sub" or "exp" of its own): merged, never passed
        # as keyword arguments (a "sub" there was a TypeError, a 500).
        token = self.mint({**self.claims(sub, aud, lifetime=lifetime), **extra}, alg=alg)
        return web.json_response({"token": token, "alg": alg, "kid": self.keys[alg].kid},
                                 headers={"Cache-Control": "no-store"})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._switches])
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/token", self._mint)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/large", self._large)
        app.router.add_get("/html", self._html)
        return app

    async def start(self) -> DemoIdp:
        files = self.ca.issue("demo-idp", dns_names=pki.LOCAL_HOSTS, ips=pki.LOCAL_IPS, client=False)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert, files.key)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.requested_port, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DemoIdp:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def _serve(ca_dir: str, port: int) -> None:
    idp = DemoIdp(ca_dir, port=port)
    await idp.start()
    print(f"demo IdP (a development tool, 127.0.0.1 only): issuer {idp.issuer}\n"
          f"  discovery {idp.discovery_url}\n  JWKS {idp.jwks_uri}\n"
          f"  mint: curl --cacert {idp.ca_file} -d sub=alice -d aud=https://... {idp.issuer}/token", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await idp.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.demo_idp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ca-dir", required=True, help="the private CA's folder (inboundlib.pki.DevCA)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.ca_dir, args.port))


if __name__ == "__main__":
    main()

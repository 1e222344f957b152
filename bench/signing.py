"""Raw ES256 signing and verification rates on one core: pyjwt over a
cryptography P-256 key, with the claims an RFC 9068 access token from
token_issuer carries (verification: the floor under JWT introspection)."""
from __future__ import annotations

import secrets
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec


def _claims() -> dict:
    now = int(time.time())
    return {
        "iss": "http://127.0.0.1:8080",
        "sub": "c_" + secrets.token_hex(12),
        "aud": "https://api.example.com",
        "client_id": "c_" + secrets.token_hex(12),
        "scope": "api.read api.write",
        "jti": secrets.token_urlsafe(16),
        "iat": now,
        "exp": now + 1800,
    }


def measure(seconds: float = 2.0) -> dict:
    key = ec.generate_private_key(ec.SECP256R1())
    headers = {"kid": "bench-" + secrets.token_hex(8), "typ": "at+jwt"}
    claims = _claims()
    for _ in range(200):  # warm-up
        jwt.encode(claims, key, algorithm="ES256", headers=headers)
    n = 0
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    deadline = wall0 + seconds
    while True:
        for _ in range(100):
            claims["jti"] = secrets.token_urlsafe(16)
            jwt.encode(claims, key, algorithm="ES256", headers=headers)
        n += 100
        if time.perf_counter() >= deadline:
            break
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    return {
        "tokens": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "tokens_per_s": n / wall,
        "cpu_us_per_token": cpu / n * 1e6,
        "wall_us_per_token": wall / n * 1e6,
    }


def measure_verify(seconds: float = 1.0) -> dict:
    """jwt.decode of one ES256 access token with its public key (signature, iss, required claims)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    claims = _claims()
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "bench", "typ": "at+jwt"})
    options = {"verify_aud": False, "require": ["iss", "sub", "client_id", "jti", "iat", "exp"]}

    return _verify_rate(lambda: jwt.decode(token, public, algorithms=["ES256"], issuer=claims["iss"],
                                           options=options), seconds)


def measure_rs256(seconds: float = 1.0) -> dict:
    """Raw RS256 signing (2048-bit RSA, pyjwt) on one core, with an ID token's claims: what token_issuer
    signs the ID token of every authorization code flow with (INBOUND_ID_TOKEN_ALG's default)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {**_claims(), "aud": ["c_" + secrets.token_hex(12)], "auth_time": int(time.time()),
              "nonce": secrets.token_urlsafe(16), "sid": secrets.token_urlsafe(16)}
    headers = {"kid": "bench-rs256", "typ": "JWT"}
    for _ in range(20):  # warm-up
        jwt.encode(claims, key, algorithm="RS256", headers=headers)
    n = 0
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    deadline = wall0 + seconds
    while True:
        for _ in range(10):
            jwt.encode(claims, key, algorithm="RS256", headers=headers)
        n += 10
        if time.perf_counter() >= deadline:
            break
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    return {"tokens": n, "wall_s": wall, "cpu_s": cpu, "tokens_per_s": n / wall, "cpu_us_per_token": cpu / n * 1e6}


def measure_rs256_verify(seconds: float = 1.0) -> dict:
    """jwt.decode of one RS256 token (2048-bit RSA) with its public key: what checking an ID or access token of
    Entra ID, Okta or Google costs at least (they sign RS256), the floor under federation's figures."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key()
    claims = _claims()
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench-rs256", "typ": "JWT"})
    options = {"verify_aud": False, "require": ["iss", "sub", "jti", "iat", "exp"]}

    return _verify_rate(lambda: jwt.decode(token, public, algorithms=["RS256"], issuer=claims["iss"],
                                           options=options), seconds)


def _verify_rate(verify, seconds: float) -> dict:
    """`verify()` in a loop on this thread for `seconds` after a warm-up: rate and CPU per call."""
    for _ in range(200):  # warm-up
        verify()
    n = 0
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    deadline = wall0 + seconds
    while True:
        for _ in range(100):
            verify()
        n += 100
        if time.perf_counter() >= deadline:
            break
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    return {"tokens": n, "wall_s": wall, "cpu_s": cpu, "tokens_per_s": n / wall, "cpu_us_per_token": cpu / n * 1e6}

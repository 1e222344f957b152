"""Signing on the event loop or in the CPU worker pool (inboundlib.workers), per
algorithm: `python -m bench.offload`. For each of ES256, EdDSA and RS256, 64
concurrent signers in one uvloop loop sign JWT access tokens for a few seconds,
inline and then through the pool; printed: tokens/s, process CPU per token, the
event loop's own CPU per token (inline: the whole signature, during which the
loop serves nothing else; pool: the hand-over), and a 1 ms timer's median
lateness under that load (what every other request of the process waits)."""
from __future__ import annotations

import argparse
import asyncio
import secrets
import time

import jwt
import uvloop
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from inboundlib import workers

KEYS = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


def _sign(key, alg: str) -> str:
    now = int(time.time())
    claims = {"iss": "http://127.0.0.1:8080", "sub": "c_x", "aud": "https://api", "client_id": "c_x",
              "scope": "api.read", "jti": secrets.token_urlsafe(16), "iat": now, "exp": now + 1800}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": "k", "typ": "at+jwt"})


async def _run(alg: str, offload: bool, seconds: float, concurrency: int) -> dict:
    key = KEYS[alg]()
    done = 0
    stop_at = time.perf_counter() + seconds
    lateness: list[float] = []

    async def signer() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            if offload:
                await workers.CPU.submit(_sign, key, alg)
            else:
                _sign(key, alg)
                await asyncio.sleep(0)
            done += 1

    async def watchdog() -> None:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - t - 0.001)

    cpu0, loop_cpu0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
    await asyncio.gather(watchdog(), *(signer() for _ in range(concurrency)))
    cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop_cpu0
    wall = time.perf_counter() - wall0
    lateness.sort()
    return {"alg": alg, "mode": "pool" if offload else "inline", "tokens_per_s": done / wall,
            "cpu_us_per_token": cpu / done * 1e6, "loop_cpu_us_per_token": loop_cpu / done * 1e6,
            "timer_lateness_p50_ms": lateness[len(lateness) // 2] * 1e3 if lateness else None}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.offload")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    print(f"{'alg':<6} {'mode':<7} {'tokens/s':>9} {'CPU µs/token':>13} {'loop CPU µs/token':>18} "
          f"{'1 ms timer late p50 ms':>23}")
    for alg in KEYS:
        for offload in (False, True):
            r = uvloop.run(_run(alg, offload, args.seconds, args.concurrency))
            print(f"{r['alg']:<6} {r['mode']:<7} {r['tokens_per_s']:>9,.0f} {r['cpu_us_per_token']:>13,.0f} "
                  f"{r['loop_cpu_us_per_token']:>18,.0f} {r['timer_lateness_p50_ms']:>23.2f}")


if __name__ == "__main__":
    main()

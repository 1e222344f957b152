"""Introspection while the registry is unavailable and the owner's record is not cached:
the issuer decides on what it holds (a verified token, its expiry, the revocation set
with the cut-off a disabled client leaves). A token it cannot identify without the
registry (an opaque token not cached) still fails as unavailable (503), never a guess.
The same through the real system: tests/integration/test_cache_outage.py."""
from __future__ import annotations

import hashlib
import os
import time

import grpc
import jwt
import pytest

from services.client_registry.api import OpaqueTokenRecord, client_cut_off
from services.client_registry.cache import ClientCache
from services.token_issuer.introspection import TokenChecker
from services.token_issuer.keys import KeyEncryptor, KeyRing, new_key_record, open_key_record
from services.token_issuer.revocations import RevocationSet
from tests.fakes import FakeClients, FakeOpaqueTokens, FakeRegistry

ISSUER = "https://issuer.example"
ENC = KeyEncryptor(os.urandom(32))
KEY = open_key_record(new_key_record("ES256", ENC), ENC)
RING = KeyRing([KEY])


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")


def down_registry(failure: BaseException | None = None) -> FakeRegistry:
    """The registry while Postgres is stopped: every read fails as unavailable."""
    registry = FakeRegistry()
    registry.down = failure or unavailable()
    return registry


def checker(registry, revocations: RevocationSet | None = None, clients=None) -> TokenChecker:
    return TokenChecker(issuer=ISSUER, keyring=lambda: RING, revocations=revocations or RevocationSet(),
                        clients=ClientCache(clients or registry), registry=registry)


def mint(client_id: str = "app", **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": client_id, "aud": "api", "client_id": client_id, "scope": "api.read",
            "jti": os.urandom(8).hex(), "iat": now - 5, "exp": now + 600, **claims}
    return jwt.encode(body, KEY.private_key, algorithm="ES256", headers={"kid": KEY.kid, "typ": "at+jwt"})


async def test_a_valid_jwt_stays_active_when_its_clients_record_cannot_be_had():
    info = await checker(down_registry()).introspect(mint(), None, internal=True)
    assert info.active and info.client_id == "app" and info.scope == "api.read"


async def test_a_disabled_clients_jwt_stays_inactive_when_its_record_cannot_be_had():
    """Disabling a client records a cut-off in every replica's revocation set."""
    revocations = RevocationSet()
    revocations.apply(client_cut_off("app", int(time.time() * 1000), "operator: client disabled"))
    assert not (await checker(down_registry(), revocations).introspect(mint(), None, internal=True)).active


async def test_expired_and_forged_jwts_stay_inactive_when_the_registry_is_down():
    c = checker(down_registry())
    assert not (await c.introspect(mint(exp=int(time.time()) - 1), None, internal=True)).active
    assert not (await c.introspect(mint()[:-4] + "AAAA", None, internal=True)).active


async def test_a_failure_that_is_not_an_outage_is_not_decided_around():
    with pytest.raises(ValueError):
        await checker(down_registry(ValueError("bug"))).introspect(mint(), None, internal=True)


async def test_an_opaque_token_not_cached_needs_the_registry():
    """Without the registry there is nothing to check an opaque token against: the
    servicer answers temporarily_unavailable (503), never active and never inactive."""
    with pytest.raises(grpc.aio.AioRpcError):
        await checker(down_registry()).introspect("an-opaque-token-value", None, internal=True)


async def test_a_stored_opaque_token_stays_active_when_its_clients_record_cannot_be_had():
    token = "cached-opaque-token"
    digest = hashlib.sha256(token.encode()).digest()
    now = int(time.time())
    record = OpaqueTokenRecord(token_hash=digest, jti="j1", client_id="app", subject="app", username="",
                               scopes=("api.read",), audience=("api",), issued_at=now - 5, expires_at=now + 600)

    tokens = FakeOpaqueTokens()
    tokens.tokens[digest] = record
    clients = FakeClients()
    clients.down = unavailable()
    assert (await checker(tokens, clients=clients).introspect(token, None, internal=True)).active


async def test_without_nats_the_revocation_set_cannot_stand_in_for_the_client_record():
    """A cut-off made while NATS is away may be missing from this replica's set: then
    the registry's unavailability is the answer (503), not a guess that the token is fine."""
    from tests.fakes import FakeBus

    registry = down_registry()
    bus = FakeBus()
    tokens = TokenChecker(issuer=ISSUER, keyring=lambda: RING, revocations=RevocationSet(),
                          clients=ClientCache(registry), registry=registry, events=bus)
    assert (await tokens.introspect(mint(), None, internal=True)).active  # control: connected
    bus.connected.clear()
    with pytest.raises(grpc.aio.AioRpcError):
        await tokens.introspect(mint(), None, internal=True)

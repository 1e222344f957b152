"""Refresh tokens on the wire (registry contract) and in token_issuer's opaque-token
cache: a refresh token's record changes (consumed, revoked), so it is never served
from the cache, whichever way it is asked for."""
from __future__ import annotations

import dataclasses

import pytest

from services.client_registry import wire
from services.client_registry.api import (
    REFUSED_REUSED,
    ClientRecord,
    ItemError,
    OpaqueTokenRecord,
    Refused,
    Replay,
    RevocationRecord,
    Rotated,
    Rotation,
)
from services.token_issuer.opaque_cache import OpaqueTokenCache

RECORD = OpaqueTokenRecord(token_hash=b"h" * 32, jti="j1", client_id="c1", subject="u1", username="alice",
                           scopes=("a", "b"), audience=("api",), issued_at=100, expires_at=200, kind="refresh",
                           grant_id="g1", issued_at_ms=100_123, consumed=True, revoked=True, family_expires_at=300)


def test_a_refresh_record_keeps_its_state_on_the_wire():
    assert wire.opaque_from_pb(wire.opaque_to_pb(RECORD)) == RECORD


@pytest.mark.parametrize("outcome", [
    Rotated(consumed=RECORD, successor=dataclasses.replace(RECORD, token_hash=b"s" * 32, consumed=False)),
    Replay(encrypted_response=b"sealed", consumed=RECORD, replay_until_ms=1_700_000_005_123),
    Replay(encrypted_response=b"", consumed=RECORD, replay_until_ms=1_700_000_005_123),
    Refused(REFUSED_REUSED, grant_id="g1", revocation=RevocationRecord(kind="grant", value="g1", client_id="c1",
                                                                       expires_at=999, revoked_by="x", id=7)),
    Refused("unknown"),
    ItemError("invalid_argument", "bad"),
])
def test_every_rotation_outcome_survives_the_wire(outcome):
    assert wire.rotation_outcome_from_pb(wire.rotation_outcome_to_pb(outcome)) == outcome


def test_a_rotation_request_survives_the_wire():
    r = Rotation(token_hash=b"a" * 32, client_id="c1", new_token_hash=b"b" * 32, new_jti="j2", grace_seconds=5,
                 request_id="req-1")
    assert wire.rotation_from_pb(wire.rotation_to_pb(r)) == r


def test_the_client_settings_survive_the_wire():
    client = ClientRecord(client_id="c1", name="n", secret_hash="", public=True, grant_types=("password",),
                          scopes=(), redirect_uris=(), access_token_lifetime=60, refresh_token_lifetime=120,
                          token_format="jwt", pkce_required=True, active=True, logo_url="", comments="",
                          created_at=1, updated_at=2, allow_public_password_grant=True,
                          refresh_token_absolute_lifetime=3600)
    assert wire.client_from_pb(wire.client_to_pb(client, with_secret_hash=True)) == client


class ChangingStore:
    """A registry whose records change between reads, as a refresh token's do."""

    def __init__(self, record: OpaqueTokenRecord):
        self.record = record
        self.reads = 0

    async def get_opaque_tokens(self, hashes):
        self.reads += 1
        return [self.record if h == self.record.token_hash else None for h in hashes]


@pytest.mark.parametrize("looks_like_refresh", [True, False])
async def test_a_refresh_token_is_read_fresh_every_time(looks_like_refresh):
    store = ChangingStore(dataclasses.replace(RECORD, consumed=False, revoked=False))
    cache = OpaqueTokenCache(store)
    assert not (await cache.get(RECORD.token_hash, refresh=looks_like_refresh)).consumed
    store.record = RECORD  # rotated meanwhile
    assert (await cache.get(RECORD.token_hash, refresh=looks_like_refresh)).consumed
    if looks_like_refresh:
        assert store.reads == 2  # straight to the registry: the cache is not even consulted


async def test_an_access_token_is_served_from_the_cache():
    store = ChangingStore(dataclasses.replace(RECORD, kind="access", consumed=False, revoked=False,
                                              family_expires_at=0))
    cache = OpaqueTokenCache(store)
    await cache.get(RECORD.token_hash)
    await cache.get(RECORD.token_hash)
    assert store.reads == 1


# --- token_issuer's introspection of a refresh token: the registry's state decides -------------------

class OneRecord:
    """The registry holding one opaque token record (read fresh on every call)."""

    def __init__(self, record: OpaqueTokenRecord):
        self.record = record

    async def get_opaque_tokens(self, hashes):
        return [self.record if h == self.record.token_hash else None for h in hashes]


def refresh_record(token: str, **changes) -> OpaqueTokenRecord:
    import hashlib
    import time

    now = int(time.time())
    fields = dict(token_hash=hashlib.sha256(token.encode()).digest(), client_id="app", subject="app", username="",
                  issued_at=now, issued_at_ms=now * 1000, expires_at=now + 600, consumed=False, revoked=False,
                  family_expires_at=0)
    return dataclasses.replace(RECORD, **{**fields, **changes})


async def introspected(record: OpaqueTokenRecord, token: str):
    from services.token_issuer.introspection import TokenChecker
    from services.token_issuer.revocations import RevocationSet
    from tests.fakes import FakeClients, client_record

    checker = TokenChecker(issuer="https://issuer.example", keyring=lambda: None, revocations=RevocationSet(),
                           clients=FakeClients(client_record(scopes=("a",))), registry=OneRecord(record))
    return await checker.introspect(token, None, internal=True)


async def test_an_unconsumed_refresh_token_is_active():
    token = "ibr_" + "x" * 43
    info = await introspected(refresh_record(token), token)
    assert info.active and info.token_type == "refresh_token"


@pytest.mark.parametrize("changes", [{"consumed": True}, {"revoked": True}, {"family_expires_at": 1}],
                         ids=["consumed", "revoked", "family ended"])
async def test_a_consumed_revoked_or_ended_refresh_token_is_inactive_without_any_revocation_entry(changes):
    """The revocation set may not hold it (a grant revocation expires; a consumed token never
    has one): the registry's record alone decides."""
    token = "ibr_" + "y" * 43
    assert not (await introspected(refresh_record(token, **changes), token)).active

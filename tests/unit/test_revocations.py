"""The revocation set and its sync, with an in-memory registry (the real path is
tests/integration/test_revocation_replicas.py)."""
from __future__ import annotations

import time

from services.client_registry.api import RevocationRecord
from services.client_registry.wire import revocation_event, revocation_from_event
from services.token_issuer.introspection import TokenChecker
from services.token_issuer.revocations import RevocationSet, RevocationSync
from tests.fakes import FakeRevocations

NOW = int(time.time())


def revoked(s: RevocationSet, jti="", grant="", client="c", iat=NOW) -> bool:
    return s.is_revoked(jti=jti, grant_id=grant, client_id=client, issued_at=iat)


def test_each_kind_of_entry():
    s = RevocationSet()
    s.apply(RevocationRecord(kind="jti", value="j1", client_id="c", expires_at=NOW + 60))
    s.apply(RevocationRecord(kind="grant", value="g1", client_id="c", expires_at=NOW + 60))
    s.apply(RevocationRecord(kind="client", value="c2", client_id="c2", expires_at=NOW + 60, revoked_before_ms=NOW * 1000))
    assert revoked(s, jti="j1") and not revoked(s, jti="j2")
    assert revoked(s, grant="g1") and not revoked(s, grant="g2")
    assert revoked(s, client="c2", iat=NOW) and not revoked(s, client="c2", iat=NOW + 1)
    assert not revoked(s, client="c")


def test_entries_drop_once_what_they_revoke_has_expired():
    s = RevocationSet()
    s.apply(RevocationRecord(kind="jti", value="old", client_id="c", expires_at=NOW - 1))
    s.apply(RevocationRecord(kind="jti", value="new", client_id="c", expires_at=NOW + 60))
    assert s.prune(NOW) == 1
    assert len(s) == 1 and revoked(s, jti="new")


def test_events_round_trip():
    for r in (RevocationRecord(kind="jti", value="j", client_id="c", expires_at=NOW),
              RevocationRecord(kind="grant", value="g", client_id="c", expires_at=NOW),
              RevocationRecord(kind="client", value="c", client_id="c", expires_at=NOW, revoked_before_ms=(NOW - 5) * 1000)):
        back = revocation_from_event(revocation_event(r).token_revoked)
        assert (back.kind, back.value, back.client_id, back.expires_at, back.revoked_before_ms) == \
            (r.kind, r.value, r.client_id, r.expires_at, r.revoked_before_ms)


async def test_a_missed_event_is_caught_up_even_after_this_replica_revoked_something_newer():
    """Replica A misses B's event for X; A then revokes Y itself (a higher id). A's
    resync must still bring X: its own revocations must not move the watermark."""
    registry = FakeRevocations()
    a_set, b_set = RevocationSet(), RevocationSet()
    a = TokenChecker(issuer="i", keyring=None, revocations=a_set, clients=None, registry=registry)
    b = TokenChecker(issuer="i", keyring=None, revocations=b_set, clients=None, registry=registry)
    a_sync = RevocationSync(a_set, registry, None)
    await b._store(RevocationRecord(kind="jti", value="X", client_id="c", expires_at=NOW + 600))
    await a._store(RevocationRecord(kind="jti", value="Y", client_id="c", expires_at=NOW + 600))
    await a_sync.catch_up()
    assert revoked(a_set, jti="X") and revoked(a_set, jti="Y")
    assert a_sync.cursor.id == 2


def test_a_client_cut_off_is_kept_until_it_expires_not_until_its_cut_off_time():
    s = RevocationSet()
    s.apply(RevocationRecord(kind="client", value="c", client_id="c", revoked_before_ms=(NOW - 3600) * 1000,
                             expires_at=NOW + 3600))
    assert s.prune(NOW) == 0
    assert revoked(s, client="c", iat=NOW - 3601)

"""The in-memory revocation set every token_issuer replica keeps.

Filled from client_registry on start, kept current from NATS (`TokenRevoked`,
applied within milliseconds), and re-synced from the registry every few
seconds as a backstop for events missed during a NATS outage, through a
cursor that never skips a revocation still being committed
(services/client_registry/revocations.py). Entries drop once what they revoke
would have expired anyway.

Cut-offs (a client's or a subject's tokens issued up to an instant) compare
at millisecond precision: a token issued right after the cut-off is valid,
one issued before it (or in the same millisecond) is not.
"""
from __future__ import annotations

import asyncio
import logging
import time

from inbound.events.v1 import events_pb2
from inboundlib.events import TOKEN_REVOKED, EventBus
from services.client_registry.api import (
    REVOKE_CLIENT,
    REVOKE_GRANT,
    REVOKE_JTI,
    REVOKE_SUBJECT,
    RevocationCursor,
    RevocationRecord,
    RevocationStore,
)
from services.client_registry.wire import revocation_from_event

log = logging.getLogger(__name__)

PAGE = 10_000


class RevocationSet:
    def __init__(self) -> None:
        self._jti: dict[str, int] = {}
        self._grant: dict[str, int] = {}
        # client id / subject -> (revoked_before_ms, expires_at)
        self._client: dict[str, tuple[int, int]] = {}
        self._subject: dict[str, tuple[int, int]] = {}

    def apply(self, r: RevocationRecord) -> None:
        if r.kind == REVOKE_JTI:
            self._jti[r.value] = max(self._jti.get(r.value, 0), r.expires_at)
        elif r.kind == REVOKE_GRANT:
            self._grant[r.value] = max(self._grant.get(r.value, 0), r.expires_at)
        elif r.kind in (REVOKE_CLIENT, REVOKE_SUBJECT):
            table = self._client if r.kind == REVOKE_CLIENT else self._subject
            before, expires = table.get(r.value, (0, 0))
            table[r.value] = (max(before, r.revoked_before_ms), max(expires, r.expires_at))

    def is_revoked(self, *, jti: str, grant_id: str, client_id: str, issued_at_ms: int | None = None,
                   subject: str = "", issued_at: int = 0) -> bool:
        """`issued_at_ms`: when the token was issued, in Unix milliseconds (by the issuer's
        clock); a token known only to the second (`issued_at`) counts from its start."""
        if issued_at_ms is None:
            issued_at_ms = issued_at * 1000
        if jti and jti in self._jti:
            return True
        if grant_id and grant_id in self._grant:
            return True
        cut = self._client.get(client_id)
        if cut is not None and issued_at_ms <= cut[0]:
            return True
        cut = self._subject.get(subject) if subject else None
        return cut is not None and issued_at_ms <= cut[0]

    def client_cut_off_ms(self, client_id: str) -> int:
        """The client's cut-off (0: none): a deleted or disabled client has one."""
        return self._client.get(client_id, (0, 0))[0]

    def prune(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        dropped = 0
        for table in (self._jti, self._grant):
            for key in [k for k, expires in table.items() if expires < now]:
                del table[key]
                dropped += 1
        for table in (self._client, self._subject):
            for key in [k for k, (_, expires) in table.items() if expires < now]:
                del table[key]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._jti) + len(self._grant) + len(self._client) + len(self._subject)


class RevocationSync:
    """Keeps a RevocationSet current: NATS first, the registry as the source of truth."""

    def __init__(self, revocations: RevocationSet, registry: RevocationStore, events: EventBus | None, *,
                 resync_seconds: float = 5.0, page_size: int = PAGE):
        self.revocations = revocations
        self.registry = registry
        self.events = events
        self.resync_seconds = resync_seconds
        self.page_size = page_size
        self._task: asyncio.Task | None = None
        # How far every revocation has been read from the registry. Only catch_up moves
        # it, and only as far as the registry proves nothing can still appear before it:
        # entries applied from NATS or made here prove nothing about others in flight.
        self.cursor = RevocationCursor()

    async def start(self) -> None:
        # Subscribe before reading the registry so nothing falls between the two.
        if self.events is not None:
            await self.events.subscribe(TOKEN_REVOKED, self._on_event)
            self.events.on_reconnect(self._catch_up_now)  # what was published while disconnected
        await self.catch_up()
        self._task = asyncio.create_task(self._loop(), name="revocation-sync")

    async def _on_event(self, event: events_pb2.Event) -> None:
        if event.HasField("token_revoked"):
            self.revocations.apply(revocation_from_event(event.token_revoked))

    async def catch_up(self) -> int:
        """Apply every revocation visible after the cursor, page by page. The cursor moves
        only as far as the registry proves safe: once a page's safe cursor stops short of
        its last row (a transaction open anywhere holds the proof back), the rest is still
        read, from where each page ended, but the cursor stays there for the next catch-up."""
        applied = 0
        safe = position = self.cursor
        held = False
        while True:
            page = await self.registry.list_revocations(position, self.page_size)
            for record in page.records:
                self.revocations.apply(record)
            applied += len(page.records)
            if not held:
                safe = page.next
                held = page.next != page.read_on_from
            position = page.read_on_from
            if not page.more:
                self.cursor = safe
                return applied

    async def _catch_up_now(self) -> None:
        await self.catch_up()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            try:
                await self.catch_up()
                self.revocations.prune()
            except Exception as exc:
                log.warning("revocation resync failed", extra={"error": type(exc).__name__})

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

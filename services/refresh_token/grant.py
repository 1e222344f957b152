"""The refresh token grant: RFC 6749 §6, with rotation and reuse detection (RFC 9700 §4.14.2).

The grant runner has already authenticated the client (§6: a confidential client
authenticates; a public one names itself with client_id, `none`) and checked that
it is registered for refresh_token (-> unauthorized_client). This grant:
1. `refresh_token` is required (§6)                                  -> invalid_request
2. a requested scope is within the client's current scopes and within the
   family's scopes (§6: "MUST NOT include any scope not originally granted"),
   checked BEFORE the token is consumed, so a bad scope changes nothing -> invalid_scope
3. the registry rotates the token in one transaction: the presented one is consumed
   and its successor (`ibr_` + 256 random bits, made here) stored. Unknown, expired,
   revoked, another client's, a disabled user's or client's token: refused; a consumed
   token presented again outside the grace window revokes its whole family there
   (the registry publishes the reuse). Every refusal is the same        -> invalid_grant
   (the reason goes to the private detail: the log and the audit trail).
4. Rotated: an access token for the family (its grant id, subject, username), with
   the requested scope or else the family's, narrowed to the client's current scopes;
   the answer is sealed under a key only the presented token's holder can derive
   (inboundlib.oauth.rotation_response) and stored for retries; the successor is the
   new refresh token (the family keeps its original scope, §6).
5. Replay (the same client again within INBOUND_REFRESH_GRACE_SECONDS, e.g. a mobile
   app's retry; hydra#3604): the first answer, opened and sent again: the very same
   tokens. A retry's scope may not ask beyond that first answer's scope
   (-> invalid_scope); within it, the first answer is sent as it is (its `scope`
   tells the client what the tokens carry, §5.1). While the first request has not
   stored its answer yet, the registry is asked again a few times (bounded, about
   1.5 s), and only while the grace window lasts (asking after it would be a reuse
   revoking the family), then                                    -> temporarily_unavailable
   Once the token is consumed, the answer is finished and stored in a task of its own,
   even when the request runs out of time meanwhile (it then answers
   temporarily_unavailable, and the retry gets the stored answer).
   If the first request could not get its access token (token_issuer failed after the
   rotation), it stores the successor alone: a retry gets that successor with an access
   token of its own, rather than waiting out the window into a "reuse" that would
   revoke a family nobody stole.

The refresh token itself is never logged, put in an error or in an event.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from inboundlib import budget
from inboundlib.grants.api import GrantParameters, TokenRequest, TokenResponse
from inboundlib.logs import request_id_var
from inboundlib.oauth import rotation_response
from inboundlib.oauth.errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    ServerError,
    TemporarilyUnavailable,
)
from inboundlib.oauth.scopes import format_scope, parse_scope
from services.client_registry.api import (
    GRANT_REFRESH_TOKEN,
    ClientRecord,
    ItemError,
    OpaqueTokenRecord,
    RefreshTokenStore,
    Refused,
    Replay,
    Rotated,
    Rotation,
    TokenStore,
)
from services.token_issuer.api import IssueRequest, TokenIssuerApi
from services.token_issuer.jti import new_jti
from services.token_issuer.reference_tokens import REFRESH_PREFIX, new_refresh_token, token_hash

if TYPE_CHECKING:  # the grant's logic imports no gRPC code; grant_process does
    from services.grant_process import GrantDeps

log = logging.getLogger(__name__)

GRACE_SETTING = "INBOUND_REFRESH_GRACE_SECONDS"
DEFAULT_GRACE_SECONDS = 5
MAX_GRACE_SECONDS = 60
# Longer than any token we issue: refused without a lookup.
MAX_TOKEN_LENGTH = 256
# While the first rotation's answer is not stored yet: ask again after these pauses (1.5 s in all).
REPLAY_POLL_PAUSES = (0.1, 0.2, 0.4, 0.8)
# Asking again is presenting the consumed token again: after its grace window that is a reuse,
# and revokes the family. Only while the window (the registry's clock) still has this long to
# run after the pause: the call's round trip and the hosts' clock skew (NTP: milliseconds).
POLL_SAFETY_MARGIN = 0.5
# Once the token is consumed, its answer is finished (access token issued, answer stored)
# within this long, whatever the request's own time left: see _answer_detached.
ANSWER_SECONDS = 10.0
# The answers still being finished: the event loop holds tasks only weakly, and a request
# that stopped waiting no longer holds its own.
_DETACHED: set[asyncio.Task] = set()
# One public text for every refusal of the token: which check failed is nobody's business but the audit trail's.
REFUSED = "The refresh token is invalid, expired or revoked."


class RefreshStore(RefreshTokenStore, TokenStore):
    """What the grant needs of the registry: rotation, and a read of the token's scope."""


class RefreshTokenGrant:
    grant_type = GRANT_REFRESH_TOKEN
    # §6: grant_type, refresh_token, scope (client authentication is the runner's).
    parameters = GrantParameters(single=frozenset({"refresh_token", "scope"}))
    authenticates_client = False

    def __init__(self, registry: RefreshStore, issuer: TokenIssuerApi, *,
                 grace_seconds: int = DEFAULT_GRACE_SECONDS,
                 replay_poll_pauses: Sequence[float] = REPLAY_POLL_PAUSES,
                 clock: Callable[[], float] = time.time):
        self.registry = registry
        self.issuer = issuer
        self.grace_seconds = grace_seconds
        self.replay_poll_pauses = tuple(replay_poll_pauses)
        self.clock = clock

    async def handle(self, request: TokenRequest, client: ClientRecord) -> TokenResponse:
        presented = request.param("refresh_token")
        if not presented:
            raise InvalidRequest("The refresh_token parameter is missing.", detail="no refresh_token")
        requested = parse_scope(request.param("scope"))  # malformed: invalid_scope before anything changes
        if not presented.startswith(REFRESH_PREFIX) or len(presented) > MAX_TOKEN_LENGTH:
            raise InvalidGrant(REFUSED, detail="refresh token refused: not one of ours (shape)")
        presented_hash = token_hash(presented)
        if requested:
            await self._check_requested_scope(requested, presented_hash, client)

        successor = new_refresh_token()
        rotation = Rotation(token_hash=presented_hash, client_id=client.client_id,
                            new_token_hash=token_hash(successor), new_jti=new_jti(int(time.time() * 1000)),
                            grace_seconds=self.grace_seconds, request_id=request.request_id)
        outcome = await self._rotate(rotation)
        if isinstance(outcome, Rotated):
            return await self._answer_detached(request, client, presented, presented_hash, successor, requested,
                                               outcome.consumed, outcome.successor.issued_at_precise_ms)
        for pause in self.replay_poll_pauses:
            if not isinstance(outcome, Replay) or outcome.encrypted_response:
                break
            if (self.clock() + pause + POLL_SAFETY_MARGIN) * 1000 >= outcome.replay_until_ms:
                # The first request is slower than the window: asking once more would land after
                # it and revoke the family of a client that only retried within it.
                break
            # The first request of this retry rotated the token and has not stored its answer yet.
            await asyncio.sleep(pause)
            outcome = await self._rotate(rotation)
        if isinstance(outcome, Replay):
            if not outcome.encrypted_response:
                raise TemporarilyUnavailable(detail="refresh retry: the first rotation's answer is not stored yet")
            return await self._replayed(request, presented, presented_hash, requested, outcome, client)
        if isinstance(outcome, Rotated):  # cannot follow a Replay for one token; never answer without storing
            raise ServerError(detail="refresh token rotated while its retry was polling")
        if not isinstance(outcome, Refused):
            raise ServerError(detail=f"unexpected rotation outcome {type(outcome).__name__}")
        detail = f"refresh token refused: {outcome.reason}"
        if outcome.grant_id:
            detail += f" (grant {outcome.grant_id} revoked)"
        raise InvalidGrant(REFUSED, detail=detail)

    async def _check_requested_scope(self, requested: list[str], presented_hash: bytes,
                                     client: ClientRecord) -> None:
        """§6: within the scope originally granted (the family's), and within what the
        client may have today; refused before the token is consumed."""
        beyond_client = [s for s in requested if s not in set(client.scopes)]
        if beyond_client:
            raise InvalidScope(detail=f"{len(beyond_client)} requested scope(s) not allowed for the client")
        record = (await self.registry.get_opaque_tokens([presented_hash]))[0]
        if _family_record(record, client) and not set(requested) <= set(record.scopes):
            raise InvalidScope(detail="scope beyond the refresh token's")
        # No such refresh token of this client: the rotation refuses it, for its reason.

    async def _rotate(self, rotation: Rotation):
        outcome = (await self.registry.rotate_refresh_tokens([rotation]))[0]
        if isinstance(outcome, ItemError):
            raise ServerError(detail=f"refresh rotation failed: {outcome.code}")
        return outcome

    async def _answer_detached(self, request: TokenRequest, client: ClientRecord, presented: str,
                               presented_hash: bytes, successor: str, requested: list[str],
                               consumed: OpaqueTokenRecord, rotated_at_ms: int) -> TokenResponse:
        """The token is consumed now, and its successor exists nowhere else: the answer is
        finished and stored for a retry whatever becomes of this request. A request that runs
        out of time (its budget, or its call cancelled at its deadline) is just what a client
        retries within the grace window; tied to the request, the access token and the store
        would give up with it, the retry would find nothing stored, and, asking again after
        the window, be taken for a reuse that revokes the family. So the work runs in a task
        of its own, with a budget of its own; the request waits for it only as long as it may,
        then answers temporarily_unavailable (the retry gets the stored answer)."""
        async def answer() -> TokenResponse:
            request_id_var.set(request.request_id)
            with budget.within(ANSWER_SECONDS):
                return await self._answer_rotation(request, client, presented, presented_hash, successor,
                                                   requested, consumed, rotated_at_ms)

        task = asyncio.get_running_loop().create_task(answer(), context=budget.shared_context())
        _DETACHED.add(task)
        task.add_done_callback(_retrieve_outcome)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=max(0.0, budget.remaining(ANSWER_SECONDS)))
        except TimeoutError:
            raise TemporarilyUnavailable(detail="refresh answer not ready in the request's time: stored for a retry") \
                from None

    async def _answer_rotation(self, request: TokenRequest, client: ClientRecord, presented: str,
                               presented_hash: bytes, successor: str, requested: list[str],
                               consumed: OpaqueTokenRecord, rotated_at_ms: int) -> TokenResponse:
        family = set(consumed.scopes)
        current = set(client.scopes)
        if requested:
            if not set(requested) <= family or not set(requested) <= current:
                # Checked before rotating; the family's scope never changes, the client's may have since.
                raise InvalidScope(detail="scope beyond the refresh token's or the client's")
            scopes = list(requested)
        else:
            # The family's scope, less what the client may no longer have.
            scopes = [s for s in consumed.scopes if s in current]
        try:
            token = await self._issue_access_token(request, client, consumed, scopes, checked_at_ms=rotated_at_ms)
        except Exception:
            # Consumed, and its successor stored, but the client has neither: keep the successor for
            # its retries (sealed, without an access token), then answer the failure.
            await self._store(presented, presented_hash, TokenResponse(
                access_token="", token_type="Bearer", expires_in=0, scope=format_scope(scopes),
                refresh_token=successor), client, consumed)
            raise
        response = TokenResponse(access_token=token.access_token, token_type=token.token_type,
                                 expires_in=token.expires_in, scope=format_scope(scopes), refresh_token=successor)
        await self._store(presented, presented_hash, response, client, consumed)
        return response

    async def _issue_access_token(self, request: TokenRequest, client: ClientRecord, consumed: OpaqueTokenRecord,
                                  scopes: list[str], *, checked_at_ms: int = 0):
        """An access token of the consumed token's family (its grant id: revoking the family revokes it).
        `checked_at_ms`: when the registry checked the family (the rotation, its clock, stamped after
        the client's and user's rows were locked). The token is stamped with it: a password change,
        disable or delete that waited for the rotation records its cut-off after that moment, and
        must cover this access token too, issued a little later (as the password grant does)."""
        return await self.issuer.issue(IssueRequest(
            client_id=client.client_id, subject=consumed.subject, username=consumed.username,
            scopes=tuple(scopes), audience=tuple(consumed.audience), format=client.token_format,
            lifetime_seconds=client.access_token_lifetime, grant_id=consumed.grant_id, refresh_token_lifetime=0,
            request_id=request.request_id, grant_type=self.grant_type, authenticated_at_ms=checked_at_ms))

    async def _store(self, presented: str, presented_hash: bytes, response: TokenResponse, client: ClientRecord,
                     consumed: OpaqueTokenRecord) -> None:
        """Keep the answer, sealed, for retries in the grace window. Never fails the request:
        the rotation is done, and only a retry would miss the stored answer."""
        sealed = rotation_response.seal(presented, presented_hash, response)
        try:
            error = (await self.registry.store_rotation_responses([(presented_hash, sealed)]))[0]
        except Exception as exc:
            error = ItemError("internal", type(exc).__name__)
        if error is not None:
            log.warning("refresh rotation answer not stored: a retry within the grace window will not get it",
                        extra={"client_id": client.client_id, "grant_id": consumed.grant_id, "detail": str(error)})

    async def _replayed(self, request: TokenRequest, presented: str, presented_hash: bytes, requested: list[str],
                        replay: Replay, client: ClientRecord) -> TokenResponse:
        try:
            first = rotation_response.open_sealed(presented, presented_hash, replay.encrypted_response)
        except rotation_response.UnreadableResponse as exc:
            raise ServerError(detail=f"refresh retry: {exc}") from None
        first_scopes = parse_scope(first.scope)
        if not set(requested) <= set(first_scopes):
            raise InvalidScope(detail="refresh retry asked beyond the first answer's scope")
        if not first.access_token:
            # The first request got no access token (see _answer_rotation): the successor, and one now.
            scopes = requested or first_scopes
            token = await self._issue_access_token(request, client, replay.consumed, scopes)
            log.info("refresh retry answered with the first rotation's successor and a new access token",
                     extra={"client_id": client.client_id, "grant_id": replay.consumed.grant_id})
            return TokenResponse(access_token=token.access_token, token_type=token.token_type,
                                 expires_in=token.expires_in, scope=format_scope(scopes),
                                 refresh_token=first.refresh_token)
        log.info("refresh retry answered with the first rotation's tokens",
                 extra={"client_id": client.client_id, "grant_id": replay.consumed.grant_id})
        return first


def _retrieve_outcome(task: asyncio.Task) -> None:
    """A detached answer whose request stopped waiting: its failure was answered (or logged) already."""
    _DETACHED.discard(task)
    if not task.cancelled():
        task.exception()


def _family_record(record: OpaqueTokenRecord | None, client: ClientRecord) -> bool:
    return record is not None and record.kind == "refresh" and record.client_id == client.client_id


def build(deps: GrantDeps) -> RefreshTokenGrant:
    """The grant as its service runs it (services/grant_process.py)."""
    grace = deps.env.int(GRACE_SETTING, DEFAULT_GRACE_SECONDS, minimum=0, maximum=MAX_GRACE_SECONDS)
    return RefreshTokenGrant(deps.registry, deps.issuer, grace_seconds=grace)

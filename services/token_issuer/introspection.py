"""Token introspection (RFC 7662) and revocation (RFC 7009).

Named checks, in order, for introspection:
1. the caller is an authenticated confidential client (§2.1), when it is an HTTP caller
2. the token is ours: a JWT signed by one of our keys with our `iss`, or an
   opaque token whose hash is stored
3. not expired
4. the caller may see it: its own token, or the caller holds `inbound.introspect` (§4)
5. not revoked (jti, its grant, or every token of its client or of its subject
   issued up to a cut-off, compared to the millisecond)
6. its client still exists and is active
Any failed check from 2 on answers only {"active": false} (§2.2).
A JWT that is not ours and names another issuer is a third-party token: it goes to
third_party_token's ForeignTokens (a registered OpenID provider's token, as the mapped
user), and only then through checks 4 and 5 (the subject's cut-off); our own tokens'
path is untouched (it is taken only after our verification failed).
When the client record cannot be had (the registry unavailable and the record not
cached), check 6 rests on check 5: disabling or deleting a client records a cut-off
in the revocation set, which every replica holds in memory.

JWTs are checked without any I/O (keys, revocation set and client records are
in memory); opaque access tokens are looked up through client_registry and
cached — they never change once stored, so only the revocation set and the
client record can make one inactive, and both are checked on every call.
Refresh tokens change (rotation consumes them, a reuse or an RFC 7009
revocation revokes their family), so they are read fresh from the registry
every time (opaque_cache.py), and a consumed or revoked one is inactive.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import jwt

from inbound.events.v1 import events_pb2
from inboundlib import actors, grpcx, identity
from inboundlib.events import REVOKED_TOKEN_INTROSPECTED, TOKEN_REVOKED, EventBus, actor_to_pb
from inboundlib.grants.api import RequestContext
from inboundlib.logs import request_id_var
from inboundlib.oauth import token_exchange
from inboundlib.oauth.client_auth import ClientAssertionVerifier, ClientAuthenticator, ClientCredentials
from inboundlib.oauth.errors import KeysPending, ServerError, TemporarilyUnavailable, UnauthorizedClient
from services.client_registry.api import (
    GRANT_REVOCATION_LIFETIME,
    MAX_ACCESS_TOKEN_LIFETIME,
    REVOKE_GRANT,
    REVOKE_JTI,
    ItemError,
    RevocationRecord,
    RevocationStore,
    TokenStore,
    client_cut_off,
    subject_cut_off,
)
from services.client_registry.cache import ClientSource
from services.client_registry.wire import revocation_event
from services.token_issuer.api import TokenInfo
from services.token_issuer.jti import issued_at_ms
from services.token_issuer.keys import KeyRing
from services.token_issuer.opaque_cache import OpaqueTokenCache
from services.token_issuer.reference_tokens import REFRESH_PREFIX, token_hash
from services.token_issuer.revocations import RevocationSet

log = logging.getLogger(__name__)

# Registered on a client (a resource server), it may introspect every client's tokens.
INTROSPECT_SCOPE = "inbound.introspect"
ACCESS_TOKEN = "access_token"
REFRESH_TOKEN = "refresh_token"
# Our JWTs are under 1 KiB and opaque tokens under 50 bytes.
MAX_TOKEN_LENGTH = 4096
# An IdP's JWT may carry groups and roles: Entra ID's reach several kilobytes.
MAX_FOREIGN_TOKEN_LENGTH = 16_384
VERIFIED_CACHE_ENTRIES = 50_000


@dataclass(frozen=True)
class TokenFacts:
    """What a valid-looking token says about itself, before the expiry/revocation/client checks."""
    kind: str  # access_token | refresh_token
    jti: str
    client_id: str
    sub: str
    scopes: tuple[str, ...]
    aud: tuple[str, ...]
    iat: int
    exp: int
    grant_id: str = ""
    username: str = ""
    # When it was issued, to the millisecond (what revocation cut-offs compare with).
    iat_ms: int = 0
    # Refresh tokens: rotated already, or of a revoked family (the registry's state, read fresh).
    consumed: bool = False
    revoked: bool = False
    act_json: str = ""  # RFC 8693 §4.1 `act`, as the JWT carries it


class ForeignTokenSource(Protocol):
    """third_party_token's ForeignTokens: a registered provider's token, as the mapped user
    (inactive when no active provider vouches for it; KeysPending while its keys are fetched)."""
    async def introspect_foreign(self, token: str, *, request_id: str = "") -> TokenInfo: ...


class CheckerStore(TokenStore, RevocationStore, Protocol):
    """What the checker needs of the registry: opaque tokens by hash, and a place for revocations."""


INACTIVE = TokenInfo(active=False)


class TokenChecker:
    def __init__(self, *, issuer: str, keyring: callable, revocations: RevocationSet, clients: ClientSource,
                 registry: CheckerStore, events: EventBus | None = None,
                 verified_cache_entries: int = VERIFIED_CACHE_ENTRIES, opaque: OpaqueTokenCache | None = None,
                 foreign: ForeignTokenSource | None = None, assertions: ClientAssertionVerifier | None = None):
        self.issuer = issuer
        self._keyring = keyring  # returns the current KeyRing (it is replaced on reload)
        self.revocations = revocations
        self.clients = clients
        self.registry = registry
        self.opaque = opaque or OpaqueTokenCache(registry)
        self._unavailable_logged_at = 0.0
        # With jwt_bearer's verifier, callers may authenticate by client assertion (RFC 7523 §2.2).
        self.authenticator = ClientAuthenticator(clients, verifier=assertions)
        self.events = events
        self.foreign = foreign
        self._verified: dict[bytes, TokenFacts] = {}
        self._verified_limit = verified_cache_entries
        self._verified_for: KeyRing | None = None

    # --- check 1: the caller ----------------------------------------------------------------------

    async def authenticate_caller(self, creds: ClientCredentials | None, endpoint_url: str = ""):
        # The shared authenticator: a malformed client id is never looked up.
        return await self.authenticator.authenticate(creds, RequestContext(endpoint_url=endpoint_url))

    async def resource_server_of(self, token: str) -> tuple[identity.Caller, actors.Actor] | None:
        """Who a bearer token on the introspection port stands for (RFC 6750 §2.1): the
        client, as a resource server, when the token is an active access token it holds
        for itself (client credentials, RFC 6749 §4.4: no user) and carries
        `inbound.introspect`. Verified here like any token, revocation included."""
        # Not reported as an introspection of a revoked token: this caller is anonymous,
        # and each of its calls would add a row to the append-only audit log.
        info = await self.introspect(token, None, internal=True, report_revoked=False)
        if (not info.active or info.token_type != "Bearer" or info.sub != info.client_id or info.username
                or info.provider or INTROSPECT_SCOPE not in info.scope.split()):
            return None
        try:
            return identity.resource_server(info.client_id), actors.actor(actors.CLIENT, info.client_id)
        except ValueError:  # a client id that is no identity name (ours are hex)
            return None

    # --- check 2: is it ours? ---------------------------------------------------------------------

    async def identify(self, token: str) -> TokenFacts | None:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        if token.count(".") == 2:
            return self._identify_jwt(token)
        record = await self.opaque.get(token_hash(token),
                                       refresh=token.startswith(REFRESH_PREFIX))
        if record is None:
            return None
        exp = record.expires_at
        if record.family_expires_at:
            exp = min(exp, record.family_expires_at)
        return TokenFacts(kind=REFRESH_TOKEN if record.kind == "refresh" else ACCESS_TOKEN, jti=record.jti,
                          client_id=record.client_id, sub=record.subject, scopes=record.scopes,
                          aud=record.audience, iat=record.issued_at, exp=exp,
                          grant_id=record.grant_id, username=record.username,
                          iat_ms=record.issued_at_precise_ms, consumed=record.consumed, revoked=record.revoked)

    def _identify_jwt(self, token: str) -> TokenFacts | None:
        """Verified once per token and key set: resource servers introspect the same
        token again and again, and verification is most of the cost. Only tokens
        that verified are kept (a flood of junk cannot fill the cache), by their
        SHA-256; expiry, revocation and the client are checked on every call."""
        keyring: KeyRing = self._keyring()
        if keyring is not self._verified_for:
            self._verified.clear()
            self._verified_for = keyring
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        facts = self._verified.get(digest)
        if facts is not None:
            return facts
        facts = self._verify_jwt(token, keyring)
        if facts is not None and self._verified_limit:
            if len(self._verified) >= self._verified_limit:
                self._verified.clear()
            self._verified[digest] = facts
        return facts

    def _verify_jwt(self, token: str, keyring: KeyRing) -> TokenFacts | None:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != "at+jwt":  # RFC 9068 §4: reject other JWTs (ID tokens, say)
                return None
            key = keyring.by_kid(header.get("kid", ""))
            if key is None:
                return None
            claims = jwt.decode(token, key.public_key, algorithms=[key.alg], issuer=self.issuer,
                                # exp is checked on every call, not here; iat is not checked at all:
                                # another replica's clock may run a little ahead of ours.
                                options={"verify_aud": False, "verify_exp": False, "verify_iat": False,
                                         "require": ["iss", "sub", "client_id", "jti", "iat", "exp"]})
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        aud, act = claims.get("aud", ()), claims.get("act")
        try:
            iat, jti = int(claims["iat"]), str(claims["jti"])
            return TokenFacts(kind=ACCESS_TOKEN, jti=jti, client_id=str(claims["client_id"]),
                              sub=str(claims["sub"]), scopes=tuple(str(claims.get("scope", "")).split()),
                              aud=(aud,) if isinstance(aud, str) else tuple(aud), iat=iat,
                              exp=int(claims["exp"]), grant_id=str(claims.get("grant_id", "")),
                              username=str(claims.get("username", "")), iat_ms=issued_at_ms(jti, iat),
                              act_json=token_exchange.act_json(act) if isinstance(act, dict) else "")
        except (TypeError, ValueError):
            return None

    # --- checks 3-5 -------------------------------------------------------------------------------

    def _revoked(self, facts: TokenFacts) -> bool:
        return self.revocations.is_revoked(jti=facts.jti, grant_id=facts.grant_id, client_id=facts.client_id,
                                           issued_at_ms=facts.iat_ms or facts.iat * 1000, subject=facts.sub)

    async def introspect(self, token: str, caller: ClientCredentials | None, *, internal: bool,
                         report_revoked: bool = True, endpoint_url: str = "") -> TokenInfo:
        client = None
        if not internal:
            client = await self.authenticate_caller(caller, endpoint_url)
            if client.public:
                raise UnauthorizedClient(detail="public clients may not introspect")
        facts = await self.identify(token)
        if facts is None and self.foreign is not None and self._foreign_jwt(token):
            return await self._introspect_foreign(token, client)
        if facts is None or facts.exp <= time.time():
            return INACTIVE
        if client is not None and facts.client_id != client.client_id and INTROSPECT_SCOPE not in client.scopes:
            # RFC 7662 §4: a client sees its own tokens; a resource server needs the
            # introspection scope to see others'. To anyone else a token is just inactive.
            return INACTIVE
        if facts.consumed:
            # RFC 9700 §4.14.2: a rotated refresh token can no longer be used.
            return INACTIVE
        if facts.revoked or self._revoked(facts):
            if self.events is not None and report_revoked:
                await self.events.durable(self.events.publish(REVOKED_TOKEN_INTROSPECTED, events_pb2.Event(
                    actor=actor_to_pb(actors.actor(actors.CLIENT, caller.client_id)) if caller else None,
                    revoked_token_introspected=events_pb2.RevokedTokenIntrospected(
                        caller=caller.client_id if caller else "internal", client_id=facts.client_id,
                        jti=facts.jti)), low_priority=True, awaited=True))
            return INACTIVE
        try:
            owner = await self.clients.get_client(facts.client_id)
        except Exception as exc:
            if not grpcx.is_unavailable(exc) or not self._revocations_current():
                raise
            # The registry is down and the owner's record is not cached (not even stale).
            # Decide on what this replica holds: the token verified (signature, or our own
            # stored record), is unexpired, and is not revoked; disabling (or deleting) a
            # client records a cut-off in the revocation set, so its tokens stay inactive.
            # Only while the set is current: with NATS away, a cut-off made meanwhile may
            # be missing from it, and then "unavailable" is the honest answer.
            if time.monotonic() - self._unavailable_logged_at > 10:  # once in a while, not per request
                self._unavailable_logged_at = time.monotonic()
                log.warning("client records unavailable: introspection decides without them",
                            extra={"error": type(exc).__name__})
        else:
            if owner is None or not owner.active:
                return INACTIVE
        return TokenInfo(active=True, scope=" ".join(facts.scopes), client_id=facts.client_id, sub=facts.sub,
                         username=facts.username,
                         token_type="Bearer" if facts.kind == ACCESS_TOKEN else REFRESH_TOKEN,
                         exp=facts.exp, iat=facts.iat, iss=self.issuer, aud=facts.aud, jti=facts.jti,
                         act_json=facts.act_json)

    # --- third-party tokens -----------------------------------------------------------------------

    def _foreign_jwt(self, token: str) -> bool:
        """A JWT (unverified: for routing only) naming an issuer other than us."""
        if not token or len(token) > MAX_FOREIGN_TOKEN_LENGTH or token.count(".") != 2:
            return False
        try:
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except (jwt.PyJWTError, ValueError, TypeError, AttributeError):
            return False
        return isinstance(iss, str) and bool(iss) and iss != self.issuer

    async def _introspect_foreign(self, token: str, client) -> TokenInfo:
        """ForeignTokens' answer (it verified the token and mapped its user), then check 4
        (the client_id of a foreign token is the IdP's client: a caller sees it only with
        the introspection scope, or when that is its own id) and check 5 for the mapped
        user (a password change, disabling or deleting the user records a cut-off)."""
        try:
            info = await self.foreign.introspect_foreign(token, request_id=request_id_var.get())
        except KeysPending:
            # gRPC callers cannot wait for the provider's keys: they retry (RFC 7662 has no such answer).
            raise TemporarilyUnavailable(detail="the provider's keys are being fetched") from None
        if not info.active or info.exp <= time.time():
            return INACTIVE
        if client is not None and info.client_id != client.client_id and INTROSPECT_SCOPE not in client.scopes:
            return INACTIVE
        if self.revocations.is_revoked(jti="", grant_id="", client_id="", issued_at=info.iat, subject=info.sub):
            return INACTIVE
        return info

    def _revocations_current(self) -> bool:
        """Whether this replica's revocation set can stand in for the client record:
        revocations reach it over NATS, so only while it is connected."""
        return self.events is None or self.events.connected.is_set()

    # --- revocation -------------------------------------------------------------------------------

    async def revoke(self, token: str, caller: ClientCredentials | None, *, endpoint_url: str = "") -> None:
        """RFC 7009 §2.1: only the client the token was issued to may revoke it;
        an unknown or expired token is not an error (§2.2)."""
        client = await self.authenticate_caller(caller, endpoint_url)
        facts = await self.identify(token)
        if facts is None or facts.exp <= time.time():
            return
        if facts.client_id != client.client_id:
            raise UnauthorizedClient("The token was not issued to this client.",
                                     detail="revocation of another client's token")
        who = actors.actor(actors.CLIENT, client.client_id)
        if facts.kind == REFRESH_TOKEN:
            # Revoking a refresh token revokes its grant: every access token issued from it too.
            # The registry marks the family's refresh rows revoked for good in the same write, so
            # the revocation (held in every replica's memory) need only outlive the access tokens,
            # not the refresh token's months. A token without a grant id (stored before grant ids)
            # has no family to mark: its revocation lasts as long as it does.
            expires_at = int(time.time()) + GRANT_REVOCATION_LIFETIME if facts.grant_id \
                else facts.exp + MAX_ACCESS_TOKEN_LIFETIME
            record = RevocationRecord(kind=REVOKE_GRANT, value=facts.grant_id or facts.jti,
                                      client_id=facts.client_id, expires_at=expires_at, revoked_by=str(who))
        else:
            record = RevocationRecord(kind=REVOKE_JTI, value=facts.jti, client_id=facts.client_id,
                                      expires_at=facts.exp, revoked_by=str(who))
        await self._store(record, who)

    async def revoke_client_tokens(self, client_id: str, revoked_by: str = "") -> int:
        """Every token of the client issued until now (this process's clock, in ms: the
        clock family that stamps tokens; see api.client_cut_off). Returns the cut-off in Unix ms."""
        now_ms = int(time.time() * 1000)
        await self._store(client_cut_off(client_id, now_ms, revoked_by or _current_actor()))
        return now_ms

    async def revoke_subject_tokens(self, subject: str, revoked_by: str = "") -> int:
        """Every token of one subject (a user), for every client, issued until now;
        honoured for JWT and opaque tokens alike. Returns the cut-off in Unix ms."""
        now_ms = int(time.time() * 1000)
        await self._store(subject_cut_off(subject, now_ms, revoked_by or _current_actor()))
        return now_ms

    async def _store(self, record: RevocationRecord, who: actors.Actor | None = None) -> None:
        """Durable first (the registry), then this replica, then every other one (NATS)."""
        [outcome] = await self.registry.add_revocations([record])
        if isinstance(outcome, ItemError):
            raise ServerError(detail=f"revocation not stored: {outcome}")
        stored = RevocationRecord(**{**record.__dict__, "id": outcome})
        self.revocations.apply(stored)
        if self.events is not None:
            event = revocation_event(stored)
            if who is not None:
                event.actor.CopyFrom(actor_to_pb(who))
            # Answered once the revocation's event is durable (it is also what tells the other replicas).
            await self.events.durable(self.events.publish(TOKEN_REVOKED, event, awaited=True))
        log.info("token revoked", extra={"kind": record.kind, "client_id": record.client_id})


def _current_actor() -> str:
    """Who is revoking, for the record: the actor of the call (an operator through
    inboundctl), else this service."""
    who = actors.current()
    return str(who) if who is not None else "service:token_issuer"

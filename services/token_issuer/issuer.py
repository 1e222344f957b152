"""Access token issuance: RFC 9068 JWTs and opaque reference tokens; OpenID Connect ID tokens.

JWT access tokens carry iss, sub, aud, client_id, scope, jti, iat, exp (RFC
9068 §2.2) and the header typ "at+jwt" (§2.1), signed with the key that is
active now. Opaque tokens are 256-bit random strings; only their SHA-256 is
stored (through client_registry), so a database leak yields no usable token.

The issue time is read once, in milliseconds, from this process's clock: `iat`
is its whole seconds, the jti (a UUIDv7, jti.py) and an opaque token's stored
issue time carry the milliseconds that revocation cut-offs are compared with.

ID tokens (OpenID Connect Core §2, §3.1.3.6, §3.2.2.10) are issued beside an access
token when IssueRequest.id_token is set: signed with the ID-token algorithm's active
key (INBOUND_ID_TOKEN_ALG, RS256 by default), typ "JWT", audience the client, with the
access token's issue time.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import time
from typing import Protocol

import jwt
from cryptography.exceptions import InvalidTag
from prometheus_client import Gauge

from inbound.events.v1 import events_pb2
from inboundlib import actors, workers
from inboundlib.config import ConfigError
from inboundlib.events import KEYS_ROTATED, SIGNING_KEY_CHANGED, TOKEN_ISSUED, EventBus, actor_to_pb
from inboundlib.oauth import oidc, token_exchange
from inboundlib.oauth.errors import InvalidRequest, ServerError, TemporarilyUnavailable
from services.client_registry.api import (
    MAX_ACCESS_TOKEN_LIFETIME,
    MAX_LIFETIME,
    OpaqueTokenRecord,
    SigningKeyStore,
    TokenStore,
)
from services.token_issuer.api import (
    FORMAT_JWT,
    FORMAT_OPAQUE,
    MAX_ID_TOKEN_CLAIMS_BYTES,
    IdTokenRequest,
    IssuedToken,
    IssueRequest,
    KeyInfo,
    RewrapReport,
)
from services.token_issuer.jti import new_jti
from services.token_issuer.keys import (
    ALGORITHMS,
    KeyEncryptor,
    KeyRing,
    UnreadableKey,
    new_key_record,
    open_key_record,
)
from services.token_issuer.reference_tokens import new_opaque_token, new_refresh_token, token_hash

log = logging.getLogger(__name__)

UNREADABLE_KEYS = Gauge("inbound_signing_keys_unreadable",
                        "Stored signing keys this replica skips: they do not decrypt or do not parse")

# A key whose ciphertext changes under a rewrap again and again has two rewraps with
# different first key-encryption keys racing: give up and say so rather than loop.
REWRAP_ATTEMPTS = 5
# How old IssueRequest.authenticated_at_ms may be when its tokens are issued. A password
# sign-in's check is milliseconds old (its Issue call times out within seconds); tokens from
# an authorization code are stamped with the code's creation, and a code lives up to 600 s
# (INBOUND_AUTHORIZATION_CODE_LIFETIME's bound): 600 s and a minute's margin. Older is a bug.
MAX_AUTHENTICATION_AGE_MS = 660_000
# An `act` chain (RFC 8693 §4.1) of a few nested actors is a few hundred bytes.
MAX_ACT_BYTES = 2048
DEFAULT_ID_TOKEN_LIFETIME = 3600
# Claims the issuer states in an ID token (Core §2, §3.1.3.6; RFC 7519 §4.1) and that the
# released user claims may therefore never set, whether or not this token carries them:
# a user claim named `nonce` or `sid` must not appear to be one.
ID_TOKEN_REGISTERED_CLAIMS = frozenset({
    "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "auth_time", "nonce", "acr", "amr", "azp",
    "at_hash", "c_hash", "s_hash", "sid", "sub_jwk", "cnf", "client_id", "scope"})


class IssuerStore(SigningKeyStore, TokenStore, Protocol):
    """What the issuer needs of the registry: its signing keys, and a place for opaque tokens."""


class TokenIssuer:
    def __init__(self, registry: IssuerStore, encryptor: KeyEncryptor, *, issuer: str,
                 default_audience: str, alg: str = "ES256", id_token_alg: str = "RS256",
                 id_token_lifetime: int = DEFAULT_ID_TOKEN_LIFETIME, activation_delay: int = 0,
                 events: EventBus | None = None):
        for name in (alg, id_token_alg):
            if name not in ALGORITHMS:
                raise ValueError(f"unsupported signing algorithm {name!r}")
        if not 0 < id_token_lifetime <= MAX_ACCESS_TOKEN_LIFETIME:
            raise ValueError(f"ID token lifetime {id_token_lifetime} out of range")
        self.registry = registry
        self.encryptor = encryptor
        self.issuer = issuer
        self.default_audience = default_audience
        self.alg = alg  # access tokens
        self.id_token_alg = id_token_alg
        self.id_token_lifetime = id_token_lifetime
        # The algorithms this issuer signs with: each has its own active key.
        self.algorithms = tuple(dict.fromkeys((alg, id_token_alg)))
        self.activation_delay = activation_delay
        self.events = events
        self.keyring = KeyRing()
        self.unreadable: dict[str, str] = {}  # kid -> why this replica cannot use that stored key
        self.stored_algorithms: set[str] = set()  # of every stored key, readable or not
        self.earliest_activation: int | None = None  # of every stored key, readable or not
        self._reload_lock = asyncio.Lock()

    # --- keys -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the shared keys; the first replica to start with an algorithm creates that
        algorithm's first key (the registry serialises concurrent starts: one key per
        algorithm, not one per replica). Refuses to start (ConfigError) when an algorithm it
        signs with has no active key that can be read, stored keys of it being unreadable:
        then the key-encryption keys are wrong, not one stored key. Nothing is created
        while no stored key opens at all (a key stored under a wrong key-encryption key
        would only add to the mess)."""
        await self.reload_keys()
        if self.unreadable and not self.keyring.keys:
            self._refuse_unreadable()
        missing = [alg for alg in self.algorithms if alg not in self.stored_algorithms]
        # An upgrade (keys of other algorithms stored already): replicas of the version before
        # one key per algorithm may still run, and they sign with the newest active key of ANY
        # algorithm and retire every older one from their JWKS. A new algorithm's first key
        # active from now would become their access-token key (ES256 tokens turning RS256 under
        # resource servers that expect ES256). Dated just before the earliest stored key it is
        # never their newest; this version picks per algorithm and signs with it at once.
        activates_at = max(0, self.earliest_activation - 1) if self.earliest_activation is not None else None
        for alg in missing:
            # RSA key generation takes tens of milliseconds: off the event loop.
            record = await workers.CPU.submit(new_key_record, alg, self.encryptor, activates_at)
            await self.registry.add_signing_key(record, only_if_none=True)
        if missing:
            await self.reload_keys()
            still = [alg for alg in missing if alg not in self.stored_algorithms]
            if still:
                # A registry replica from before one key per algorithm answers "a key exists
                # already" for any algorithm (a rolling upgrade): not ready, try again (never
                # serve on without the ID tokens' key, failing every openid exchange).
                raise RuntimeError(f"the registry stored no {', '.join(still)} signing key: not ready yet")
        if self.unreadable and any(self.keyring.signing_key(alg) is None for alg in self.algorithms):
            self._refuse_unreadable()
        if self.events is not None:
            # A key added by any replica (or by hand) is a registry change; KeysRotated
            # (published by the replica that rotated) says the same sooner or later.
            await self.events.subscribe(SIGNING_KEY_CHANGED, self._on_keys_rotated)
            await self.events.subscribe(KEYS_ROTATED, self._on_keys_rotated)
            self.events.on_reconnect(self.reload_keys)

    def _refuse_unreadable(self) -> None:
        raise ConfigError(
            f"no active signing key can be read: {len(self.unreadable)} stored key(s) do not open with the "
            "key-encryption keys (INBOUND_KEY_ENCRYPTION_KEYS, INBOUND_KEY_ENCRYPTION_KEYS_FILE or "
            "INBOUND_KEY_ENCRYPTION_KEY); every token_issuer replica needs the key that encrypted them")

    async def _on_keys_rotated(self, event: events_pb2.Event) -> None:
        await self.reload_keys()

    async def reload_keys(self) -> None:
        async with self._reload_lock:
            records = await self.registry.list_signing_keys()
            known = {k.kid: k for k in self.keyring.keys}
            if {r.kid for r in records} == known.keys() | self.unreadable.keys():
                return  # nothing changed: keep the ring (and what was verified with it)
            keys, unreadable = [], {}
            for record in records:
                if record.kid in known:
                    keys.append(known[record.kid])
                    continue
                try:
                    keys.append(open_key_record(record, self.encryptor))
                except UnreadableKey as exc:
                    # One bad record (stored by mistake, or under a key-encryption key this
                    # replica lacks) must not stop token issuance: skip it, say so once, count it.
                    unreadable[record.kid] = str(exc)
                    if record.kid not in self.unreadable:
                        log.error("stored signing key skipped", extra={"kid": record.kid, "reason": str(exc)})
            self.unreadable = unreadable
            self.stored_algorithms = {r.alg for r in records}
            self.earliest_activation = min((r.activates_at for r in records), default=None)
            UNREADABLE_KEYS.set(len(unreadable))
            self.keyring = KeyRing(keys)

    async def rotate_key(self, alg: str = "", activation_delay: int | None = None) -> KeyInfo:
        """A new key for `alg` (default: the access tokens' algorithm); the other
        algorithms' keys keep signing."""
        alg = alg or self.alg
        if alg not in ALGORITHMS:
            raise InvalidRequest(f"Unsupported algorithm; use one of {', '.join(ALGORITHMS)}.")
        if activation_delay is not None and activation_delay < 0:
            raise InvalidRequest("The activation delay cannot be negative.")
        delay = self.activation_delay if activation_delay is None else activation_delay
        record = await workers.CPU.submit(new_key_record, alg, self.encryptor, int(time.time()) + delay)
        await self.registry.add_signing_key(record, only_if_none=False)
        await self.reload_keys()
        if self.events is not None:
            self.events.publish(KEYS_ROTATED, events_pb2.Event(keys_rotated=events_pb2.KeysRotated(
                kid=record.kid, alg=alg, activates_at=record.activates_at)))
        log.info("signing key rotated", extra={"kid": record.kid, "alg": alg, "activates_at": record.activates_at})
        return next(k for k in await self.list_keys() if k.kid == record.kid)

    async def rewrap_keys(self) -> RewrapReport:
        """Re-encrypt every stored signing key under the first key-encryption key, so the
        older ones can be dropped. Each key is replaced by compare-and-swap on its stored
        ciphertext: a concurrent rewrap or rotation is never overwritten; a key changed
        meanwhile is read again (usually it is current by then)."""
        rewrapped, current, unreadable = [], [], []
        for record in await self.registry.list_signing_keys():
            for _attempt in range(REWRAP_ATTEMPTS):
                try:
                    plaintext, index = self.encryptor.decrypt_with_index(record.kid, record.encrypted_private_key)
                except InvalidTag:
                    unreadable.append(record.kid)
                    break
                if index == 0:
                    current.append(record.kid)
                    break
                if await self.registry.rewrap_signing_key(record.kid, record.encrypted_private_key,
                                                          self.encryptor.encrypt(record.kid, plaintext)):
                    rewrapped.append(record.kid)
                    break
                record = next(r for r in await self.registry.list_signing_keys() if r.kid == record.kid)
            else:
                raise TemporarilyUnavailable(detail=f"signing key {record.kid} kept changing during the rewrap")
        log.info("signing keys rewrapped", extra={"rewrapped": len(rewrapped), "current": len(current),
                                                  "unreadable": len(unreadable)})
        return RewrapReport(rewrapped=tuple(rewrapped), current=tuple(current), unreadable=tuple(unreadable))

    async def list_keys(self) -> list[KeyInfo]:
        """Every key; `signing` marks the one that signs now for its algorithm (one per algorithm)."""
        signing = {k.kid for k in self.keyring.signing_keys().values()}
        return [KeyInfo(kid=k.kid, alg=k.alg, created_at=k.created_at, activates_at=k.activates_at,
                        signing=k.kid in signing) for k in self.keyring.keys]

    async def jwks(self) -> dict:
        return self.keyring.jwks(MAX_ACCESS_TOKEN_LIFETIME)

    # --- tokens ---------------------------------------------------------------------------------

    async def issue(self, request: IssueRequest) -> IssuedToken:
        if not request.client_id or not request.subject:
            raise InvalidRequest(detail="issue request without client or subject")
        if not 0 < request.lifetime_seconds <= MAX_ACCESS_TOKEN_LIFETIME:
            raise InvalidRequest(detail=f"lifetime {request.lifetime_seconds} out of range")
        if not 0 <= request.refresh_token_lifetime <= MAX_LIFETIME:
            raise InvalidRequest(detail=f"refresh lifetime {request.refresh_token_lifetime} out of range")
        if not 0 <= request.refresh_token_absolute_lifetime <= MAX_LIFETIME:
            raise InvalidRequest(detail=f"refresh absolute lifetime {request.refresh_token_absolute_lifetime} "
                                        "out of range")
        id_token_lifetime = self._check_id_token_request(request.id_token) if request.id_token else 0
        act = _act(request)
        now_ms = int(time.time() * 1000)
        # An ID token is a statement made now (OpenID Connect Core §2 `iat`): relying parties
        # bound how old its iat may be, and nothing revokes an ID token by cut-off, so it is not
        # backdated with the access token.
        id_token_now = now_ms // 1000
        if request.authenticated_at_ms > 0:
            # Stamped as of the credentials' check, not now: a subject cut-off recorded after
            # the check (a password change, disable or delete racing the sign-in) must cover
            # these tokens, issued a few ms after it (see UserRecord.verified_at_ms).
            if now_ms - request.authenticated_at_ms > MAX_AUTHENTICATION_AGE_MS:
                raise ServerError(detail=f"credentials checked {now_ms - request.authenticated_at_ms} ms ago: "
                                         "too long to stamp tokens with")
            now_ms = min(now_ms, request.authenticated_at_ms)
        now = now_ms // 1000
        if request.id_token and self.keyring.signing_key(self.id_token_alg) is None:
            # Before anything is issued or stored: no half-answered request.
            raise TemporarilyUnavailable(detail=f"no {self.id_token_alg} signing key is active for ID tokens")
        jti = new_jti(now_ms)
        audience = list(request.audience) or [self.default_audience]
        grant_id = request.grant_id or (secrets.token_urlsafe(16) if request.refresh_token_lifetime else "")
        if request.format == FORMAT_OPAQUE:
            access_token = await self._issue_opaque(request, jti, now_ms, audience, grant_id)
        elif request.format == FORMAT_JWT:
            key = self.keyring.signing_key(self.alg)
            sign = functools.partial(self._issue_jwt, request, jti, now, audience, grant_id, act)
            # RSA (~1 ms) signs in the worker pool, off the event loop; ES256/EdDSA cost less than the hand-over.
            access_token = await workers.CPU.submit(sign) if key and workers.signs_slowly(key.alg) else sign()
        else:
            raise ServerError(detail=f"unknown token format {request.format!r}")
        id_token = ""
        if request.id_token:
            sign_id = functools.partial(self._issue_id_token, request, request.id_token, access_token, id_token_now,
                                        id_token_lifetime)
            id_token = await workers.CPU.submit(sign_id) if workers.signs_slowly(self.id_token_alg) else sign_id()
        refresh_token = ""
        if request.refresh_token_lifetime:
            # The first token of a family: the family ends at the client's absolute limit whatever
            # its rotations (the registry gives each successor min(sliding expiry, family end)).
            family_ends = now + request.refresh_token_absolute_lifetime if request.refresh_token_absolute_lifetime else 0
            expires_at = now + request.refresh_token_lifetime
            refresh_token = new_refresh_token()
            await self._store(refresh_token, OpaqueTokenRecord(
                token_hash=b"", jti=new_jti(now_ms), client_id=request.client_id, subject=request.subject,
                username=request.username, scopes=request.scopes, audience=tuple(audience), issued_at=now,
                issued_at_ms=now_ms, expires_at=min(expires_at, family_ends) if family_ends else expires_at,
                kind="refresh", grant_id=grant_id, family_expires_at=family_ends))
        if self.events is not None:
            # The client asked for it (a user, once user grants arrive, is the subject).
            event_id = self.events.publish(TOKEN_ISSUED, events_pb2.Event(
                actor=actor_to_pb(actors.actor(actors.CLIENT, request.client_id)),
                token_issued=events_pb2.TokenIssued(
                client_id=request.client_id, grant_type=request.grant_type, subject=request.subject, jti=jti,
                scope=" ".join(request.scopes), token_format=request.format,
                expires_at=now + request.lifetime_seconds, refresh_token_issued=bool(refresh_token),
                id_token_issued=bool(id_token), provider=request.provider,
                act_sub=str(act["sub"]) if act else "")),
                awaited=True)
            # Answered only once its audit event is durable (INBOUND_EVENTS_DELIVERY); the items of
            # a batch wait together, for one publish round (or one spool fsync).
            await self.events.durable(event_id)
        return IssuedToken(access_token=access_token, expires_in=request.lifetime_seconds, jti=jti, issued_at=now,
                           refresh_token=refresh_token, grant_id=grant_id, id_token=id_token)

    def _check_id_token_request(self, wanted: IdTokenRequest) -> int:
        """The ID token's lifetime; refuses (before any I/O) what no ID token may carry."""
        lifetime = wanted.lifetime_seconds or self.id_token_lifetime
        if not 0 < lifetime <= MAX_ACCESS_TOKEN_LIFETIME:
            raise InvalidRequest(detail=f"ID token lifetime {lifetime} out of range")
        if not isinstance(wanted.claims, dict):
            raise ServerError(detail="ID token claims are not a mapping")
        try:
            size = len(json.dumps(wanted.claims, separators=(",", ":")).encode())
        except (TypeError, ValueError):
            raise ServerError(detail="ID token claims are not JSON values") from None
        if size > MAX_ID_TOKEN_CLAIMS_BYTES:
            raise ServerError(detail=f"ID token claims of {size} bytes (at most {MAX_ID_TOKEN_CLAIMS_BYTES})")
        return lifetime

    def _issue_id_token(self, request: IssueRequest, wanted: IdTokenRequest, access_token: str, now: int,
                        lifetime: int) -> str:
        """OpenID Connect Core §2 (claims), §3.1.3.6 (at_hash), §3.3.2.11 (c_hash). The released
        user claims come first and every claim the issuer states overwrites them; a user claim
        with a registered claim's name is dropped even where this token leaves that claim out."""
        key = self.keyring.signing_key(self.id_token_alg)  # active now, as the access token's
        if key is None:
            raise TemporarilyUnavailable(detail=f"no {self.id_token_alg} signing key is active for ID tokens")
        dropped = sorted(name for name in wanted.claims if name in ID_TOKEN_REGISTERED_CLAIMS)
        if dropped:
            log.warning("released claims named as registered ID token claims dropped",
                        extra={"claims": dropped, "client_id": request.client_id})
        claims = {name: value for name, value in wanted.claims.items() if name not in ID_TOKEN_REGISTERED_CLAIMS}
        claims.update(iss=self.issuer, sub=request.subject, aud=[request.client_id], azp=request.client_id,
                      iat=now, exp=now + lifetime)
        if wanted.auth_time > 0:
            claims["auth_time"] = wanted.auth_time
        if wanted.nonce:
            claims["nonce"] = wanted.nonce
        if wanted.sid:
            claims["sid"] = wanted.sid
        if wanted.at_hash:
            claims["at_hash"] = oidc.half_hash(access_token, key.alg)
        if wanted.code:
            claims["c_hash"] = oidc.half_hash(wanted.code, key.alg)
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"})

    def _issue_jwt(self, request: IssueRequest, jti: str, now: int, audience: list[str], grant_id: str,
                   act: dict | None = None) -> str:
        # The key active now, not at `now` (which may be a sign-in's or a code's time, up to
        # MAX_AUTHENTICATION_AGE_MS ago, before the first key of a fresh system activated).
        key = self.keyring.signing_key(self.alg)
        if key is None:
            raise TemporarilyUnavailable(detail=f"no {self.alg} signing key is active")
        claims = {
            "iss": self.issuer,
            "sub": request.subject,
            "aud": audience[0] if len(audience) == 1 else audience,
            "client_id": request.client_id,
            "scope": " ".join(request.scopes),
            "jti": jti,
            "iat": now,
            "exp": now + request.lifetime_seconds,
        }
        if request.username:
            claims["username"] = request.username
        if grant_id:
            claims["grant_id"] = grant_id
        if act:
            claims["act"] = act  # RFC 8693 §4.1: who acts for the subject
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"})

    async def _issue_opaque(self, request: IssueRequest, jti: str, now_ms: int, audience: list[str],
                            grant_id: str) -> str:
        token = new_opaque_token()
        now = now_ms // 1000
        await self._store(token, OpaqueTokenRecord(
            token_hash=b"", jti=jti, client_id=request.client_id, subject=request.subject,
            username=request.username, scopes=request.scopes, audience=tuple(audience), issued_at=now,
            issued_at_ms=now_ms, expires_at=now + request.lifetime_seconds, kind="access", grant_id=grant_id))
        return token

    async def _store(self, token: str, record: OpaqueTokenRecord) -> None:
        """Only the SHA-256 of a token is stored; a database leak yields no usable token."""
        record = OpaqueTokenRecord(**{**record.__dict__, "token_hash": token_hash(token)})
        error = (await self.registry.store_opaque_tokens([record]))[0]
        if error:
            raise ServerError(detail=f"token not stored: {error}")


def _act(request: IssueRequest) -> dict | None:
    """RFC 8693 §4.1 `act` of IssueRequest.act_json, checked before anything is issued: a
    JSON object naming the actor's `sub`, small, and only in a JWT (an opaque token's
    stored record has no place for it, and the delegation must not silently vanish)."""
    if not request.act_json:
        return None
    if len(request.act_json) > MAX_ACT_BYTES:
        raise ServerError(detail=f"act over {MAX_ACT_BYTES} bytes")
    act = token_exchange.parse_act_json(request.act_json)
    if act is None or not isinstance(act.get("sub"), str) or not act["sub"]:
        raise ServerError(detail="act is not a JSON object with a sub")
    if request.format != FORMAT_JWT:
        raise ServerError(detail="act asked for an opaque token")
    return act

"""In-memory fakes for the ports services talk through, shared by the fast unit tests.

One copy of each, so a port's change is followed in one place. Every path a fake
stands in for also runs for real (Postgres, NATS, gRPC) in tests/integration.

- `client_record(**overrides)`: a valid confidential client record to vary.
- `FakeClients`: the client source port (`get_client`, `get_clients`); can be taken
  down (`down = SomeError()`) to test what callers do while the registry is away.
- `FakeIssuer`: the token issuer port (`issue`), recording each request.
- `FakeRevocations`, `FakeSigningKeys`, `FakeOpaqueTokens`: the registry's domains;
  `FakeRegistry` is all of them at once, for code that still takes the whole registry.
- `PostgresLikeClients`, `BatchedClients`: a client source whose batched lookup fails
  whole on a NUL, as Postgres does, and lookups coalesced into batches in front of it.
- `FakeGrant`, `FakeTokens`: the edge's ports (a grant; introspection and revocation).
- `FakeAuthorizationCodes`, `FakeUserDirectory`: the registry's codes (create, consume by
  its rules) and users by id, for the code-for-token exchange and userinfo.
- `FakeBus`: the event bus port (`publish`, `subscribe`, `on_reconnect`): events are
  delivered when the test says so (`await bus.deliver()`), and `await bus.reconnect()`
  runs the reconnect hooks as a real reconnect would.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid

from inbound.events.v1 import events_pb2
from inboundlib import budget
from inboundlib.batching import Coalescer
from inboundlib.grants.api import TokenResponse
from inboundlib.oauth.errors import KeysPending
from services.client_registry.api import (
    ClientRecord,
    ItemError,
    OpaqueTokenRecord,
    RevocationCursor,
    RevocationPage,
    RevocationRecord,
    SigningKeyRecord,
)
from services.token_issuer.api import IssuedToken, IssueRequest, TokenInfo


def client_record(**overrides) -> ClientRecord:
    """A confidential client "app" allowed client_credentials; override any field."""
    base = ClientRecord(client_id="app", name="app", secret_hash="", public=False,
                        grant_types=("client_credentials",), scopes=("api.read", "api.write"), redirect_uris=(),
                        access_token_lifetime=900, refresh_token_lifetime=86400, token_format="jwt",
                        pkce_required=False, active=True, logo_url="", comments="", created_at=1, updated_at=1)
    return dataclasses.replace(base, **overrides)


class _CanBeDown:
    """`down = SomeError(...)` makes every call raise it, as an unreachable source would."""
    down: BaseException | None = None

    def _check(self) -> None:
        if self.down is not None:
            raise self.down


class FakeClients(_CanBeDown):
    """The client source port. `lookups` lists every id asked for, in order (to see
    what a cache in front of it lets through)."""

    def __init__(self, *clients: ClientRecord):
        self.clients: dict[str, ClientRecord] = {c.client_id: c for c in clients}
        self.lookups: list[str] = []

    def put(self, client: ClientRecord) -> None:
        self.clients[client.client_id] = client

    async def get_client(self, client_id: str) -> ClientRecord | None:
        return (await self.get_clients([client_id]))[0]

    async def get_clients(self, client_ids: list[str]) -> list[ClientRecord | None]:
        self._check()
        self.lookups.extend(client_ids)
        return [self.clients.get(client_id) for client_id in client_ids]


class FakeIssuer(_CanBeDown):
    """The token issuer port: records each request, answers a token named after its jti."""

    def __init__(self):
        self.requests: list[IssueRequest] = []

    async def issue(self, request: IssueRequest) -> IssuedToken:
        self._check()
        self.requests.append(request)
        jti = f"jti-{len(self.requests)}"
        return IssuedToken(access_token=f"token-{jti}", expires_in=request.lifetime_seconds, jti=jti,
                           issued_at=int(time.time()))


class FakeRevocations(_CanBeDown):
    """The registry's revocations: ids are assigned in order, as the real table does."""

    def __init__(self):
        self.revocation_rows: list[RevocationRecord] = []

    async def add_revocations(self, records: list[RevocationRecord]) -> list[int]:
        self._check()
        ids = []
        for r in records:
            self.revocation_rows.append(dataclasses.replace(r, id=len(self.revocation_rows) + 1))
            ids.append(len(self.revocation_rows))
        return ids

    async def list_revocations(self, after: RevocationCursor = RevocationCursor(),
                               limit: int = 10_000) -> RevocationPage:
        """Paged by id (nothing here commits out of order, unlike the real table)."""
        self._check()
        rows = [r for r in self.revocation_rows if r.id > after.id][:limit]
        return RevocationPage(rows, RevocationCursor(0, rows[-1].id if rows else after.id), len(rows) == limit)


class FakeSigningKeys(_CanBeDown):
    """The registry's signing keys (as stored: encrypted)."""

    def __init__(self, *keys: SigningKeyRecord):
        self.keys: list[SigningKeyRecord] = list(keys)

    async def list_signing_keys(self) -> list[SigningKeyRecord]:
        self._check()
        return list(self.keys)

    async def add_signing_key(self, key: SigningKeyRecord, only_if_none: bool) -> bool:
        self._check()
        if only_if_none and any(k.alg == key.alg for k in self.keys):
            return False
        self.keys.append(key)
        return True

    async def rewrap_signing_key(self, kid: str, expected: bytes, encrypted_private_key: bytes) -> bool:
        self._check()
        for i, key in enumerate(self.keys):
            if key.kid == kid and key.encrypted_private_key == expected:
                self.keys[i] = dataclasses.replace(key, encrypted_private_key=encrypted_private_key)
                return True
        return False


class FakeOpaqueTokens(_CanBeDown):
    """The registry's opaque tokens, by hash; a second token with a stored hash is refused."""

    def __init__(self):
        self.tokens: dict[bytes, OpaqueTokenRecord] = {}
        self.token_lookups: list[bytes] = []

    async def store_opaque_tokens(self, tokens: list[OpaqueTokenRecord]) -> list[ItemError | None]:
        self._check()
        errors: list[ItemError | None] = []
        for token in tokens:
            if token.token_hash in self.tokens:
                errors.append(ItemError("internal", "duplicate token hash"))
            else:
                self.tokens[token.token_hash] = token
                errors.append(None)
        return errors

    async def get_opaque_tokens(self, token_hashes: list[bytes]) -> list[OpaqueTokenRecord | None]:
        self._check()
        self.token_lookups.extend(token_hashes)
        return [self.tokens.get(h) for h in token_hashes]


class FakeRegistry(FakeClients, FakeRevocations, FakeSigningKeys, FakeOpaqueTokens):
    """Every registry domain in one object, for code that still takes the whole registry."""

    def __init__(self, *clients: ClientRecord):
        FakeClients.__init__(self, *clients)
        FakeRevocations.__init__(self)
        FakeSigningKeys.__init__(self)
        FakeOpaqueTokens.__init__(self)


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


class FakeBus:
    """The event bus port. `published` keeps every (subject, event) ever published;
    subscribers get them on `await deliver()` (the real bus delivers later, too)."""

    def __init__(self, source: str = "test"):
        self.source = source
        self.published: list[tuple[str, events_pb2.Event]] = []
        self._undelivered: list[tuple[str, events_pb2.Event]] = []
        self.handlers: list[tuple[str, object]] = []
        self.hooks: list[object] = []
        # Cleared by a test to play a disconnected bus (caches serve nothing stale then).
        self.connected = asyncio.Event()
        self.connected.set()
        self.connections = 1

    def publish(self, subject: str, event: events_pb2.Event, *, low_priority: bool = False,
                awaited: bool = False) -> str:
        if not event.event_id:
            event.event_id = uuid.uuid4().hex
        event.source = event.source or self.source
        self.published.append((subject, event))
        self._undelivered.append((subject, event))
        return event.event_id

    async def durable(self, *event_ids: str) -> None:
        """Here an event is kept (in `published`) as soon as it is published."""

    async def subscribe(self, subject: str, handler) -> None:
        self.handlers.append((subject, handler))

    def on_reconnect(self, hook) -> None:
        self.hooks.append(hook)

    def events(self, subject: str = ">") -> list[events_pb2.Event]:
        """What was published on subjects matching `subject`."""
        return [event for s, event in self.published if _matches(subject, s)]

    async def deliver(self) -> int:
        """Hand every undelivered event to the matching subscribers; returns how many events."""
        pending, self._undelivered = self._undelivered, []
        for subject, event in pending:
            for pattern, handler in list(self.handlers):
                if _matches(pattern, subject):
                    await handler(event)
        return len(pending)

    def drop_undelivered(self) -> int:
        """Lose what was not delivered yet (what a disconnected subscriber misses)."""
        lost, self._undelivered = len(self._undelivered), []
        return lost

    async def reconnect(self, *, run_hooks: bool = True) -> None:
        """A new connection; `run_hooks=False` plays the moment before its hooks have run."""
        self.connections += 1
        if not run_hooks:
            return
        for hook in list(self.hooks):
            await hook()

    @property
    def pending(self) -> int:
        return 0

    async def flush(self, timeout: float = 2.0) -> None:
        return None


# --- poison and batching, for "one item never fails its batch neighbours" -------------------------------

class PostgresLikeClients(FakeClients):
    """The client source as Postgres answers a batched lookup: a NUL in any id fails
    the whole statement (asyncpg: invalid byte sequence), so the whole batch."""

    async def get_clients(self, client_ids: list[str]) -> list[ClientRecord | None]:
        if any("\x00" in client_id for client_id in client_ids):
            raise ValueError("invalid byte sequence for encoding UTF8: 0x00")
        return await super().get_clients(client_ids)


class BatchedClients:
    """`get_client` calls coalesced into `get_clients` batches, as RegistryClient does
    over gRPC (so concurrent lookups share one call, and one failure)."""

    def __init__(self, source: FakeClients, *, idempotent: bool = False):
        self.source = source
        self.batches: list[list[str]] = []
        self._lookups = Coalescer("test.GetClients." + uuid.uuid4().hex[:8], self._send, max_batch=64,
                                  max_in_flight=1, idempotent=idempotent)

    async def _send(self, client_ids: list[str], timeout: float):
        self.batches.append(list(client_ids))
        return await self.source.get_clients(client_ids)

    async def get_client(self, client_id: str) -> ClientRecord | None:
        return await self._lookups.submit(client_id, 5.0)


# --- the edge's ports ---------------------------------------------------------------------------------

class FakeGrant:
    """A grant as the edge sees it (GrantClient / GrantRunner): records each TokenRequest
    it is given and the budget left when it got it; answers `response`, or raises `error`;
    its first `pending` answers are KeysPending (keys being fetched)."""

    def __init__(self, grant_type: str = "client_credentials", *, error: BaseException | None = None,
                 pending: int = 0):
        self.grant_type = grant_type
        self.error = error
        self.pending = pending
        self.requests: list = []
        self.budgets: list[float] = []
        self.response = TokenResponse(access_token="fake-token", token_type="Bearer", expires_in=60)

    async def handle(self, request):
        self.requests.append(request)
        self.budgets.append(budget.remaining(float("inf")))
        if len(self.requests) <= self.pending:
            raise KeysPending(detail="keys being fetched")
        if self.error is not None:
            raise self.error
        return self.response


class FakeTokens:
    """token_issuer as the edge sees it (introspect, revoke): records calls; `error` raises.
    `infos` maps a token to its introspection answer (any other: inactive). The first
    `pending` calls are answered KeysPending; `endpoint_urls` records what each call named."""

    def __init__(self, *, error: BaseException | None = None, infos: dict[str, TokenInfo] | None = None,
                 pending: int = 0):
        self.error = error
        self.pending = pending
        self.endpoint_urls: list[str] = []
        self.infos = infos if infos is not None else {}
        self.introspected: list[tuple[str, object]] = []
        self.revoked: list[tuple[str, object, str]] = []

    async def introspect(self, token: str, caller=None, *, request_id: str = "", endpoint_url: str = ""):
        self.introspected.append((token, caller))
        self._answer(endpoint_url)
        return self.infos.get(token, TokenInfo(active=False))

    def _answer(self, endpoint_url: str) -> None:
        self.endpoint_urls.append(endpoint_url)
        if len(self.endpoint_urls) <= self.pending:
            raise KeysPending(detail="keys being fetched")
        if self.error is not None:
            raise self.error

    async def revoke(self, token: str, caller, *, token_type_hint: str = "", request_id: str = "",
                     endpoint_url: str = "") -> None:
        self.revoked.append((token, caller, token_type_hint))
        self._answer(endpoint_url)


@contextlib.asynccontextmanager
async def running_edge(settings, *, host: str = "127.0.0.1", issuer: str = "http://127.0.0.1"):
    """A real edge HTTP server (uvicorn, the edge's own protocol limits) in this loop, in
    front of a FakeGrant; yields its port once it accepts connections."""
    from inboundlib.localservers import free_port
    from services.edge.app import EdgeConfig, create_app
    from services.edge.server import serve

    port = free_port()
    app = create_app(EdgeConfig(issuer=issuer, grants={"client_credentials": FakeGrant()},
                                jwks=lambda: asyncio.sleep(0, {"keys": []}), settings=settings))
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, host, port, stop, settings))
    async with asyncio.timeout(10):
        while not task.done():
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
    try:
        yield port
    finally:
        stop.set()
        await task


class FakeRefreshTokens(_CanBeDown):
    """The registry's refresh tokens and their rotation (api.RefreshTokenStore), by the
    rules of its docstring, in memory. `now` is the fake's clock (Unix seconds): a test
    moves it instead of waiting. `rotations` lists every Rotation asked for; `on_rotate`,
    when set, runs after each (to play a concurrent request finishing meanwhile)."""

    def __init__(self):
        self.now = time.time()
        self.tokens: dict[bytes, OpaqueTokenRecord] = {}
        self.consumed_at: dict[bytes, float] = {}
        self.responses: dict[bytes, bytes] = {}
        self.revoked_grants: set[str] = set()
        self.inactive_subjects: set[str] = set()
        self.rotations: list = []
        self.on_rotate = None

    def add(self, record: OpaqueTokenRecord) -> OpaqueTokenRecord:
        self.tokens[record.token_hash] = record
        return record

    async def get_opaque_tokens(self, token_hashes: list[bytes]) -> list[OpaqueTokenRecord | None]:
        self._check()
        return [self.tokens.get(h) for h in token_hashes]

    async def rotate_refresh_tokens(self, rotations: list) -> list:
        from services.client_registry.api import (
            REFUSED_EXPIRED,
            REFUSED_OTHER_CLIENT,
            REFUSED_REUSED,
            REFUSED_REVOKED,
            REFUSED_UNKNOWN,
            REFUSED_USER_INACTIVE,
            Refused,
            Replay,
            Rotated,
        )
        self._check()
        outcomes = []
        for rotation in rotations:
            self.rotations.append(rotation)
            record = self.tokens.get(rotation.token_hash)
            if record is None or record.kind != "refresh":
                outcomes.append(Refused(REFUSED_UNKNOWN))
            elif record.client_id != rotation.client_id:
                outcomes.append(Refused(REFUSED_OTHER_CLIENT))
            elif record.grant_id in self.revoked_grants:
                outcomes.append(Refused(REFUSED_REVOKED))
            elif record.expires_at <= self.now:
                outcomes.append(Refused(REFUSED_EXPIRED))
            elif record.subject in self.inactive_subjects:
                outcomes.append(Refused(REFUSED_USER_INACTIVE))
            elif rotation.token_hash in self.consumed_at:
                if self.now - self.consumed_at[rotation.token_hash] <= rotation.grace_seconds:
                    outcomes.append(Replay(self.responses.get(rotation.token_hash, b""), record,
                                           replay_until_ms=int((self.consumed_at[rotation.token_hash]
                                                                + rotation.grace_seconds) * 1000)))
                else:
                    self.revoked_grants.add(record.grant_id)
                    outcomes.append(Refused(REFUSED_REUSED, grant_id=record.grant_id))
            else:
                self.consumed_at[rotation.token_hash] = self.now
                successor = self.add(dataclasses.replace(
                    record, token_hash=rotation.new_token_hash, jti=rotation.new_jti, issued_at=int(self.now)))
                outcomes.append(Rotated(consumed=record, successor=successor))
        if self.on_rotate is not None:
            await self.on_rotate()
        return outcomes

    async def store_rotation_responses(self, responses: list[tuple[bytes, bytes]]) -> list[ItemError | None]:
        self._check()
        for token_hash, blob in responses:
            self.responses[token_hash] = blob
        return [None] * len(responses)


class FakeAuthorizationCodes(_CanBeDown):
    """The registry's authorization codes (api.AuthorizationStore's create and consume), by
    the rules of its docstring, in memory: consumed once, by their own client only (another
    client's attempt leaves them unconsumed), unexpired by the fake's clock `now` (Unix
    seconds; a test moves it). A second use answers CodeReused and adds the code's grant
    id to `revoked_grants`. `consumed` lists every CodeToConsume asked for."""

    def __init__(self):
        self.now = time.time()
        self.codes: dict[bytes, object] = {}
        self.used: set[bytes] = set()
        self.revoked_grants: set[str] = set()
        self.consumed: list = []

    async def create_authorization_code(self, code, lifetime_seconds: int):
        self._check()
        stored = dataclasses.replace(code, created_at_ms=code.created_at_ms or int(self.now * 1000),
                                     expires_at=int(self.now) + lifetime_seconds)
        self.codes[code.code_hash] = stored
        return stored

    async def consume_authorization_codes(self, codes: list) -> list:
        from services.client_registry.api import CodeNotFound, CodeReused
        self._check()
        outcomes = []
        for item in codes:
            self.consumed.append(item)
            record = self.codes.get(item.code_hash)
            if record is None or record.client_id != item.client_id:
                outcomes.append(CodeNotFound())
            elif item.code_hash in self.used:
                self.revoked_grants.add(record.grant_id)
                outcomes.append(CodeReused(grant_id=record.grant_id))
            elif record.expires_at <= self.now:
                outcomes.append(CodeNotFound())
            else:
                self.used.add(item.code_hash)
                outcomes.append(record)
        return outcomes


class FakeUserDirectory(_CanBeDown):
    """The registry's users by id or username (api.UserDirectory.get_user); `lookups` lists the ids asked for."""

    def __init__(self, *users):
        self.users = {user.id: user for user in users}
        self.lookups: list[str] = []

    def put(self, user) -> None:
        self.users[user.id] = user

    async def get_user(self, *, id: str = "", username: str = ""):
        self._check()
        self.lookups.append(id or username)
        if id:
            return self.users.get(id)
        return next((u for u in self.users.values() if u.username == username), None)


class FakeBrowserState(FakeAuthorizationCodes, FakeUserDirectory):
    """The registry as the authorize decisions use it (services/authorization_code/authorize.py
    AuthorizeStore): the scope catalog, sign-ins, sessions, pending requests, consents, codes
    and users, in memory, by the rules of api.AuthorizationStore's docstring. `passwords` maps
    a username to its password; `locked` usernames answer Locked; `sessions` and `pending` are
    keyed by hash (nothing here ever sees an id itself)."""

    def __init__(self, *users, scopes=()):
        FakeAuthorizationCodes.__init__(self)
        FakeUserDirectory.__init__(self, *users)
        self.scopes = {s.name: s for s in scopes}
        self.passwords: dict[str, str] = {}
        self.locked: set[str] = set()
        self.sign_ins: list = []
        self.sessions: dict[bytes, object] = {}
        self.pending: dict[bytes, object] = {}
        self.completed: set[bytes] = set()
        self.consents: dict[tuple[str, str], object] = {}
        self.user_grants: list[tuple[str, str, str]] = []
        self.withdrawn: list[tuple[str, str, str]] = []

    async def get_scopes(self, names: list[str]) -> list:
        self._check()
        return [self.scopes.get(n) for n in names]

    async def authenticate_users(self, sign_ins: list) -> list:
        from services.client_registry.api import Invalid, Locked
        self._check()
        outcomes = []
        for s in sign_ins:
            self.sign_ins.append(s)
            user = next((u for u in self.users.values() if u.username == s.username), None)
            if s.username in self.locked:
                outcomes.append(Locked(locked_until=int(self.now) + 900))
            elif user is None or not user.active or self.passwords.get(s.username) != s.password:
                outcomes.append(Invalid())
            else:
                outcomes.append(dataclasses.replace(user, verified_at_ms=int(self.now * 1000)))
        return outcomes

    async def create_session(self, session, lifetime_seconds: int, verified_at_ms: int):
        self._check()
        stored = dataclasses.replace(session, auth_time_ms=int(self.now * 1000), created_at=int(self.now),
                                     expires_at=int(self.now) + lifetime_seconds)
        self.sessions[session.id_hash] = stored
        return stored

    async def get_session(self, id_hash: bytes):
        self._check()
        session = self.sessions.get(id_hash)
        if session is None or session.expires_at <= self.now:
            return None
        return session

    async def end_session(self, *, id_hash: bytes = b"", sid: str = "") -> bool:
        self._check()
        for key, session in list(self.sessions.items()):
            if (id_hash and key == id_hash) or (sid and session.sid == sid):
                del self.sessions[key]
                return True
        return False

    async def create_authorization_request(self, request, lifetime_seconds: int):
        self._check()
        stored = dataclasses.replace(request, created_at=int(self.now), expires_at=int(self.now) + lifetime_seconds)
        self.pending[request.id_hash] = stored
        return stored

    async def get_authorization_request(self, id_hash: bytes):
        self._check()
        request = self.pending.get(id_hash)
        if request is None or id_hash in self.completed or request.expires_at <= self.now:
            return None
        return request

    async def complete_authorization_request(self, id_hash: bytes) -> bool:
        self._check()
        if id_hash not in self.pending or id_hash in self.completed:
            return False
        self.completed.add(id_hash)
        return True

    async def get_consent(self, user_id: str, client_id: str):
        self._check()
        return self.consents.get((user_id, client_id))

    async def grant_consent(self, user_id: str, client_id: str, scopes: list[str]):
        from services.client_registry.api import ConsentRecord
        self._check()
        before = self.consents.get((user_id, client_id))
        merged = tuple(dict.fromkeys([*(before.scopes if before else ()), *scopes]))
        self.consents[(user_id, client_id)] = ConsentRecord(user_id, client_id, merged, granted_at=int(self.now))
        return self.consents[(user_id, client_id)]

    async def list_consents(self, user_id: str) -> list:
        self._check()
        return [c for (u, _), c in self.consents.items() if u == user_id]

    async def withdraw_consent(self, user_id: str, client_id: str, actor: str) -> tuple[bool, int]:
        self._check()
        self.withdrawn.append((user_id, client_id, actor))
        existed = self.consents.pop((user_id, client_id), None) is not None
        grants = {g for u, c, g in self.user_grants if (u, c) == (user_id, client_id)}
        grants |= {r.grant_id for r in self.codes.values() if (r.user_id, r.client_id) == (user_id, client_id)}
        self.revoked_grants |= grants
        return existed, len(grants)

    async def record_user_grant(self, user_id: str, client_id: str, grant_id: str) -> None:
        self._check()
        self.user_grants.append((user_id, client_id, grant_id))

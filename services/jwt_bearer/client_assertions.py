"""Client authentication by JWT (RFC 7523 §2.2, checked per §3), answered by jwt_bearer for
every service that authenticates clients: the grant runner of each grant service and
token_issuer's introspection and revocation ask `ClientAssertions.Verify` through the
batched `ClientAssertionsClient`; jwt_bearer's own grant, and every service hosted in the
one process, call `ClientAssertionChecker` directly. Only this service fetches clients'
`jwks_uri` and opens client_secret_jwt secrets (sealed under the key-encryption key).

The caller has found the client record and checked that it is active and registered
for the method the assertion's header suggests (inboundlib.oauth.client_auth). The
checker looks the record up again (its own cache) for the keys, and checks:
- the method is the client's (a caller on an older record cannot widen it);
- iss = sub = client_id (§3 items 1, 2); aud names this server: the URL the assertion
  was presented at, the token endpoint or the issuer identifier (§3 item 3);
- exp (§3 item 4) within the skew, nbf / iat honoured, and a lifetime (exp − iat, or
  nbf) of at most INBOUND_CLIENT_ASSERTION_MAX_LIFETIME (§3 item 4 lets the server
  bound it);
- jti required and used once, in namespace `client:<client_id>`, remembered until
  exp + skew (§3 item 7);
- the signature (§3 item 9): private_key_jwt with the client's public keys (its
  inline JWKS, or its jwks_uri through the fetcher, which answers only from its cache:
  a miss is KeysPending while it fetches in the background), client_secret_jwt with
  the client's secret (HS256/384/512); the algorithm as the key type allows
  (inboundlib.jose), restricted to the client's token_endpoint_auth_signing_alg when set.
Every failure is invalid_client, its reason private (the caller's log and audit record).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

import grpc

from inbound.federation.v1 import federation_pb2 as pb
from inbound.federation.v1 import federation_pb2_grpc
from inboundlib.batching import Coalescer
from inboundlib.config import Env
from inboundlib.grants.client import GrantClient
from inboundlib.grpcx import answer_item, check_batch_size, is_unavailable
from inboundlib.jose.fetch import Fetcher, RemoteKeys
from inboundlib.jose.keys import HMAC_MIN_BYTES, KeySet, StaticKeys
from inboundlib.jose.validator import DEFAULT_SKEW, InvalidJwt, JwtPolicy, JwtValidator
from inboundlib.logs import request_id_var
from inboundlib.oauth.client_auth import (
    CLIENT_SECRET_JWT,
    JWT_AUTH_METHODS,
    PRIVATE_KEY_JWT,
    TOKEN_ENDPOINT_PATH,
    ClientAssertion,
    registered_method,
)
from inboundlib.oauth.errors import InvalidClient
from inboundlib.wire import (
    error_from_pb,
    error_to_pb,
    meta,
    method_from_pb,
    method_to_pb,
    restamp,
)
from services.client_registry.api import ClientRecord, ClientSecretReader

log = logging.getLogger(__name__)

SERVICE_NAME = "inbound.federation.v1.ClientAssertions"
MAX_BATCH = 256
# The most a caller waits for a verification; less when its request has less left.
TIMEOUT = 3.0
HMAC_ALGORITHMS = tuple(sorted(HMAC_MIN_BYTES))
# One hour: what common client libraries put between iat and exp by default (Authlib's
# client_secret_jwt / private_key_jwt, Okta's and Auth0's SDKs), and RFC 7523 sets no
# bound. Replay is refused for the whole lifetime anyway (the jti is kept until exp +
# skew), so a longer lifetime costs only a longer-kept jti row; a deployment whose
# clients send short-lived assertions may lower it.
DEFAULT_MAX_LIFETIME = 3600
# Opened secrets and parsed inline JWKS kept in memory (only registered clients' ever are):
# past this many, the memo starts again rather than grow with clients deleted long ago.
MEMO_ENTRIES = 10_000


class SecretOpener(Protocol):
    """The key-encryption keys (inboundlib.kek.KeyEncryptor): AES-GCM with associated data."""

    def decrypt(self, associated_data: str, blob: bytes) -> bytes: ...


class ClientRecords(Protocol):
    async def get_client(self, client_id: str) -> ClientRecord | None: ...


@dataclass(frozen=True)
class AssertionSettings:
    issuer: str
    max_lifetime: int = DEFAULT_MAX_LIFETIME
    skew: int = DEFAULT_SKEW

    @classmethod
    def from_env(cls, env: Env) -> AssertionSettings:
        return cls(issuer=env.url("INBOUND_ISSUER", "http://127.0.0.1:8080"),
                   max_lifetime=env.int("INBOUND_CLIENT_ASSERTION_MAX_LIFETIME", DEFAULT_MAX_LIFETIME,
                                        minimum=10, maximum=86400),
                   skew=env.int("INBOUND_JWT_CLOCK_SKEW", DEFAULT_SKEW, minimum=0, maximum=3600))

    @property
    def token_endpoint(self) -> str:
        return self.issuer.rstrip("/") + TOKEN_ENDPOINT_PATH

    def is_endpoint(self, url: str) -> bool:
        """Whether `url` may be an endpoint of this server (one under the issuer, as the edge
        makes them): only such a URL is an audience (RFC 7523 §3 item 3). The URL comes with the
        request, from gRPC callers too (resource servers introspecting as a client): one of
        theirs, or another server's, would accept assertions made for them."""
        return bool(url) and url.startswith(self.issuer.rstrip("/") + "/") and not any(c in url for c in "?#")


class ClientAssertionChecker:
    """inboundlib.oauth.client_auth.ClientAssertionVerifier, in process."""

    def __init__(self, settings: AssertionSettings, *, clients: ClientRecords, secrets: ClientSecretReader,
                 opener: SecretOpener | None, fetcher: Fetcher, validator: JwtValidator):
        self.settings = settings
        self.clients = clients
        self.secrets = secrets
        self.opener = opener
        self.fetcher = fetcher
        self.validator = validator
        # Opened client_secret_jwt secrets, by client and the record's version: a rotation
        # or any update of the client changes updated_at, and the next use opens the new one.
        self._opened: dict[str, tuple[tuple[int, int], KeySet]] = {}
        # Inline JWKS parsed once per text.
        self._inline: dict[str, tuple[str, KeySet]] = {}

    async def verify_client_assertion(self, item: ClientAssertion) -> None:
        if item.method not in JWT_AUTH_METHODS:
            raise InvalidClient(detail=f"{item.method} is no client assertion method")
        client = await self.clients.get_client(item.client_id)
        if client is None:
            raise InvalidClient(detail="unknown client")
        if not client.active:
            raise InvalidClient(detail="client is disabled")
        registered = registered_method(client)
        if registered != item.method:
            raise InvalidClient(detail=f"client is registered for {registered}, sent {item.method}")
        keys, algorithms = await self._trust(client, item.method)
        try:
            await self.validator.validate(item.assertion, self.policy(client, algorithms, item.endpoint_url), keys)
        except InvalidJwt as exc:
            raise InvalidClient(detail=f"client assertion refused: {exc.reason}") from None

    def policy(self, client: ClientRecord, algorithms: tuple[str, ...], endpoint_url: str) -> JwtPolicy:
        audiences = {self.settings.issuer, self.settings.token_endpoint}
        if self.settings.is_endpoint(endpoint_url):
            audiences.add(endpoint_url)
        return JwtPolicy(issuers=(client.client_id,), subject=client.client_id, audiences=tuple(sorted(audiences)),
                         algorithms=algorithms, skew=self.settings.skew, max_lifetime=self.settings.max_lifetime,
                         require_jti=True, jti_namespace=f"client:{client.client_id}",
                         required=("iss", "sub", "aud", "exp", "jti"))

    async def _trust(self, client: ClientRecord, method: str):
        """The key source and the algorithms allowed for this client's assertions."""
        pinned = client.token_endpoint_auth_signing_alg
        if method == CLIENT_SECRET_JWT:
            if pinned and pinned not in HMAC_ALGORITHMS:
                raise InvalidClient(detail=f"client_secret_jwt client pinned to {pinned}")
            return StaticKeys(await self._secret(client)), (pinned,) if pinned else HMAC_ALGORITHMS
        if pinned in HMAC_ALGORITHMS:
            # Never HMAC with a public key (RFC 8725 §2.1): the key set would not offer it either.
            raise InvalidClient(detail=f"private_key_jwt client pinned to {pinned}")
        algorithms = (pinned,) if pinned else ()
        if client.jwks_uri:
            return RemoteKeys(self.fetcher, client.jwks_uri), algorithms
        if client.jwks:
            cached = self._inline.get(client.client_id)
            if cached is None or cached[0] != client.jwks:
                try:
                    cached = (client.jwks, KeySet.from_jwks(client.jwks))
                except ValueError as exc:  # a record written around the registry's checks
                    raise InvalidClient(detail=f"private_key_jwt client's jwks is unusable ({exc})") from None
                _remember(self._inline, client.client_id, cached)
            return StaticKeys(cached[1]), algorithms
        raise InvalidClient(detail="private_key_jwt client has no keys registered (jwks or jwks_uri)")

    async def _secret(self, client: ClientRecord) -> KeySet:
        version = (client.updated_at, client.secret_rotated_at)
        cached = self._opened.get(client.client_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        if self.opener is None:
            raise InvalidClient(detail="client_secret_jwt: no key-encryption key configured")
        [sealed] = await self.secrets.get_client_secrets([client.client_id])
        if not sealed:
            raise InvalidClient(detail="client_secret_jwt: no sealed secret stored for the client")
        try:
            secret = self.opener.decrypt(f"client:{client.client_id}", sealed)
        except Exception as exc:  # InvalidTag: another key-encryption key, or a damaged blob
            log.error("a client's sealed secret cannot be opened", extra={"client_id": client.client_id,
                                                                          "error": type(exc).__name__})
            raise InvalidClient(detail="client_secret_jwt: the sealed secret cannot be opened") from None
        try:
            key_set = KeySet.from_secret(secret)
        except ValueError as exc:  # shorter than HS256 needs: not a secret the registry made
            raise InvalidClient(detail=f"client_secret_jwt: the client's secret is unusable ({exc})") from None
        _remember(self._opened, client.client_id, (version, key_set))
        return key_set

    def forget(self, client_id: str) -> None:
        """Drop what is held for a client that changed (its registry.client event): the memo's
        version counts whole seconds, so a second rotation within the second that cached the
        first one's secret would otherwise keep that secret usable."""
        self._opened.pop(client_id, None)
        self._inline.pop(client_id, None)

    def warm(self, client: ClientRecord) -> None:
        """Fetch a private_key_jwt client's jwks_uri ahead of its first assertion (at a
        registry change event), so that assertion finds the keys cached."""
        if client.active and client.jwks_uri and registered_method(client) == PRIVATE_KEY_JWT:
            self.fetcher.warm(client.jwks_uri, "jwks")


def _remember(memo: dict, key: str, value) -> None:
    if len(memo) >= MEMO_ENTRIES:
        memo.clear()
    memo[key] = value


# --- the gRPC servicer (jwt_bearer serves it) -----------------------------------------------------

class ClientAssertionsServicer(federation_pb2_grpc.ClientAssertionsServicer):
    """Verify: one result per item, each answered on its own."""

    def __init__(self, checker: ClientAssertionChecker):
        self.checker = checker

    async def _one(self, item: pb.VerifyClientAssertionRequest) -> pb.VerifyClientAssertionResult:
        async def work():
            method = method_from_pb(item.method)
            await self.checker.verify_client_assertion(ClientAssertion(
                client_id=item.client_id, method=method or "", assertion=item.client_assertion,
                endpoint_url=item.endpoint_url, request_id=item.meta.request_id))

        refusal = await answer_item(item.meta, work, what="client assertion check")
        if refusal is None:
            return pb.VerifyClientAssertionResult()
        return pb.VerifyClientAssertionResult(error=error_to_pb(refusal), detail=refusal.detail)

    async def Verify(self, request, context):
        await check_batch_size(context, request.requests, MAX_BATCH)
        results = await asyncio.gather(*(self._one(item) for item in request.requests))
        return pb.VerifyClientAssertionResults(results=results)


def add_to_server(checker: ClientAssertionChecker, server: grpc.aio.Server) -> list[str]:
    """Serve ClientAssertions.Verify (jwt_bearer's assembly, on its gRPC port); the health service names."""
    federation_pb2_grpc.add_ClientAssertionsServicer_to_server(ClientAssertionsServicer(checker), server)
    return [SERVICE_NAME]


# --- the batched client (grant services, token_issuer) --------------------------------------------

class ClientAssertionsClient:
    """ClientAssertionVerifier over gRPC, with concurrent requests coalesced into batches.
    Never sent twice: a verification claims the assertion's jti, so a resent one would
    be refused as a replay (a failed call answers temporarily_unavailable)."""

    def __init__(self, channel: grpc.aio.Channel, *, max_batch: int = 32, max_in_flight: int | None = None):
        self.stub = federation_pb2_grpc.ClientAssertionsStub(channel)
        self._verify = Coalescer("federation.Verify", self._send, max_batch=max_batch, max_in_flight=max_in_flight,
                                 restamp=restamp, unavailable=is_unavailable)

    async def _send(self, items: list[pb.VerifyClientAssertionRequest],
                    timeout: float) -> list[pb.VerifyClientAssertionResult]:
        reply = await self.stub.Verify(pb.VerifyClientAssertionBatch(requests=items), timeout=timeout)
        return list(reply.results)

    async def verify_client_assertion(self, item: ClientAssertion) -> None:
        request = pb.VerifyClientAssertionRequest(
            meta=meta(item.request_id or request_id_var.get(), TIMEOUT), client_id=item.client_id,
            method=method_to_pb(item.method), client_assertion=item.assertion, endpoint_url=item.endpoint_url)
        result = await self._verify.submit(request, TIMEOUT)
        if result.HasField("error"):
            error = error_from_pb(result.error)
            error.detail = result.detail
            raise error


# --- what jwt_bearer offers the others (its assembly's `api` and `connect`) -----------------------

class JwtBearerApi:
    """jwt_bearer as the other services see it, in process or over gRPC: its grant (`handle`,
    which the edge routes to) and client assertions (`verify_client_assertion`, which grant
    services and token_issuer ask)."""

    def __init__(self, grant, assertions):
        self.grant_type = getattr(grant, "grant_type", "")
        self.handle = grant.handle
        self.verify_client_assertion = assertions.verify_client_assertion


def connect(channel: grpc.aio.Channel, grant_type: str) -> JwtBearerApi:
    """The gRPC client of both, over one channel (jwt_bearer's assembly `connect`)."""
    return JwtBearerApi(GrantClient(grant_type, channel), ClientAssertionsClient(channel))

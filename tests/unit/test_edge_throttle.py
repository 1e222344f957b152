"""Failed client authentication is throttled at the edge (services/edge/throttle.py):
per client id and address together, then per address across ids; 429 with
Retry-After (RFC 6585 §4) before any secret is checked.

The table's rules on a clock of our own; then the edge app (httpx over ASGI) in
front of the real grant runner and client authenticator, in process as in the
one-process mode, with the secret verifier counted."""
from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from inboundlib import redact
from inboundlib.events import TOKEN_DENIED
from inboundlib.grants.api import GrantParameters, TokenResponse
from inboundlib.grants.runner import GrantRunner
from inboundlib.oauth import client_auth
from inboundlib.oauth.client_auth import hash_client_secret
from inboundlib.oauth.errors import InvalidClient
from services.edge.app import EdgeConfig, create_app
from services.edge.settings import EdgeSettings, parse_networks
from services.edge.throttle import (
    ADDRESS,
    CLIENT_AND_ADDRESS,
    ENTRY_OVERHEAD_BYTES,
    FailedAuthThrottle,
    ThrottleSettings,
)
from tests.fakes import FakeBus, FakeClients, FakeTokens, client_record

SECRET = "the-right-secret-of-app-0123456789"
FORM = {"content-type": "application/x-www-form-urlencoded"}
A, B = "198.51.100.7", "203.0.113.9"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(**settings) -> tuple[FailedAuthThrottle, Clock]:
    clock = Clock()
    return FailedAuthThrottle(ThrottleSettings(**settings), clock=clock), clock


# --- the table ------------------------------------------------------------------------------------

def test_after_the_burst_the_wait_doubles_with_each_failure_up_to_the_cap():
    throttle, clock = table(burst=3, backoff=1.0, max_backoff=8.0)
    for _ in range(2):
        throttle.failed("app", A)
        assert throttle.refusal("app", A) is None
    waits = []
    for _ in range(6):
        throttle.failed("app", A)
        refusal = throttle.refusal("app", A)
        assert refusal.limit == CLIENT_AND_ADDRESS
        waits.append(refusal.retry_after)
        clock.now += refusal.retry_after  # the attacker waits it out, then fails again
        assert throttle.refusal("app", A) is None
    assert waits == [1, 2, 4, 8, 8, 8]


def test_retry_after_is_whole_seconds_rounded_up():
    throttle, clock = table(burst=1, backoff=2.5)
    throttle.failed("app", A)
    assert throttle.refusal("app", A).retry_after == 3
    clock.now += 2.4
    assert throttle.refusal("app", A).retry_after == 1


def test_the_same_id_from_another_address_is_not_held_back():
    throttle, _ = table(burst=2)
    for _ in range(5):
        throttle.failed("app", A)
    assert throttle.refusal("app", A) is not None
    assert throttle.refusal("app", B) is None


def test_a_success_clears_its_client_and_address_entry_only():
    throttle, _ = table(burst=3, address_burst=5)
    for _ in range(2):
        throttle.failed("app", A)
    throttle.succeeded("app", A)
    for _ in range(2):
        throttle.failed("app", A)
    assert throttle.refusal("app", A) is None  # 2 + 2 failures, but a success between them
    throttle.failed("other", A)
    # The address's count was not cleared by the success: 5 failures from A in all.
    assert throttle.refusal("someone-else", A).limit == ADDRESS


def test_one_address_cannot_walk_through_client_ids():
    throttle, _ = table(burst=5, address_burst=4)
    for n in range(4):
        throttle.failed(f"client-{n}", A)
    refusal = throttle.refusal("client-99", A)
    assert refusal is not None and refusal.limit == ADDRESS
    assert throttle.refusal("client-99", B) is None


def test_an_ipv6_address_counts_by_its_64():
    throttle, _ = table(burst=2)
    throttle.failed("app", "2001:db8:1:2::1")
    throttle.failed("app", "2001:db8:1:2:ffff::9")
    assert throttle.refusal("app", "2001:db8:1:2:abcd::5") is not None
    assert throttle.refusal("app", "2001:db8:1:3::1") is None


def test_an_entry_is_forgotten_after_a_quiet_period():
    throttle, clock = table(burst=2, max_backoff=10.0)
    throttle.failed("app", A)
    clock.now += 10.0
    throttle.failed("app", A)  # the first failure is forgotten: one failure, below the burst
    assert throttle.refusal("app", A) is None


def test_the_table_is_bounded_in_bytes_dropping_the_least_recently_failed():
    limit = 64 * 1024
    throttle, _ = table(burst=1, max_bytes=limit)
    throttle.failed("first", A)
    for n in range(2000):
        throttle.failed(f"client-{n:05d}", f"192.0.2.{n % 250}")
        assert throttle.estimated_bytes <= limit
    assert len(throttle) <= limit // ENTRY_OVERHEAD_BYTES
    assert throttle.refusal("first", A) is None  # dropped
    assert throttle.refusal("client-01999", "192.0.2.249") is not None  # kept


def test_the_bound_holds_in_real_memory_for_client_ids_of_wide_characters():
    """A printable client id may be 255 emoji, 4 bytes each in memory: the bound counts
    what the table really holds (tracemalloc), not 1 byte a character."""
    import tracemalloc

    limit = 256 * 1024
    throttle, _ = table(burst=1, max_bytes=limit)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(2000):
            throttle.failed("\U0001F600" * 250 + f"{n:05d}", f"192.0.2.{n % 250}")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert throttle.estimated_bytes <= limit
    assert held <= limit, f"the table holds {held} bytes for a bound of {limit}"


# --- the edge -------------------------------------------------------------------------------------

class Grant:
    grant_type = "client_credentials"
    parameters = GrantParameters()
    authenticates_client = False

    async def handle(self, request, client):
        return TokenResponse(access_token="t", token_type="Bearer", expires_in=60)


@pytest.fixture
def secret_checks(monkeypatch) -> list[str]:
    """Every client secret the authenticator checks (real or in vain)."""
    checked: list[str] = []
    real = client_auth.verify_client_secret

    def counted(secret, stored):
        checked.append(secret)
        return real(secret, stored)

    monkeypatch.setattr(client_auth, "verify_client_secret", counted)
    return checked


def edge(*, bus=None, tokens=None, **settings) -> httpx.AsyncClient:
    """The edge app in front of a real grant runner; `peer` picks the TCP peer per request."""
    throttle = settings.pop("throttle", {})
    known = FakeClients(*(client_record(client_id=name, secret_hash=hash_client_secret(SECRET))
                          for name in ("app", "other")))
    config = EdgeConfig(issuer="https://as.example.com",
                        grants={"client_credentials": GrantRunner(Grant(), known)},
                        jwks=lambda: asyncio.sleep(0, {"keys": []}), tokens=tokens or FakeTokens(), events=bus,
                        settings=EdgeSettings(auth_throttle=ThrottleSettings(**throttle), **settings))
    return httpx.AsyncClient(transport=_PeerTransport(create_app(config)), base_url="http://edge.internal")


class _PeerTransport(httpx.ASGITransport):
    """ASGI with the TCP peer taken from a test-only header, so one app sees many addresses."""

    async def handle_async_request(self, request):
        self.client = (request.headers.get("x-test-peer", A), 40000)
        return await super().handle_async_request(request)


def token_request(http, client_id="app", secret=SECRET, *, peer=A, forwarded=None, path="/oauth/token"):
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    headers = {"authorization": f"Basic {raw}", "x-test-peer": peer, **FORM}
    if forwarded is not None:
        headers["x-forwarded-for"] = forwarded
    return http.post(path, content=b"grant_type=client_credentials", headers=headers)


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth_token.do"])
async def test_after_a_burst_of_wrong_secrets_429_with_retry_after_and_no_secret_check(secret_checks, path):
    async with edge(throttle={"burst": 3}) as http:
        for _ in range(3):
            assert (await token_request(http, secret="guess", path=path)).status_code == 401
        assert len(secret_checks) == 3
        reply = await token_request(http, path=path)  # even the right secret: it is not looked at
    assert reply.status_code == 429
    assert reply.headers["retry-after"].isdigit() and int(reply.headers["retry-after"]) >= 1
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["content-type"] == "application/json"
    assert set(reply.json()) == {"error", "error_description"}
    assert reply.json()["error"] == "temporarily_unavailable"
    assert len(secret_checks) == 3  # the throttled request never reached a secret check


async def test_the_right_secret_from_another_address_still_works(secret_checks):
    async with edge(throttle={"burst": 3}) as http:
        for _ in range(6):
            await token_request(http, secret="guess", peer=A)
        assert (await token_request(http, peer=A)).status_code == 429
        assert (await token_request(http, peer=B)).status_code == 200


async def test_a_success_resets_the_clients_entry_for_its_address(secret_checks):
    async with edge(throttle={"burst": 3}) as http:
        for _ in range(2):
            assert (await token_request(http, secret="guess")).status_code == 401
        assert (await token_request(http)).status_code == 200
        for _ in range(2):
            assert (await token_request(http, secret="guess")).status_code == 401
        # Four failures in all, but never three since the success.
        assert (await token_request(http)).status_code == 200


async def test_one_address_walking_through_client_ids_is_throttled(secret_checks):
    async with edge(throttle={"burst": 5, "address_burst": 4}) as http:
        for n in range(4):
            assert (await token_request(http, f"guess-{n}", "x")).status_code == 401
        assert (await token_request(http, "other")).status_code == 429
        assert (await token_request(http, "other", peer=B)).status_code == 200


async def test_x_forwarded_for_counts_only_through_a_trusted_proxy(secret_checks):
    proxies = parse_networks("INBOUND_TRUSTED_PROXIES", "10.0.0.0/8")
    async with edge(throttle={"burst": 2}, trusted_proxies=proxies) as http:
        # From an untrusted peer, X-Forwarded-For is the client's own word: ignored.
        for n in range(2):
            await token_request(http, secret="guess", peer=A, forwarded=f"192.0.2.{n}")
        assert (await token_request(http, peer=A, forwarded="192.0.2.77")).status_code == 429
        # Through the trusted proxy, each client is its forwarded address.
        for _ in range(2):
            await token_request(http, secret="guess", peer="10.1.1.1", forwarded="192.0.2.50")
        assert (await token_request(http, peer="10.1.1.1", forwarded="192.0.2.50")).status_code == 429
        assert (await token_request(http, peer="10.1.1.1", forwarded="192.0.2.51")).status_code == 200
        # A client cannot pick its address by prepending to the header: the proxy's entry counts.
        assert (await token_request(http, peer="10.1.1.1", forwarded="192.0.2.51, 192.0.2.50")).status_code == 429


@pytest.mark.parametrize(("path", "calls"), [("/oauth/introspect", "introspected"), ("/oauth/revoke", "revoked"),
                                             ("/oauth_revoke_token.do", "revoked")])
async def test_introspection_and_revocation_are_throttled_before_token_issuer_sees_them(path, calls):
    tokens = FakeTokens(error=InvalidClient(detail="wrong client secret"))
    async with edge(tokens=tokens, throttle={"burst": 2}) as http:
        def ask(peer=A):
            raw = base64.b64encode(b"rs:guess").decode()
            return http.post(path, content=b"token=abc", headers={
                "authorization": f"Basic {raw}", "x-test-peer": peer, **FORM})

        assert [(await ask()).status_code for _ in range(2)] == [401, 401]
        reply = await ask()
        assert reply.status_code == 429 and int(reply.headers["retry-after"]) >= 1
        assert reply.json()["error"] == "temporarily_unavailable"
        assert len(getattr(tokens, calls)) == 2  # the third never reached token_issuer
        assert (await ask(peer=B)).status_code == 401


def throttled() -> float:
    """The token route's count of requests held back by the (client id, address) limit."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("inbound_http_auth_throttled_total",
                                     {"route": "token", "limit": CLIENT_AND_ADDRESS}) or 0.0


async def test_a_throttled_request_is_counted_and_audited_with_the_client_id_fingerprinted(secret_checks):
    bus = FakeBus()
    before = throttled()
    async with edge(bus=bus, throttle={"burst": 1}) as http:
        await token_request(http, "app", "guess")
        assert (await token_request(http, "app", "guess")).status_code == 429
    assert throttled() == before + 1
    denials = [event.token_denied for subject, event in bus.published if subject == TOKEN_DENIED
               and event.token_denied.error == "temporarily_unavailable"]
    assert len(denials) == 1
    assert denials[0].client_id == redact.unverified("app") and "app" != denials[0].client_id
    assert "guess" not in str(denials[0])


def test_an_ipv4_mapped_ipv6_address_is_its_ipv4_address():
    throttle, _ = table(burst=1)
    throttle.failed("app", "::ffff:198.51.100.7")
    assert throttle.refusal("app", "198.51.100.7") is not None


async def test_throttled_requests_are_audited_at_a_bounded_rate_and_all_counted(secret_checks, monkeypatch):
    """A flood of throttled requests must not flood the audit log: at most the burst at once."""
    from services.edge.routes import oauth

    monkeypatch.setattr(oauth, "THROTTLE_AUDIT_BURST", 10)
    monkeypatch.setattr(oauth, "THROTTLE_AUDITS_PER_SECOND", 0.001)

    bus = FakeBus()
    before = throttled()
    async with edge(bus=bus, throttle={"burst": 1}) as http:
        await token_request(http, "app", "guess")
        for _ in range(30):
            assert (await token_request(http, "app", "guess")).status_code == 429
    assert throttled() == before + 30
    audited = [event for subject, event in bus.published
               if subject == TOKEN_DENIED and event.token_denied.error == "temporarily_unavailable"]
    assert len(audited) == 10

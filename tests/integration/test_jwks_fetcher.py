"""The JWKS / discovery fetcher (libs/inboundlib/jose/fetch.py) against the demo IdP
(services/demo_idp.py) over real HTTPS on loopback. The fetcher's clock is a fake one the
tests move, so cache lifetimes are decided without waiting; the IdP counts its fetches."""
from __future__ import annotations

import ssl

import aiohttp
import pytest

from inboundlib.jose.fetch import DiscoveredKeys, Fetcher, FetchPolicy, RemoteKeys
from inboundlib.jose.validator import InvalidJwt, JwtPolicy, JwtValidator, unverified_claims
from inboundlib.oauth.errors import KeysPending
from services.demo_idp import DemoIdp
from tests.support import eventually

AUD = "https://inbound.example/oauth/token"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
async def idp(tmp_path_factory):
    async with DemoIdp(tmp_path_factory.mktemp("idp-ca")) as server:
        yield server


@pytest.fixture
def reset(idp):
    idp.down, idp.slow, idp.max_age = False, 0.0, 300
    idp.fetches.clear()
    yield
    idp.down, idp.slow = False, 0.0


@pytest.fixture
async def make_fetcher(idp, reset):
    made = []

    def make(**overrides):
        settings = {"allow_loopback": True, "ca_file": idp.ca_file, "min_cache": 0, "refetch_interval": 60.0,
                    **overrides}
        clock = Clock()
        fetcher = Fetcher(FetchPolicy(**settings), clock=clock)
        fetcher.clock = clock
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.close()


async def loaded(read):
    """The value once the background fetch is in (KeysPending until then)."""
    return await eventually(read, until=lambda value: value is not None, ignore=(KeysPending,), message="fetched")


async def failure(read) -> str:
    """The InvalidJwt reason a read ends with once the background fetch failed."""
    def probe():
        try:
            read()
        except InvalidJwt as exc:
            return exc.reason
        except KeysPending:
            return None
        return None
    return await eventually(probe, message="refused")


async def test_keys_are_cached_per_cache_control(idp, make_fetcher):
    fetcher = make_fetcher()
    idp.max_age = 300
    with pytest.raises(KeysPending):
        fetcher.key_set(idp.jwks_uri)
    key_set = await loaded(lambda: fetcher.key_set(idp.jwks_uri))
    assert {k.kid for k in key_set.keys} == {k.kid for k in idp.keys.values()}
    fetcher.clock.now += 200  # fresh (200 < 0.75 × 300): served from the cache
    for _ in range(10):
        fetcher.key_set(idp.jwks_uri)
    assert idp.fetches["/jwks"] == 1
    fetcher.clock.now += 30  # past 3/4 of max-age: refreshed in the background, the cached set served
    assert fetcher.key_set(idp.jwks_uri) is key_set
    await eventually(lambda: idp.fetches["/jwks"], until=lambda n: n == 2)


async def test_the_configured_maximum_caps_max_age(idp, make_fetcher):
    fetcher = make_fetcher(max_cache=100)
    idp.max_age = 86400
    await loaded(lambda: fetcher.key_set(idp.jwks_uri))
    fetcher.clock.now += 80  # past 3/4 of the capped 100 s, though the IdP said a day
    fetcher.key_set(idp.jwks_uri)
    await eventually(lambda: idp.fetches["/jwks"], until=lambda n: n == 2)


async def test_concurrent_misses_share_one_fetch(idp, make_fetcher):
    fetcher = make_fetcher()
    idp.slow = 0.2
    for _ in range(20):
        with pytest.raises(KeysPending):
            fetcher.key_set(idp.jwks_uri)
    await loaded(lambda: fetcher.key_set(idp.jwks_uri))
    assert idp.fetches["/jwks"] == 1


async def test_stale_if_error_then_a_clear_error(idp, make_fetcher):
    fetcher = make_fetcher(max_cache=100)
    idp.max_age = 100
    key_set = await loaded(lambda: fetcher.key_set(idp.jwks_uri))
    idp.down = True
    fetcher.clock.now += 150  # expired; the refresh fails: the cached keys are still used
    assert fetcher.key_set(idp.jwks_uri) is key_set
    await eventually(lambda: idp.fetches["/jwks"], until=lambda n: n == 2)
    assert fetcher.key_set(idp.jwks_uri) is key_set
    fetcher.clock.now += 60  # past freshness + max_cache: no more stale keys
    reason = await failure(lambda: fetcher.key_set(idp.jwks_uri))
    assert "unavailable" in reason and "HTTP 503" in reason
    idp.down = False
    fetcher.clock.now += 60  # the next attempt succeeds again
    await loaded(lambda: fetcher.key_set(idp.jwks_uri))


async def test_a_failing_idp_is_retried_at_most_every_few_seconds_while_stale_keys_are_served(idp, make_fetcher):
    fetcher = make_fetcher(max_cache=100)
    idp.max_age = 100
    key_set = await loaded(lambda: fetcher.key_set(idp.jwks_uri))
    idp.down = True
    fetcher.clock.now += 150  # expired: served stale, a refresh starts and fails
    fetcher.key_set(idp.jwks_uri)
    state = fetcher._states[("jwks", idp.jwks_uri)]
    await eventually(lambda: state.task is None and state.error, message="refresh failed")
    for _ in range(20):  # every token meanwhile: the stale keys, and no new attempt
        assert fetcher.key_set(idp.jwks_uri) is key_set
        assert state.task is None
    fetcher.clock.now += 11  # past the retry pause: one new attempt
    fetcher.key_set(idp.jwks_uri)
    assert state.task is not None
    await eventually(lambda: idp.fetches["/jwks"], until=lambda n: n == 3)


async def test_unknown_kid_refetch_is_rate_limited_under_a_flood(idp, make_fetcher):
    fetcher = make_fetcher(refetch_interval=60.0)
    source = RemoteKeys(fetcher, idp.jwks_uri)
    validator, policy = JwtValidator(), JwtPolicy(issuers=(idp.issuer,), audiences=(AUD,))
    await loaded(source.keys)
    fetcher.clock.now += 61
    forged = [idp.mint(idp.claims("alice", AUD), kid=f"forged-{i}") for i in range(50)]
    outcomes = []
    for token in forged:
        try:
            await validator.validate(token, policy, source)
        except KeysPending:
            outcomes.append("pending")
        except InvalidJwt as exc:
            outcomes.append(exc.reason.split(" (")[0])
    assert outcomes[0] == "pending" and set(outcomes[1:]) <= {"pending", "unknown kid"}
    await eventually(lambda: idp.fetches["/jwks"], until=lambda n: n == 2)
    for token in forged:  # the refetch is done; within the interval no other starts
        with pytest.raises(InvalidJwt, match="unknown kid"):
            await validator.validate(token, policy, source)
    assert idp.fetches["/jwks"] == 2


async def test_a_rotated_key_is_fetched_on_its_first_token(idp, make_fetcher):
    fetcher = make_fetcher(refetch_interval=60.0)
    source = DiscoveredKeys(fetcher, idp.discovery_url, idp.issuer)
    validator, policy = JwtValidator(), JwtPolicy(issuers=(idp.issuer,), audiences=(AUD,))
    await loaded(source.keys)
    fetcher.clock.now += 61
    idp.rotate()
    for alg in ("RS256", "ES256", "EdDSA"):
        token = idp.token("alice", AUD, alg=alg)
        claims = await eventually(lambda t=token: validator.validate(t, policy, source), ignore=(KeysPending,))
        assert claims["sub"] == "alice"
    assert idp.fetches["/jwks"] == 2 and idp.fetches["/.well-known/openid-configuration"] == 1


async def test_a_discovery_document_naming_another_issuer_is_refused(idp, make_fetcher):
    fetcher = make_fetcher()
    source = DiscoveredKeys(fetcher, idp.discovery_url, "https://someone-else.example")
    reason = await failure(source.keys)
    assert "another issuer" in reason


@pytest.mark.parametrize("url", ["https://10.0.0.1/jwks", "https://169.254.169.254/latest/meta-data",
                                 "https://[::1]/jwks", "https://[::ffff:192.168.1.1]/jwks", "https://0.0.0.0/",
                                 # Full-width digits and ideographic dots: urllib sees a name, yarl (what
                                 # aiohttp connects with, never resolving a literal) sees 127.0.0.1.
                                 "https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/jwks",
                                 "https://169\u3002254\u3002169\u3002254/latest/meta-data"])
async def test_private_addresses_are_refused_before_any_connection(make_fetcher, url):
    fetcher = make_fetcher(allow_loopback=False)
    with pytest.raises(InvalidJwt, match="not allowed"):
        fetcher.key_set(url)


async def test_a_name_resolving_to_loopback_is_refused_unless_allowed(idp, make_fetcher):
    by_name = idp.url("/jwks", host="localhost")
    refusing = make_fetcher(allow_loopback=False)
    assert "not allowed" in await failure(lambda: refusing.key_set(by_name))
    with pytest.raises(InvalidJwt, match="not allowed"):
        refusing.key_set(idp.jwks_uri)  # the 127.0.0.1 literal
    assert idp.fetches["/jwks"] == 0
    allow_listed = make_fetcher(allow_loopback=False, allowed_networks=("127.0.0.0/8", "::1/128"))
    assert await loaded(lambda: allow_listed.key_set(by_name))


async def test_every_connection_is_checked_against_the_policy(idp, make_fetcher):
    # The last line: even a URL that got past check_url and the resolver (an IP literal aiohttp
    # never resolves) is refused at the socket, before it connects.
    from inboundlib.jose.fetch import _FetchFailed

    fetcher = make_fetcher(allow_loopback=False)
    with pytest.raises(_FetchFailed) as caught:
        await fetcher._fetch("jwks", idp.jwks_uri, 60)
    assert caught.value.outcome == "refused" and idp.fetches["/jwks"] == 0


async def test_proxies_from_the_environment_are_not_used(idp, make_fetcher, monkeypatch):
    # A proxy would see (and could answer) every fetch: trust_env stays off.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # discard: a proxy there fails every fetch
    fetcher = make_fetcher()
    assert await loaded(lambda: fetcher.key_set(idp.jwks_uri))


async def test_an_unknown_kid_refetch_keeps_the_providers_cache_lifespan(idp, make_fetcher):
    fetcher = make_fetcher()  # the fetcher's own maximum: a day
    idp.max_age = 86400
    source = DiscoveredKeys(fetcher, idp.discovery_url, idp.issuer, max_cache=100)
    validator, policy = JwtValidator(), JwtPolicy(issuers=(idp.issuer,), audiences=(AUD,))
    await loaded(source.keys)
    fetcher.clock.now += 61
    idp.rotate()
    token = idp.token("alice", AUD)
    await eventually(lambda: validator.validate(token, policy, source), ignore=(KeysPending,))
    assert idp.fetches["/jwks"] == 2
    fetcher.clock.now += 80  # past 3/4 of the provider's 100 s (not of a day): refreshed ahead
    source.keys()
    await eventually(lambda: idp.fetches["/jwks"], until=lambda n: n == 3)


async def test_a_cache_lifespan_of_zero_still_caches_for_the_minimum(idp, make_fetcher):
    # Not "refetch on every read": the keys would never be served and the IdP hammered.
    fetcher = make_fetcher(min_cache=60)
    source = RemoteKeys(fetcher, idp.jwks_uri, max_cache=0)
    key_set = await loaded(source.keys)
    fetcher.clock.now += 30  # within the 60 s floor
    for _ in range(10):
        assert source.keys() is key_set
    assert idp.fetches["/jwks"] == 1


async def test_http_is_refused(idp, make_fetcher):
    fetcher = make_fetcher()
    with pytest.raises(InvalidJwt, match="only https"):
        fetcher.key_set(f"http://127.0.0.1:{idp.port}/jwks")
    with pytest.raises(InvalidJwt, match="only https"):
        fetcher.refetch_for_unknown_kid(f"http://127.0.0.1:{idp.port}/jwks")
    assert idp.fetches["/jwks"] == 0


async def test_the_size_limit_is_enforced_while_reading(idp, make_fetcher):
    idp.large_bytes = 300 * 1024
    small = make_fetcher(max_bytes=256 * 1024)
    assert "larger than" in await failure(lambda: small.key_set(idp.url("/large")))
    large = make_fetcher(max_bytes=1024 * 1024)
    assert len(await loaded(lambda: large.key_set(idp.url("/large")))) == 0


async def test_redirects_are_not_followed(idp, make_fetcher):
    fetcher = make_fetcher()
    assert "redirect not followed" in await failure(lambda: fetcher.key_set(idp.url("/redirect")))
    assert idp.fetches["/redirect"] == 1 and idp.fetches["/jwks"] == 0


async def test_only_json_is_accepted(idp, make_fetcher):
    fetcher = make_fetcher()
    assert "not application/json" in await failure(lambda: fetcher.key_set(idp.url("/html")))


async def test_a_slow_idp_times_out(idp, make_fetcher):
    fetcher = make_fetcher(timeout=0.3)
    idp.slow = 2.0
    assert "no answer within" in await failure(lambda: fetcher.key_set(idp.jwks_uri))


async def test_a_certificate_from_another_ca_is_refused(idp, make_fetcher, tmp_path):
    from inboundlib import pki

    other = pki.DevCA(tmp_path / "other")
    fetcher = make_fetcher(ca_file=str(other.ca_file))
    assert "TLS" in await failure(lambda: fetcher.key_set(idp.jwks_uri))


async def test_warm_prefetches_without_raising(idp, make_fetcher):
    fetcher = make_fetcher()
    fetcher.warm(idp.discovery_url, "discovery")
    fetcher.warm("http://example.com/jwks", "jwks")  # refused by policy: logged, no exception
    await eventually(lambda: idp.fetches["/jwks"], until=lambda n: n == 1)  # discovery brings its jwks_uri
    assert fetcher.key_set(idp.jwks_uri)


async def test_tokens_minted_over_http_validate_against_the_fetched_keys(idp, make_fetcher):
    context = ssl.create_default_context(cafile=idp.ca_file)
    async with aiohttp.ClientSession() as session:
        form = {"sub": "alice", "aud": AUD, "alg": "ES256", "claims": '{"email": "alice@example.com"}'}
        async with session.post(f"{idp.issuer}/token", data=form, ssl=context) as response:
            assert response.status == 200
            minted = await response.json()
        async with session.post(f"{idp.issuer}/token", data={"aud": AUD}, ssl=context) as response:
            assert response.status == 400
        overriding = {**form, "claims": '{"sub": "bob", "lifetime": 5}'}  # claims override, never crash
        async with session.post(f"{idp.issuer}/token", data=overriding, ssl=context) as response:
            assert response.status == 200
            assert unverified_claims((await response.json())["token"])["sub"] == "bob"
    source = RemoteKeys(make_fetcher(), idp.jwks_uri)
    policy = JwtPolicy(issuers=(idp.issuer,), audiences=(AUD,))
    claims = await eventually(lambda: JwtValidator().validate(minted["token"], policy, source), ignore=(KeysPending,))
    assert (claims["sub"], claims["email"], minted["kid"]) == ("alice", "alice@example.com", idp.keys["ES256"].kid)

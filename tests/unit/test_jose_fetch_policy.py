"""The fetcher's settings (INBOUND_FEDERATION_*) and its address rule."""
from __future__ import annotations

import ipaddress

import pytest

from inboundlib.config import ConfigError, Env
from inboundlib.jose.fetch import FetchPolicy, _freshness


def test_defaults_refuse_loopback_and_private_ranges():
    policy = FetchPolicy.from_env(Env({}))
    assert policy == FetchPolicy()
    assert (policy.timeout, policy.max_bytes, policy.max_cache, policy.refetch_interval) == (5.0, 262144, 86400, 60.0)
    for address in ("127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254", "fe80::1",
                    "fc00::1", "224.0.0.1", "0.0.0.0", "100.64.0.1", "::ffff:10.0.0.1", "240.0.0.1", "junk"):
        assert not policy.address_allowed(address), address
    assert policy.address_allowed("93.184.215.14") and policy.address_allowed("2606:2800:21f:cb07:6820:80da:af6b:8b2c")


def test_settings_are_read(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    policy = FetchPolicy.from_env(Env({
        "INBOUND_FEDERATION_ALLOW_LOOPBACK": "true", "INBOUND_FEDERATION_ALLOWED_NETWORKS": "10.20.0.0/16, fd00::/8",
        "INBOUND_FEDERATION_CA_FILE": str(ca), "INBOUND_FEDERATION_FETCH_TIMEOUT": "2.5",
        "INBOUND_FEDERATION_MAX_DOCUMENT_BYTES": "4096", "INBOUND_FEDERATION_MAX_CACHE": "600",
        "INBOUND_FEDERATION_REFETCH_INTERVAL": "1"}))
    assert policy.allowed_networks == (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00::/8"))
    assert (policy.allow_loopback, policy.ca_file, policy.timeout, policy.max_bytes, policy.max_cache,
            policy.refetch_interval) == (True, str(ca), 2.5, 4096, 600, 1.0)
    assert policy.address_allowed("127.0.0.1") and policy.address_allowed("10.20.3.4")
    assert policy.address_allowed("fd12::1") and not policy.address_allowed("10.21.0.1")


@pytest.mark.parametrize("name, value", [
    ("INBOUND_FEDERATION_ALLOWED_NETWORKS", "10.0.0.0/33"), ("INBOUND_FEDERATION_ALLOWED_NETWORKS", "nope"),
    ("INBOUND_FEDERATION_CA_FILE", "/nonexistent/ca.pem"), ("INBOUND_FEDERATION_ALLOW_LOOPBACK", "maybe"),
    ("INBOUND_FEDERATION_FETCH_TIMEOUT", "0"), ("INBOUND_FEDERATION_MAX_DOCUMENT_BYTES", "10"),
])
def test_bad_settings_stop_the_service(name, value):
    with pytest.raises(ConfigError, match=name):
        FetchPolicy.from_env(Env({name: value}))


@pytest.mark.parametrize("headers, expected", [
    (["public, max-age=120"], 120), (["max-age=5"], 60), (["max-age=999999"], 86400),
    (["no-store"], 60), (["private", "no-cache"], 60), ([], 3600), (["max-age=abc"], 3600),
    (["max-age=99999999999"], 86400), (["max-age=" + "9" * 5000], 86400), (["max-age=-5"], 3600),
])
def test_freshness_is_max_age_clamped(headers, expected):
    assert _freshness(headers, 60, 86400) == expected


def test_ipv6_forms_reaching_private_ipv4_or_site_local_are_refused():
    policy = FetchPolicy()
    for address in ("2002:a9fe:a9fe::1", "2002:7f00:1::1", "2002:0a00:0001::", "fec0::1", "::ffff:169.254.169.254"):
        assert not policy.address_allowed(address), address
    assert policy.address_allowed("2002:5db8:d70e::1")  # 6to4 of a public address
    assert FetchPolicy(allowed_networks=("169.254.0.0/16",)).address_allowed("2002:a9fe:a9fe::1")


@pytest.mark.parametrize("headers, minimum, maximum, expected", [
    (["max-age=300"], 60, 0, 60), (["max-age=300"], 60, -5, 60), (["no-store"], 0, 100, 0),
])
def test_the_minimum_freshness_wins_over_a_lower_maximum(headers, minimum, maximum, expected):
    # A provider's cache lifespan of 0 must not mean "refetch on every read".
    assert _freshness(headers, minimum, maximum) == expected


async def test_the_resolver_refuses_a_host_when_any_of_its_addresses_is_refused():
    from inboundlib.jose.fetch import AddressRefused, _GuardedResolver

    class Inner:
        def __init__(self, *addresses):
            self.addresses = addresses

        async def resolve(self, host, port, family):
            return [{"hostname": host, "host": a, "port": port, "family": 0, "proto": 0, "flags": 0}
                    for a in self.addresses]

    resolver = _GuardedResolver(FetchPolicy())
    resolver._inner = Inner("93.184.215.14", "10.0.0.1")  # rebinding: one public, one private
    with pytest.raises(AddressRefused):
        await resolver.resolve("idp.example", 443)
    resolver._inner = Inner("93.184.215.14")
    assert [r["host"] for r in await resolver.resolve("idp.example", 443)] == ["93.184.215.14"]


@pytest.mark.parametrize("url", ["https://user:pw@idp.example/jwks", "https://user@idp.example/jwks",
                                 "http://idp.example/jwks", "https:///jwks", "https://idp.example:99999/"])
def test_urls_the_fetcher_never_requests(url):
    from inboundlib.jose.fetch import Fetcher
    from inboundlib.jose.validator import InvalidJwt

    with pytest.raises(InvalidJwt):
        Fetcher(FetchPolicy()).check_url(url)


def test_the_number_of_cached_urls_is_bounded(monkeypatch):
    from inboundlib.jose import fetch

    monkeypatch.setattr(fetch, "MAX_URLS", 3)
    fetcher = fetch.Fetcher(FetchPolicy())
    for i in range(10):
        fetcher._state("jwks", f"https://idp{i}.example/jwks", None)
    assert [url for _kind, url in fetcher._states] == [f"https://idp{i}.example/jwks" for i in (7, 8, 9)]


def test_cache_age_host_labels_are_bounded(monkeypatch):
    # An IdP's discovery document may name a new jwks_uri host at every refresh.
    from prometheus_client import REGISTRY

    from inboundlib.jose import fetch
    from inboundlib.jose.keys import KeySet

    monkeypatch.setattr(fetch, "MAX_HOST_LABELS", 2)
    monkeypatch.setattr(fetch, "_host_labels", set())
    fetcher = fetch.Fetcher(FetchPolicy(), clock=lambda: 1000.0)
    for i in range(5):
        url = f"https://label{i}.example/jwks"
        fetcher._state("jwks", url, None).entry = fetch._Entry(KeySet(), 990.0, 100.0, 100.0)
        fetcher.key_set(url)
    def age(host):
        return REGISTRY.get_sample_value("inbound_federation_cache_age_seconds", {"kind": "jwks", "host": host})
    assert age("label0.example") == 10.0 and age("label1.example") == 10.0 and age("other") == 10.0
    assert age("label2.example") is None and age("label4.example") is None

"""Shared fixtures: the real system (Postgres, NATS, every service) started through
the same code as `make run`.

- `stack`: the system the session shares, in the separate-process layout. In a
  module marked `both_modes` it is parametrised: each test runs against the
  separate processes and against the one-process mode (`Stack(single=True)`,
  services/all_in_one). Both session stacks start lazily, on first use; a test
  that needs separate processes (stopping one service, replicas) is marked
  `separate_processes` and runs on the separate stack only.
- `private_stack(name)`: a system of a test module's own (its own NATS and a fresh
  database), for tests that change what they run on (stop a service, rotate keys,
  break NATS): the session's stacks are left exactly as other tests expect them,
  so the order in which files run does not matter.

DATABASE_URL, when set, is used instead of a private Postgres; the suite then
works in fresh databases of its own so it never touches yours. NATS_URL is not
used: every stack runs a private NATS with the users, subject permissions and
TLS of a deployment (services/nats_access.py), so the permissions are what is
tested, whatever NATS the machine has.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from services.devstack import Stack

MODES = ("separate", "single")
BASE_ENV = {"INBOUND_KEY_ACTIVATION_DELAY": "0", "INBOUND_CLIENT_CACHE_TTL": "60"}


def pytest_configure(config):
    config.addinivalue_line("markers", "both_modes: run each test of the module against the separate processes "
                                       "and the one-process mode")
    config.addinivalue_line("markers", "separate_processes: needs the separate-process layout (stops one service, "
                                       "starts replicas); in a both_modes module, runs on that stack only")


def pytest_generate_tests(metafunc):
    if "stack" not in metafunc.fixturenames or metafunc.definition.get_closest_marker("both_modes") is None:
        return
    modes = ["separate"] if metafunc.definition.get_closest_marker("separate_processes") else list(MODES)
    metafunc.parametrize("stack", modes, indirect=True, scope="session")


def _fresh_database(url: str) -> str:
    """Create an empty database beside the one in `url` and return its URL."""
    import asyncio

    import asyncpg

    name = "inbound_test_" + uuid.uuid4().hex[:12]

    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    # In a thread: this may be called while an event loop runs (from an async test or fixture).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@contextlib.contextmanager
def _state_dir(name: str):
    """A stack's state folder, outside pytest's own: pytest makes /tmp/pytest-of-<user> private
    (0700) again whenever a session starts, which would lock a private Postgres (running as
    user `postgres`) out of its data folder while another session of the same user starts."""
    path = Path(tempfile.mkdtemp(prefix=f"inbound-test-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def separate_stack():
    """Every service as its own process; it owns the session's Postgres (or DATABASE_URL's server)."""
    database_url = os.environ.get("DATABASE_URL")
    with _state_dir("stack") as state:
        s = Stack(state, fixed_ports=False, echo=False,
                  database_url=_fresh_database(database_url) if database_url else "",
                  nats_url="", extra_env=dict(BASE_ENV))
        try:
            s.start()
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="session")
def fresh_database(separate_stack):
    """Make an empty database on the suite's Postgres, for a system of a test's own."""
    return lambda: _fresh_database(separate_stack.database_url)


@pytest.fixture(scope="session")
def private_stack(fresh_database):
    """`with private_stack("name", single=False, extra_env={...}) as s:` a system of one's own:
    its own NATS (events and the audit consumer never mix with another system's), a fresh
    database on the suite's Postgres (`own_postgres=True`: a Postgres of its own too)."""

    @contextlib.contextmanager
    def make(name: str, *, single: bool = False, own_postgres: bool = False, extra_env: dict | None = None):
        with _state_dir(name) as state:
            s = Stack(state, fixed_ports=False, echo=False,
                      database_url="" if own_postgres else fresh_database(), nats_url="",
                      extra_env={**BASE_ENV, **(extra_env or {})}, single=single)
            try:
                s.start()
                yield s
            finally:
                s.stop()

    return make


@pytest.fixture(scope="session")
def single_stack(private_stack):
    """Every service in one process (services/all_in_one), with its own NATS and database."""
    with private_stack("single-stack", single=True) as s:
        yield s


@pytest.fixture(scope="session")
def debug_stack(private_stack):
    """A system of its own with tests.support.DEBUG_ENV (DEBUG logs, short lock and grace
    settings), shared by the modules that need it: one start, not one each."""
    from tests.support import DEBUG_ENV

    with private_stack("debug", extra_env=DEBUG_ENV) as s:
        yield s


@pytest.fixture(scope="session")
def stack(request):
    """The session's system: the separate processes, or (parametrised in `both_modes`
    modules) each mode in turn."""
    mode = getattr(request, "param", "separate")
    return request.getfixturevalue(f"{mode}_stack")


@pytest.fixture(scope="session")
async def registry(stack):
    """The registry as the operator (inboundctl's identity)."""
    from services.client_registry.client import RegistryClient
    from tests.support import OPERATOR

    channel = stack.channel("client_registry", caller=OPERATOR)
    yield RegistryClient(channel)
    await channel.close()


@pytest.fixture
async def make_client(registry):
    """Register a client and return (record, secret). `auth_method`: its
    token_endpoint_auth_method (default: client_secret_basic, or none for a public client)."""
    from services.client_registry.api import ClientSpec

    async def make(auth_method: str | None = None, **kwargs):
        if auth_method is not None:
            kwargs["token_endpoint_auth_method"] = auth_method
        kwargs.setdefault("name", "test-" + secrets.token_hex(4))
        kwargs.setdefault("grant_types", ["client_credentials"])
        kwargs.setdefault("scopes", ["api.read", "api.write"])
        # A client may only be given catalog scopes: add the missing ones first, as an operator would.
        from tests.support import ensure_scopes

        await ensure_scopes(registry, kwargs["scopes"])
        return await registry.create_client(ClientSpec(**kwargs))

    return make


@pytest.fixture(scope="session")
def http(stack):
    import httpx

    with httpx.Client(base_url=stack.edge_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
async def issuer(stack):
    """token_issuer, each RPC called as the caller meant to make it (support.IssuerAs)."""
    from tests.support import IssuerAs

    issuer = IssuerAs(stack)
    yield issuer
    await issuer.close()


@pytest.fixture(scope="module")
async def idp(stack):
    """The demo identity provider (services/demo_idp.py), one per test module: HTTPS on loopback
    with a certificate of the stack's CA, which every stack's fetching services trust
    (services/devstack.py sets INBOUND_FEDERATION_CA_FILE and ..._ALLOW_LOOPBACK), so no stack
    of its own is needed. Its issuer is its own port: a module's providers and integrations
    trusting it name no other module's."""
    from services.demo_idp import DemoIdp

    async with DemoIdp(stack.ca) as running:
        yield running


# --- a real browser (tests/browser, tests/conformance): Debian's Chromium driven by Playwright ----------

@pytest.fixture(scope="session")
async def chromium():
    """One Chromium for the session (tests/browser/flow.py). Without /usr/bin/chromium every
    test that needs it fails, saying how to install it: a browser test never passes by skipping."""
    from playwright.async_api import async_playwright

    from tests.browser.flow import CHROMIUM, CHROMIUM_ARGS, missing_chromium_message

    if not CHROMIUM.exists():
        pytest.fail(missing_chromium_message())
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def browser_page(chromium):
    """A page in a fresh browser context of the test's own (no cookies of another test), desktop-sized."""
    from tests.browser.flow import SIZES

    context = await chromium.new_context(viewport=SIZES["desktop"])
    context.set_default_timeout(30_000)
    page = await context.new_page()
    yield page
    await context.close()


@pytest.fixture(scope="session")
def client_callback():
    """The page behind the browser tests' redirect URIs (loopback, tests/browser/flow.py)."""
    from tests.browser.flow import CallbackServer

    server = CallbackServer()
    yield server
    server.close()


def pytest_collection_modifyitems(config, items):
    """The SLO set (`@pytest.mark.slo`: timing objectives) runs only when asked for
    (`make slo`, i.e. `-m slo`): a loaded machine is not a broken system."""
    if "slo" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("slo") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("slo")])
        items[:] = kept

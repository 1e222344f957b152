"""The Kubernetes manifests, run: each StatefulSet of deploy/overlays/local rendered by
`kubectl kustomize`, started as a local process with its own command and env (no
container daemon here), its Secret volumes as folders holding what deploy/README.md
says they hold, its ConfigMap and Secret references resolved, `$(VAR)` expanded as
Kubernetes does. Only what one host forces changes: every fixed port is mapped to a
free one, the headless Services' names to 127.0.0.1, the metrics port is off, and
the Postgres URLs are a private server's, without TLS.

Every process must pass the probes its manifest declares (the plaintext health port,
the edge's HTTPS /readyz), then a token is issued over HTTPS with HSTS and its audit
event reaches the audit log: mutual TLS with each service's certificate, each
service's own NATS user over TLS, both Postgres roles, the KEK file and the spool
directory all as the manifests wire them."""
from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inboundlib import grpcx, identity
from services.audit.client import AuditClient
from services.client_registry.api import ClientSpec
from services.client_registry.client import RegistryClient
from services.devstack import ROOT, Stack, free_port
from services.modules import TABLE
from tests.contract.test_deploy_manifests import _kubectl
from tests.support import OPERATOR, ensure_scopes, eventually

pytestmark = [pytest.mark.separate_processes, pytest.mark.slow]
# The module table's dependency order (jwt-bearer before the grants that ask it about client
# assertions; token-issuer reaches jwt-bearer and third-party-token later, at first use).
START_ORDER = ["client-registry", "audit", "token-issuer", "jwt-bearer", "client-credentials", "password",
               "refresh-token", "authorization-code", "third-party-token", "edge"]


def _rendered() -> list[dict]:
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found: cannot render the manifests")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "overlays" / "local")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _secret_contents(stack: Stack, name: str, edge_https) -> dict[str, dict[str, Path]]:
    """What the Secrets deploy/README.md describes hold, for service `name` (k8s name)."""
    module = name.replace("-", "_")
    cert = stack.certificate(identity.service(module))
    return {f"{name}-tls": {"tls.crt": cert.cert, "tls.key": cert.key, "ca.crt": cert.ca},
            f"{name}-nats": {"password": stack.dev_nats.password_file(stack.installation, module),
                             "ca.crt": stack.ca.ca_file},
            f"{name}-postgres": {"ca.crt": stack.ca.ca_file},
            # Every service that holds the key-encryption keys mounts a Secret of its own.
            f"{name}-kek": {"keys": stack.kek_file()},
            "edge-https": {"tls.crt": edge_https.cert, "tls.key": edge_https.key}}


def _process_env(stack, workload, pods: Path, config, secret_values, ports, edge_https) -> dict[str, str]:
    name = workload["metadata"]["name"]
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secrets = _secret_contents(stack, name, edge_https)
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        local = pods / name / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret:
            wanted = {i["key"] for i in secret.get("items", [])} or None
            for key, source in secrets[secret["secretName"]].items():
                if wanted is None or key in wanted:
                    shutil.copy(source, local / key)
        mounts[mount["mountPath"]] = local
    env = {k: v for k, v in stack.service_env(TABLE[name.replace("-", "_")].name).items()
           if not k.startswith("INBOUND_") and k not in ("DATABASE_URL", "NATS_URL")}
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        if "configMapKeyRef" in source:
            value = config[source["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in source:
            value = secret_values[source["secretKeyRef"]["key"]]
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        for path, local in mounts.items():
            if value.startswith(path + "/") or value == path:
                value = str(local) + value[len(path):]
        value = re.sub(r"dns:///[a-z-]+:(\d+)", lambda m: f"dns:///127.0.0.1:{ports[int(m.group(1))]}", value)
        if item["name"] in {p.env for m in TABLE.values() for p in m.ports}:
            value = str(ports[int(value)])
        env[item["name"]] = value
    env["INBOUND_METRICS_PORT"] = "0"  # 9090 in every pod; one host here
    if "INBOUND_HEALTH_PORT" in env:
        env["INBOUND_HEALTH_PORT"] = str(free_port())
    return env


def _ready(name: str, env: dict[str, str], edge_url: str, ca: Path) -> bool:
    """The manifest's readiness probe: gRPC health on the plaintext health port, or the edge's HTTPS /readyz."""
    if name == "edge":
        try:
            return httpx.get(f"{edge_url}/readyz", verify=ssl.create_default_context(cafile=str(ca)),
                             timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    with grpc.insecure_channel(f"127.0.0.1:{env['INBOUND_HEALTH_PORT']}") as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status \
                == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


@pytest.fixture
def infra(fresh_database, tmp_path):
    stack = Stack(tmp_path / "stack", fixed_ports=False, echo=False, database_url=fresh_database(), nats_url="")
    stack.start_infra()
    try:
        yield stack
    finally:
        stack.stop()


async def test_the_manifests_run_and_issue_an_audited_token_over_https(infra, tmp_path):
    docs = _rendered()
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StatefulSet"}
    assert set(workloads) == set(START_ORDER)
    ports = {p.number: free_port() for m in TABLE.values() for p in m.ports}
    edge_url = f"https://localhost:{ports[TABLE['edge'].main_port.number]}"
    config = dict(next(d for d in docs if d["kind"] == "ConfigMap")["data"],
                  **{"nats-url": infra.nats_url, "issuer": edge_url})
    secret_values = {"database-url": infra.db_roles.runtime_url,
                     "migration-database-url": infra.db_roles.migration_url}
    edge_https = infra.ca.issue("edge-https", dns_names=("localhost",), ips=("127.0.0.1",), client=False)
    procs: dict[str, tuple[subprocess.Popen, dict]] = {}
    try:
        for name in START_ORDER:
            env = _process_env(infra, workloads[name], tmp_path / "pods", config, secret_values, ports, edge_https)
            command = workloads[name]["spec"]["template"]["spec"]["containers"][0]["command"]
            assert command[0] == "python"
            log = open(tmp_path / f"{name}.log", "w")
            procs[name] = (subprocess.Popen([sys.executable, *command[1:]], cwd=ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT), env)
        for name, (proc, env) in procs.items():
            def up(name=name, proc=proc, env=env) -> bool:
                return proc.poll() is not None or _ready(name, env, edge_url, infra.ca.ca_file)

            await eventually(lambda: asyncio.to_thread(up), timeout=90, message=f"{name} ready")
            assert proc.poll() is None, f"{name} exited:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"

        operator = infra.tls_config(OPERATOR)
        channel = grpcx.channel(f"127.0.0.1:{ports[TABLE['client_registry'].main_port.number]}", operator,
                                server_name="client-registry")
        await ensure_scopes(RegistryClient(channel), ["api.read"])
        client, secret = await RegistryClient(channel).create_client(ClientSpec(
            name="replayed", grant_types=["client_credentials"], scopes=["api.read"]))
        await channel.close()
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(infra.ca.ca_file)),
                                     timeout=10) as http:
            token = await http.post(f"{edge_url}/oauth/token", data={"grant_type": "client_credentials"},
                                    auth=(client.client_id, secret))
        assert token.status_code == 200, token.text
        assert token.headers.get("strict-transport-security", "").startswith("max-age=")

        audit = grpcx.channel(f"127.0.0.1:{ports[TABLE['audit'].main_port.number]}", operator, server_name="audit")
        try:
            page = await eventually(lambda: AuditClient(audit).tail(limit=100),
                                    until=lambda p: any(r.client_id == client.client_id and r.type == "token_issued"
                                                        for r in p.records),
                                    message="the token's audit row")
        finally:
            await audit.close()
        issued = next(r for r in page.records if r.client_id == client.client_id and r.type == "token_issued")
        assert issued.source == "token_issuer"
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

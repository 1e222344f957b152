"""What every service process does the same way: config fail-fast, JSON logs
with a request id carried across gRPC hops, health, metrics, graceful SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from services.devstack import ROOT, free_port
from tests.support import OPERATOR, eventually_sync


def _run_with_env(module: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("INBOUND_")}
    # Addresses are checked as the service starts, after its certificate files (no TLS is tested here).
    full.update({"INBOUND_GRPC_TLS": "plaintext", **env})
    return subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("module,env,names", [
    ("services.token_issuer", {"INBOUND_KEY_ENCRYPTION_KEY": "too-short"}, "INBOUND_KEY_ENCRYPTION_KEY"),
    ("services.token_issuer", {}, "INBOUND_KEY_ENCRYPTION_KEY"),
    ("services.token_issuer", {"INBOUND_KEY_ENCRYPTION_KEYS_FILE": "/nonexistent/keks"},
     "INBOUND_KEY_ENCRYPTION_KEYS_FILE"),
    ("services.client_registry", {"DATABASE_URL": "postgresql://x/y", "INBOUND_GRPC_PORT": "eighty"},
     "INBOUND_GRPC_PORT"),
    ("services.client_registry", {}, "DATABASE_URL"),
    ("services.client_credentials", {"INBOUND_REGISTRY_ADDR": "not an address"}, "INBOUND_REGISTRY_ADDR"),
    ("services.edge", {"INBOUND_ISSUER": "ftp://nope"}, "INBOUND_ISSUER"),
    ("services.edge", {"INBOUND_GRANT_ADDRS": "client_credentials"}, "INBOUND_GRANT_ADDRS"),
])
def test_bad_config_fails_fast_with_a_clear_message(module, env, names):
    result = _run_with_env(module, env)
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert names in result.stderr
    assert "Traceback" not in result.stderr


def _json_lines(stack, service: str) -> list[dict]:
    entries = []
    for line in stack.services[service].lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pass
    return entries


async def test_logs_are_json_and_the_request_id_crosses_grpc_hops(stack, make_client):
    client, secret = await make_client()
    request_id = "trace-" + str(time.time_ns())
    # A refused request is logged (at INFO) by the grant service that refused it.
    reply = httpx.post(stack.edge_url + "/oauth/token", data={"grant_type": "client_credentials", "scope": "nope"},
                       auth=(client.client_id, secret), headers={"X-Request-Id": request_id})
    assert reply.status_code == 400
    assert reply.headers["x-request-id"] == request_id
    hits = eventually_sync(lambda: [e for e in _json_lines(stack, "client_credentials")
                                    if e.get("request_id") == request_id],
                           message="the grant service's log line with the request id")
    assert hits[0]["msg"] == "token request denied"
    assert hits[0]["error"] == "invalid_scope"
    assert hits[0]["service"] == "client_credentials"
    for name in stack.services:
        lines = [line for line in stack.services[name].lines if line.strip()]
        assert lines, f"{name} logged nothing"
        for line in lines:
            json.loads(line)  # every line is JSON


def test_an_unsafe_request_id_is_replaced(stack):
    reply = httpx.post(stack.edge_url + "/oauth/token", data={"grant_type": "client_credentials"},
                       headers={"X-Request-Id": "bad id\twith spaces"})
    assert reply.headers["x-request-id"] != "bad id\twith spaces"
    assert len(reply.headers["x-request-id"]) == 32


async def test_grpc_health_and_prometheus_metrics(stack):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for name in ("client_registry", "token_issuer", "client_credentials"):
        channel = stack.channel(name, caller=OPERATOR)
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await channel.close()
    # Each process's plaintext health port (INBOUND_HEALTH_PORT, for kubelet) answers without a certificate.
    for process in [p for p in stack.services if p in stack.health_ports]:  # replicas have none
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.health_ports[process]}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, process
    metrics = httpx.get(stack.metrics_url("edge")).text
    assert "inbound_http_request_seconds" in metrics


def test_sigterm_stops_a_service_gracefully(stack):
    """A second client_credentials replica, with metrics on: it serves, then exits 0 on SIGTERM."""
    port, metrics_port = free_port(), free_port()
    replica = stack.start_service("client_credentials", port=port, key="cc-replica",
                                  extra_env={"INBOUND_METRICS_PORT": str(metrics_port)})
    assert "inbound_rpc_server_seconds" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    replica.proc.send_signal(signal.SIGTERM)
    assert replica.proc.wait(15) == 0
    stack.services.pop("cc-replica", None)
    eventually_sync(lambda: any('"stopped"' in line for line in replica.lines),
                    message="the replica's last log line (its output is read by another thread)")


async def test_an_unbatched_call_carries_the_request_id_as_metadata(stack, registry):
    from inboundlib.logs import request_id_var
    from services.client_registry.api import ClientSpec

    request_id = "admin-" + str(time.time_ns())
    token = request_id_var.set(request_id)
    try:
        client, _ = await registry.create_client(ClientSpec(name="traced"))
    finally:
        request_id_var.reset(token)
    hits = eventually_sync(lambda: [e for e in _json_lines(stack, "client_registry")
                                    if e.get("request_id") == request_id],
                           message="the registry's log line with the request id")
    assert hits[0]["msg"] == "client created" and hits[0]["client_id"] == client.client_id

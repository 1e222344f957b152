"""NKEY authentication (INBOUND_NATS_CREDS_FILE holding a user's seed), against a real
nats-server whose user is that NKEY with a service's permissions (services/nats_access.py).
A creds file with a user JWT goes to nats-py the same way (`user_credentials`)."""
from __future__ import annotations

import asyncio
import json
import os

import nats
import nkeys
import pytest

from inbound.events.v1 import events_pb2
from inboundlib.config import Env
from inboundlib.events import KEYS_ROTATED, EventBus, Installation, NatsSettings
from inboundlib.localservers import PrivateNats, free_port
from services import nats_access
from tests.support import eventually


def _user_seed(path) -> str:
    """A new NKEY user: writes its seed to `path` (0600), returns its public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path.write_bytes(seed)
    path.chmod(0o600)
    return nkeys.from_seed(bytearray(seed)).public_key.decode()


async def test_a_service_connects_with_an_nkey_seed_and_keeps_its_permissions(tmp_path):
    installation = Installation()
    public_key = _user_seed(tmp_path / "token_issuer.nk")
    _user_seed(tmp_path / "stranger.nk")  # a key the server does not know
    permissions = nats_access.server_permissions(installation, "token_issuer")

    server = PrivateNats(tmp_path / "nats", free_port(), authorization=(
        "authorization {\n  users = [\n    {nkey: %s, permissions: %s}\n  ]\n}\n"
        % (json.dumps(public_key), json.dumps(permissions))))
    server.start()
    try:
        settings = NatsSettings.from_env(Env({"NATS_URL": server.url,
                                              "INBOUND_NATS_CREDS_FILE": str(tmp_path / "token_issuer.nk")}))
        bus = EventBus(settings.for_identity("token_issuer"), "token_issuer")
        seen: list[str] = []

        async def collect(event: events_pb2.Event) -> None:
            seen.append(event.keys_rotated.kid)

        await bus.subscribe(KEYS_ROTATED, collect)
        await bus.start()
        try:
            await asyncio.wait_for(bus.connected.wait(), 10)
            bus.publish(KEYS_ROTATED, events_pb2.Event(keys_rotated=events_pb2.KeysRotated(kid="k1")))
            await bus.flush(5)
            assert bus.pending == 0  # stored by JetStream: the publish was allowed
            assert await eventually(lambda: seen, message="the event back through the subscription") == ["k1"]
        finally:
            await bus.close()
        stranger = NatsSettings(url=server.url, creds_file=str(tmp_path / "stranger.nk"))
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(**stranger.connect_options(), allow_reconnect=False, connect_timeout=5)
    finally:
        server.stop()

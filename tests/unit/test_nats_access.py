"""The NATS permission table (services/nats_access.py): every service of the module table
has a NATS identity, and the generated server config is one nats-server accepts."""
from __future__ import annotations

import subprocess

from inboundlib.events import ACCESS_DENIED, KEYS_ROTATED, TOKEN_ISSUED, TOKEN_REVOKED, Installation
from inboundlib.localservers import nats_server_binary
from services import nats_access
from services.modules import ALL_IN_ONE, NAMES


def test_every_service_of_the_table_has_a_nats_identity():
    for name in NAMES:
        nats_access.permissions(name)  # a new row without permissions fails here
    assert set(nats_access.identities()) == {*NAMES, ALL_IN_ONE}


def test_all_in_one_may_do_what_each_service_may():
    union = nats_access.permissions(ALL_IN_ONE)
    for name in NAMES:
        rules = nats_access.permissions(name)
        assert rules.publish <= union.publish and rules.subscribe <= union.subscribe
    assert union.consumes_audit


def test_publishers_of_the_subjects_that_change_state_elsewhere():
    publishers = {subject: {n for n in NAMES if subject in nats_access.permissions(n).publish}
                  for subject in (TOKEN_REVOKED, KEYS_ROTATED, TOKEN_ISSUED)}
    assert publishers == {TOKEN_REVOKED: {"token_issuer", "client_registry"}, KEYS_ROTATED: {"token_issuer"},
                          TOKEN_ISSUED: {"token_issuer"}}
    assert nats_access.permissions("audit").publish == {ACCESS_DENIED}  # only the refusals of its gRPC server
    assert ACCESS_DENIED not in nats_access.permissions("edge").publish  # HTTP only: it has no gRPC gate


def test_names_carry_the_installation():
    server = nats_access.server_permissions(Installation("beta"), "audit")
    assert all("BETA_EVENTS" in s or s.startswith("beta.") for s in server["publish"]["allow"])
    assert server["subscribe"]["allow"] == ["_INBOX.beta.audit.>"]


def test_the_generated_config_is_valid_for_nats_server(tmp_path):
    for literal in (True, False):
        users = [(Installation(name), identity, "secret" if literal else "INBOUND_NATS_PASSWORD_X")
                 for name in ("inbound", "beta") for identity in nats_access.identities()]
        config = tmp_path / "nats.conf"
        config.write_text("listen: 127.0.0.1:0\n" + nats_access.authorization_users(users, literal=literal))
        checked = subprocess.run([nats_server_binary(), "-c", str(config), "-t"], capture_output=True, text=True,
                                 env={"INBOUND_NATS_PASSWORD_X": "from-env"}, timeout=30)
        assert checked.returncode == 0, checked.stderr + checked.stdout

"""The NATS permission table (services/nats_access.py): every service of the module table
has a NATS identity, and the generated server config is one nats-server accepts."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from inboundlib import events
from inboundlib.events import ACCESS_DENIED, KEYS_ROTATED, TOKEN_ISSUED, TOKEN_REVOKED, Installation
from inboundlib.hosting import HTTP
from inboundlib.localservers import nats_server_binary
from services import nats_access
from services.modules import ALL_IN_ONE, NAMES, TABLE


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


def test_only_the_registry_reports_users_locks_and_refresh_token_reuse():
    """The audit trail's record of a user's changes, of a lock and its end, and of a reused
    refresh token is believed because only client_registry may send it: a grant service
    (which sees passwords and refresh tokens) could otherwise forge a lock's end or a reuse."""
    for subject in (events.USER_CHANGED, events.USER_LOCKED, events.USER_LOCK_ENDED, events.REFRESH_TOKEN_REUSED):
        assert {n for n in NAMES if subject in nats_access.permissions(n).publish} == {"client_registry"}, subject


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


# --- what the code publishes is what the table allows ------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
GRANT_LIBRARY = ROOT / "libs/inboundlib/grants"  # runs in every grant service
GATE = ROOT / "libs/inboundlib/authz.py"  # runs in every gRPC server (its refusals)
# The bus itself, and hosting's handle on it, publish whatever their callers name.
FORWARDERS = {Path("libs/inboundlib/events.py"), Path("libs/inboundlib/hosting.py")}


def _published(paths) -> dict[str, set[str]]:
    """The event subjects each file's `.publish(...)` calls name, resolved through its imports
    from inboundlib.events (a constant, an alias of one, or registry_subject(ENTITY_...))."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text())
        names = {a.asname or a.name: a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module == "inboundlib.events" for a in node.names}

        def constant(node, path=path, names=names) -> str:
            if isinstance(node, ast.Name) and node.id in names:
                return getattr(events, names[node.id])
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and names.get(node.func.id) == "registry_subject" and len(node.args) == 1):
                return events.registry_subject(constant(node.args[0]))
            raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno}: publishes on a subject this test cannot "
                                 f"resolve ({ast.unparse(node)}): name a constant of inboundlib.events")

        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "publish"
                    and node.args and names):
                found.setdefault(str(path.relative_to(ROOT)), set()).add(constant(node.args[0]))
    return found


def test_every_subject_a_service_publishes_is_in_its_nats_permissions():
    """Derived from the code: a publish the table does not allow would be refused by NATS
    in a deployment (its events lost, the token path answering 503)."""
    by_file = _published(p for p in [*(ROOT / "services").rglob("*.py"), *(ROOT / "libs/inboundlib").rglob("*.py")]
                         if p.relative_to(ROOT) not in FORWARDERS)
    grant_library = set().union(*(s for f, s in by_file.items() if f.startswith("libs/inboundlib/grants/")))
    gate = by_file.get(str(GATE.relative_to(ROOT)), set())
    assert grant_library and gate == {ACCESS_DENIED}  # the scan sees them (TOKEN_DENIED, ACCESS_DENIED)
    unplaced = [f for f in by_file if f.startswith("libs/") and not f.startswith("libs/inboundlib/grants/")
                and f != str(GATE.relative_to(ROOT))]
    assert not unplaced, f"library code that publishes: say which services run it in this test ({unplaced})"
    # The audit log knows the payload of each (what it checks a message against).
    assert set().union(*by_file.values()) <= set(events.PAYLOADS)
    for name in NAMES:
        allowed = nats_access.permissions(name).publish
        own = set().union(*(s for f, s in by_file.items() if f.startswith(f"services/{name}/")))
        if TABLE[name].grant_type:
            own |= grant_library
        if any(port.kind != HTTP for port in TABLE[name].ports):
            own |= gate
        assert own <= allowed, f"{name} publishes {sorted(own - allowed)} without NATS permission"


def test_installations_that_would_share_password_variables_are_refused():
    run = [sys.executable, "-m", "services.nats_access", "config"]
    ok = subprocess.run([*run, "--installation", "a-b", "--installation", "c"], capture_output=True, text=True,
                        cwd=ROOT, timeout=60)
    assert ok.returncode == 0 and "INBOUND_NATS_PASSWORD_EDGE_A_B" in ok.stdout, ok.stderr
    clash = subprocess.run([*run, "--installation", "a-b", "--installation", "a_b"], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert clash.returncode != 0 and "password variables" in clash.stderr


def test_the_edge_and_the_grant_services_may_not_create_the_stream():
    creators = {i for i in nats_access.identities() if "$JS.API.STREAM.CREATE.INBOUND_EVENTS" in
                nats_access.server_permissions(Installation(), i)["publish"]["allow"]}
    assert creators == {"audit", "token_issuer", "client_registry", ALL_IN_ONE}


def _published_by_service() -> dict[str, set[str]]:
    """What each service of the table publishes, read from its code: its own files, the grant
    library when it runs it (a grant service, or the edge, which imports its denial publisher),
    and the gRPC gate's refusals when it serves gRPC."""
    by_file = _published(p for p in [*(ROOT / "services").rglob("*.py"), *(ROOT / "libs/inboundlib").rglob("*.py")]
                         if p.relative_to(ROOT) not in FORWARDERS)
    grant_library = set().union(*(s for f, s in by_file.items() if f.startswith("libs/inboundlib/grants/")))
    gate = by_file.get(str(GATE.relative_to(ROOT)), set())
    own: dict[str, set[str]] = {}
    for name in NAMES:
        files = list((ROOT / "services" / name).rglob("*.py"))
        used = set().union(*(s for f, s in by_file.items() if f.startswith(f"services/{name}/")))
        if TABLE[name].grant_type or any("from inboundlib.grants" in f.read_text() for f in files):
            used |= grant_library
        if any(port.kind != HTTP for port in TABLE[name].ports):
            used |= gate
        own[name] = used
    return own


def test_no_service_may_publish_more_than_its_code_does():
    """Least privilege, the other half of the test above: a subject a service may publish
    but never does is one a compromised service could forge (e.g. the edge sending
    user.signed_in or code.issued into the audit trail)."""
    for name, used in _published_by_service().items():
        allowed = nats_access.permissions(name).publish
        assert allowed <= used, f"{name} may publish {sorted(allowed - used)}, which its code never does"


def test_only_authorization_code_reports_sign_ins_consents_sessions_and_codes():
    """The browser's audit records are believed because only the service that signs users
    in, records consents, ends sessions and mints codes may send them."""
    for subject in (events.USER_SIGNED_IN, events.USER_SIGN_IN_FAILED, events.CONSENT_GRANTED,
                    events.CONSENT_WITHDRAWN, events.SESSION_ENDED, events.CODE_ISSUED):
        assert {n for n in NAMES if subject in nats_access.permissions(n).publish} == {"authorization_code"}, subject

"""Who may use which NATS subject: one NATS user per service of the module table
(services/modules.py), and one for the one-process mode, with subject permissions
that nats-server enforces (issue "Zero trust inside").

A message on NATS is trusted by whoever receives it: token_issuer drops a
client's tokens on a `token.revoked` event, every cache forgets a client on a
`registry.client` event, the audit log stores whatever reaches the stream. So
the server, not the receiver, decides who may send what:

| identity | publishes (events) | subscribes (events) |
|---|---|---|
| client_registry | registry.client, registry.signing_key, registry.user, registry.scope, registry.integration, registry.provider, token.revoked (the cut-offs that disabling or deleting a client, and a user's password change, disabling or deletion record; a reused refresh token's family), token.refresh_reused, user.locked, user.lock_ended | - |
| token_issuer | token.issued, token.revoked, token.introspected_revoked, keys.rotated | registry.client, registry.signing_key, keys.rotated, token.revoked |
| each grant service | token.denied | registry.client |
| authorization_code | as a grant service, and the browser's: user.signed_in, user.sign_in_failed, consent.granted, consent.withdrawn, session.ended, code.issued | registry.client |
| jwt_bearer | as a grant service | registry.client, registry.integration |
| third_party_token | as a grant service | registry.client, registry.provider, registry.user |
| edge | token.denied | keys.rotated |
| audit | nothing but access.denied | consumes the stream through its durable consumer only |
| all_in_one | the union of all the above | |

Beside these, every service that serves gRPC publishes `access.denied` (its own
refusals of callers, libs/inboundlib/authz.py): all but the edge today.

Subjects are relative to the installation (inboundlib.events.Installation):
`token.revoked` of installation `inbound` is `inbound.events.token.revoked`, in
the stream `INBOUND_EVENTS`. Beside its events, each identity may use only:
- `_INBOX.<installation>.<identity>.>` (subscribe): the replies to its own
  requests (JetStream acks and API answers); no service can read another's.
- publishers: `$JS.API.STREAM.INFO.<stream>`; audit, token_issuer and
  client_registry also `$JS.API.STREAM.CREATE.<stream>` (ensure_stream: whichever
  starts first creates it). The edge and the grant services may not: a stream made
  by them could carry limits that discard the trail (a max_age of a second).
  They connect once the stream exists (their events wait, spooled, meanwhile);
- audit: the same, plus its durable consumer's create/info/next-message API
  subjects and `$JS.ACK.<stream>.audit.>` (acks). No other JetStream API: no
  service can delete, purge or read the stream past its own consumer, nor
  create a consumer that would read the audit trail.

Deploying (the NATS server is an operator's): `python -m services.nats_access
config [--installation NAME]` prints the nats-server `authorization` block of
these users, each password a reference to an environment variable of the
nats-server process (`$INBOUND_NATS_PASSWORD_TOKEN_ISSUER`, ...), so a Secret can
provide them; each service then gets NATS_URL (tls://...), INBOUND_NATS_USER
(`<installation>-<identity>`), INBOUND_NATS_PASSWORD_FILE (the same password,
mounted from the Secret) and INBOUND_NATS_CA_FILE. A creds file
(INBOUND_NATS_CREDS_FILE, for NKEY or JWT accounts) must carry the same
permissions, set in the account's user JWT. A service reads its password or
creds file at start: after rotating one, restart the service (and reload
nats-server's config). `make run` and `make test` run their private NATS with
exactly this block (services/devstack.py).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass

from inboundlib.events import (
    ACCESS_DENIED,
    CLIENT_CHANGED,
    CODE_ISSUED,
    CONSENT_GRANTED,
    CONSENT_WITHDRAWN,
    INTEGRATION_CHANGED,
    KEYS_ROTATED,
    PROVIDER_CHANGED,
    REFRESH_TOKEN_REUSED,
    REVOKED_TOKEN_INTROSPECTED,
    SCOPE_CHANGED,
    SESSION_ENDED,
    SIGNING_KEY_CHANGED,
    TOKEN_DENIED,
    TOKEN_ISSUED,
    TOKEN_REVOKED,
    USER_CHANGED,
    USER_LOCK_ENDED,
    USER_LOCKED,
    USER_SIGN_IN_FAILED,
    USER_SIGNED_IN,
    Installation,
)
from inboundlib.hosting import HTTP
from services.audit.consumer import DURABLE as AUDIT_DURABLE
from services.modules import ALL_IN_ONE, NAMES, TABLE


@dataclass(frozen=True)
class Permissions:
    """What one identity may do, in event subjects relative to its installation."""
    publish: frozenset[str] = frozenset()
    subscribe: frozenset[str] = frozenset()
    consumes_audit: bool = False
    # May create the stream (with limits of its choosing: a short max_age would let
    # JetStream acknowledge events and then discard them). Not the edge nor the grant
    # services: their events wait, spooled, until one of these has made it.
    creates_stream: bool = False

    def __or__(self, other: Permissions) -> Permissions:
        return Permissions(self.publish | other.publish, self.subscribe | other.subscribe,
                           self.consumes_audit or other.consumes_audit, self.creates_stream or other.creates_stream)


def _p(publish: Iterable[str] = (), subscribe: Iterable[str] = (), consumes_audit: bool = False,
       creates_stream: bool = False) -> Permissions:
    return Permissions(frozenset(publish), frozenset(subscribe), consumes_audit, creates_stream)


RULES: dict[str, Permissions] = {
    "client_registry": _p(publish=(CLIENT_CHANGED, SIGNING_KEY_CHANGED, USER_CHANGED, SCOPE_CHANGED, TOKEN_REVOKED,
                                   REFRESH_TOKEN_REUSED, USER_LOCKED, USER_LOCK_ENDED, INTEGRATION_CHANGED,
                                   PROVIDER_CHANGED), creates_stream=True),
    "token_issuer": _p(publish=(TOKEN_ISSUED, TOKEN_REVOKED, REVOKED_TOKEN_INTROSPECTED, KEYS_ROTATED),
                       subscribe=(CLIENT_CHANGED, SIGNING_KEY_CHANGED, KEYS_ROTATED, TOKEN_REVOKED),
                       creates_stream=True),
    "audit": _p(consumes_audit=True, creates_stream=True),
    "edge": _p(publish=(TOKEN_DENIED,), subscribe=(KEYS_ROTATED,)),
}
# Every grant service (a row with a grant type): its refusals, and its client cache's invalidations.
GRANT_SERVICE = _p(publish=(TOKEN_DENIED,), subscribe=(CLIENT_CHANGED,))
# The browser's service: a grant service, and the audit records of sign-ins, consents,
# sessions and codes.
RULES["authorization_code"] = GRANT_SERVICE | _p(publish=(USER_SIGNED_IN, USER_SIGN_IN_FAILED, CONSENT_GRANTED,
                                                          CONSENT_WITHDRAWN, SESSION_ENDED, CODE_ISSUED))

# RFC 7523: a grant service that also follows the integrations it trusts (its cache of
# them, and the keys it prefetches, follow every change).
RULES["jwt_bearer"] = GRANT_SERVICE | _p(subscribe=(INTEGRATION_CHANGED,))
# Token exchange and third-party tokens: a grant service, whose provider list and mapped
# users drop on their registry changes.
RULES["third_party_token"] = GRANT_SERVICE | _p(subscribe=(PROVIDER_CHANGED, USER_CHANGED))


def identities() -> tuple[str, ...]:
    """Every NATS identity: each service of the table, and the one-process mode."""
    return (*NAMES, ALL_IN_ONE)


def permissions(identity: str) -> Permissions:
    if identity == ALL_IN_ONE:
        result = Permissions()
        for name in NAMES:
            result |= permissions(name)
        return result
    if identity in RULES:
        rules = RULES[identity]
    elif identity in TABLE and TABLE[identity].grant_type:
        rules = GRANT_SERVICE
    else:
        raise KeyError(f"no NATS permissions for {identity!r}: add it to services/nats_access.py")
    if any(port.kind != HTTP for port in TABLE[identity].ports):  # a gRPC server reports whom it refused
        rules |= _p(publish=(ACCESS_DENIED,))
    return rules


def user_name(installation: Installation, identity: str) -> str:
    return f"{installation.name}-{identity}"


def password_variable(installation: Installation, identity: str) -> str:
    """The nats-server environment variable `config` refers to for this user's password."""
    suffix = "" if installation.name == "inbound" else "_" + installation.name.upper().replace("-", "_")
    return f"INBOUND_NATS_PASSWORD_{identity.upper()}{suffix}"


def server_permissions(installation: Installation, identity: str) -> dict:
    """The nats-server `permissions` of one identity (allow lists: all else is denied)."""
    rules = permissions(identity)
    stream = installation.stream
    publish = sorted(installation.subject(s) for s in rules.publish)
    subscribe = sorted(installation.subject(s) for s in rules.subscribe)
    api = [f"$JS.API.STREAM.INFO.{stream}"] if rules.publish or rules.consumes_audit else []
    if rules.creates_stream:
        api.append(f"$JS.API.STREAM.CREATE.{stream}")
    if rules.consumes_audit:
        api += [f"$JS.API.CONSUMER.INFO.{stream}.{AUDIT_DURABLE}",
                f"$JS.API.CONSUMER.CREATE.{stream}.{AUDIT_DURABLE}",
                f"$JS.API.CONSUMER.CREATE.{stream}.{AUDIT_DURABLE}.>",  # with its filter subject
                f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{AUDIT_DURABLE}",
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{AUDIT_DURABLE}",
                f"$JS.ACK.{stream}.{AUDIT_DURABLE}.>"]
    return {"publish": {"allow": publish + api},
            "subscribe": {"allow": subscribe + [installation.inbox_prefix(identity) + ".>"]}}


def authorization_users(users: Iterable[tuple[Installation, str, str]], *, literal: bool = True) -> str:
    """The `users` list of a nats-server `authorization` block, for (installation,
    identity, password) triples. `literal`: the passwords themselves (a private
    server's config file, 0600); else names of environment variables."""
    lines = []
    for installation, identity, password in users:
        value = json.dumps(password) if literal else "$" + password
        lines.append(f"    {{user: {json.dumps(user_name(installation, identity))}, password: {value}, "
                     f"permissions: {json.dumps(server_permissions(installation, identity))}}}")
    return "authorization {\n  users = [\n" + "\n".join(lines) + "\n  ]\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.nats_access",
                                     description="Print the nats-server authorization block of Inbound's services.")
    parser.add_argument("command", choices=["config"])
    parser.add_argument("--installation", action="append", default=None,
                        help="installation prefix (repeat for several installations on one NATS); default inbound")
    args = parser.parse_args()
    installations = [Installation(name) for name in dict.fromkeys(args.installation or ["inbound"])]
    variables = {password_variable(i, "x"): i.name for i in reversed(installations)}
    if len(variables) < len(installations):  # `a-b` and `a_b`: one variable would hold both users' passwords
        parser.error("installations whose names differ only in - and _ cannot share one NATS "
                     "(their password variables would be the same)")
    print(authorization_users(((i, identity, password_variable(i, identity)) for i in installations
                               for identity in identities()), literal=False), end="")


if __name__ == "__main__":
    main()

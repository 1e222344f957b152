"""Who caused an event: a service, an operator, a client or a user (DESIGN.md, events).

The actor of the work in progress lives in a context variable, and the event
bus stamps it on every event published meanwhile; with no actor in context, a
service names itself. A gRPC server sets it from the caller's authenticated
identity (`of_caller`): an operator is the operator its certificate names, a
service is itself, a resource server is itself. Only a caller the access table
trusts to pass on someone else's actor (services/access.py, RELAYS) may name
another one in call metadata (`x-inbound-actor: kind:id`, sent by unbatched
calls through `grpcx.request_metadata`): token_issuer doing an operator's key
rotation names that operator to the registry. Anyone else's claim is ignored.
Where identities are not checked (plaintext gRPC, explicitly configured), the
metadata is recorded as given, as before: it never decides access.
"""
from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass

ACTOR_METADATA_KEY = "x-inbound-actor"

SERVICE = "service"
OPERATOR = "operator"
CLIENT = "client"
USER = "user"
RESOURCE_SERVER = "resource_server"
KINDS = (SERVICE, OPERATOR, CLIENT, USER, RESOURCE_SERVER)
MAX_ID_LENGTH = 128
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Actor:
    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


def actor(kind: str, id: str) -> Actor:
    """An actor with a known kind and a printable id, cut to MAX_ID_LENGTH."""
    if kind not in KINDS:
        raise ValueError(f"unknown actor kind {kind!r}")
    return Actor(kind, _UNSAFE.sub("?", id)[:MAX_ID_LENGTH])


def parse(text: str) -> Actor | None:
    """`kind:id` as sent in metadata; None when it is not one."""
    kind, sep, id_ = (text or "").partition(":")
    if not sep or kind not in KINDS or not id_:
        return None
    return actor(kind, id_)


def of_caller(caller) -> Actor | None:
    """The actor of a call from an authenticated caller (an inboundlib.identity.Caller,
    whose kinds are actor kinds too), None without one."""
    return actor(caller.kind, caller.name) if caller is not None else None


actor_var: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("actor", default=None)


def current() -> Actor | None:
    return actor_var.get()


def metadata() -> tuple[tuple[str, str], ...]:
    """The actor in context as call metadata (empty when there is none)."""
    who = actor_var.get()
    return ((ACTOR_METADATA_KEY, str(who)),) if who is not None else ()

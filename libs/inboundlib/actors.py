"""Who caused an event: a service, an operator, a client or a user (DESIGN.md, events).

The actor of the work in progress lives in a context variable. A gRPC server
sets it from the caller's metadata (`x-inbound-actor: kind:id`), unbatched
calls pass it on (`grpcx.request_metadata`), and the event bus stamps it on
every event published meanwhile; with no actor in context, a service names
itself. inboundctl names the operator.

Not yet authenticated: any caller that reaches a gRPC port can claim any
actor, until mutual TLS identities arrive. It is recorded, never used to
decide access.
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
KINDS = (SERVICE, OPERATOR, CLIENT, USER)
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


actor_var: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("actor", default=None)


def current() -> Actor | None:
    return actor_var.get()


def metadata() -> tuple[tuple[str, str], ...]:
    """The actor in context as call metadata (empty when there is none)."""
    who = actor_var.get()
    return ((ACTOR_METADATA_KEY, str(who)),) if who is not None else ()

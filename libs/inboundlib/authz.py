"""Who may call which RPC, decided on every call a gRPC server takes (issue "Zero trust inside").

The rules are data: for each RPC, by its full method name
(`/inbound.issuer.v1.TokenIssuer/Issue`), the callers it admits, named or by
kind (inboundlib.identity). services/access.py holds Inbound's; this module
knows no service. An RPC without a rule is refused (default deny), and so is
a caller without an authenticated identity, except where a rule admits anyone
(the standard health service) or, on a port that accepts one, a bearer token
the port's own service vouches for (token_issuer's introspection port).

`Gate` is what a server's interceptor asks, once per call: a dict lookup on
(method, the peer's SPIFFE ID as gRPC gives it); the identity is parsed once
per distinct peer ID, not per call. A refusal is counted in a metric and
reported as an `access_denied` event, at most one per (caller, method) every
REPORT_INTERVAL seconds, carrying how many refusals it stands for, so a flood
of refused calls cannot flood the audit log.
"""
from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter

from inboundlib import actors, identity
from inboundlib.identity import Caller

UNAUTHENTICATED = "unauthenticated"
REPORT_INTERVAL = 10.0
# Distinct (method, peer ID) decisions and (caller, method) report windows kept; past
# this the table starts again (costing a re-parse or an extra report, never a wrong answer).
MAX_REMEMBERED = 10_000

DENIED_CALLS = Counter("inbound_access_denied_total", "gRPC calls refused by the access table",
                        ["method", "caller_kind"])


@dataclass(frozen=True)
class Allowed:
    """The callers one RPC admits: these named callers, every caller of these kinds,
    or (`anyone`) even an unauthenticated peer."""
    callers: frozenset[Caller] = frozenset()
    kinds: frozenset[str] = frozenset()
    anyone: bool = False

    def admits(self, caller: Caller | None) -> bool:
        if self.anyone:
            return True
        return caller is not None and (caller in self.callers or caller.kind in self.kinds)

    def __or__(self, other: Allowed) -> Allowed:
        return Allowed(self.callers | other.callers, self.kinds | other.kinds, self.anyone or other.anyone)


def callers(*who: Caller) -> Allowed:
    return Allowed(callers=frozenset(who))


def kinds(*kind: str) -> Allowed:
    return Allowed(kinds=frozenset(kind))


ANYONE = Allowed(anyone=True)
NOBODY = Allowed()


@dataclass(frozen=True)
class Policy:
    """The rules (full method name -> Allowed), and the callers whose `x-inbound-actor`
    metadata is believed (they pass on the actor of work they do for someone else)."""
    rules: Mapping[str, Allowed]
    relays: frozenset[Caller] = frozenset()

    def allowed(self, method: str) -> Allowed:
        return self.rules.get(method, NOBODY)


UNCHECKED = "unchecked"
# The authenticated caller of the call in progress (None: a peer without an identity,
# admitted by an open rule); UNCHECKED where no gate ran (plaintext gRPC).
caller_var: contextvars.ContextVar[Caller | None | str] = contextvars.ContextVar("caller", default=UNCHECKED)


def admitted(allowed: Allowed) -> bool:
    """Whether the caller of the call in progress is one `allowed` admits (for what a
    servicer gives only to some of the callers of an RPC). True where callers are not
    checked at all: plaintext gRPC, explicitly configured, trusts every peer."""
    caller = caller_var.get()
    return caller == UNCHECKED or allowed.admits(caller)


@dataclass(frozen=True)
class Decision:
    caller: Caller | None
    allowed: bool
    # The actor of the call when the caller names no one else (actors.of_caller).
    actor: actors.Actor | None
    relays: bool


# A bearer token's owner, as the port's service vouches for it: (caller to check, actor).
BearerCheck = Callable[[str], Awaitable["tuple[Caller, actors.Actor] | None"]]
# report(caller or None, method, port, denials): publishes the access_denied event.
Report = Callable[[Caller | None, str, int, int], None]


@dataclass
class _Window:
    reported_at: float
    unreported: int = 0


@dataclass
class Gate:
    """The check one gRPC server (on `port`) runs per call. `report` publishes the
    access_denied event; `bearer` (optional) turns an `authorization: Bearer` token
    into a caller, on a port that accepts tokens."""
    policy: Policy
    port: int
    report: Report
    bearer: BearerCheck | None = None
    trust_domain: str = identity.DEFAULT_TRUST_DOMAIN
    interval: float = REPORT_INTERVAL
    clock: Callable[[], float] = time.monotonic
    _decisions: dict = field(default_factory=dict, repr=False)
    _windows: dict = field(default_factory=dict, repr=False)

    def decide(self, method: str, auth_context: Mapping[str, Iterable[bytes]] | None) -> Decision:
        peer = tuple((auth_context or {}).get(identity.SPIFFE_PROPERTY) or ())
        key = (method, peer)
        decision = self._decisions.get(key)
        if decision is None:
            caller = identity.from_auth_context(auth_context, self.trust_domain)
            decision = Decision(caller, self.policy.allowed(method).admits(caller), actors.of_caller(caller),
                                caller in self.policy.relays)
            if len(self._decisions) >= MAX_REMEMBERED:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    async def decide_bearer(self, method: str, authorization: str) -> Decision | None:
        """For a peer without a certificate: the caller its bearer token (RFC 6750 §2.1)
        names, when this port accepts tokens and the token is good; else None."""
        if self.bearer is None:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        vouched = await self.bearer(token)
        if vouched is None:
            return None
        caller, actor = vouched
        return Decision(caller, self.policy.allowed(method).admits(caller), actor, False)

    def denied(self, caller: Caller | None, method: str) -> None:
        """Count a refusal; report it unless this (caller, method) was reported within the interval."""
        who = str(caller) if caller is not None else UNAUTHENTICATED
        DENIED_CALLS.labels(method, caller.kind if caller is not None else UNAUTHENTICATED).inc()
        now = self.clock()
        window = self._windows.get((who, method))
        if window is not None and now - window.reported_at < self.interval:
            window.unreported += 1
            return
        denials = 1 + (window.unreported if window is not None else 0)
        if len(self._windows) >= MAX_REMEMBERED:
            self._windows.clear()
        self._windows[(who, method)] = _Window(now)
        self.report(caller, method, self.port, denials)


def denial_reporter(events) -> Report:
    """`report` for a Gate: the access_denied event on the event bus (low priority: a
    caller can cause it at will), with the refused caller as its actor."""
    from inbound.events.v1 import events_pb2
    from inboundlib.events import ACCESS_DENIED as SUBJECT
    from inboundlib.events import actor_to_pb

    def report(caller: Caller | None, method: str, port: int, denials: int) -> None:
        event = events_pb2.Event(access_denied=events_pb2.AccessDenied(
            caller=str(caller) if caller is not None else UNAUTHENTICATED, method=method, port=port,
            denials=denials))
        if caller is not None:
            event.actor.CopyFrom(actor_to_pb(actors.of_caller(caller)))
        events.publish(SUBJECT, event, low_priority=True)

    return report

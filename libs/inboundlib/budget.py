"""Per-request time budgets that nest across hops (DESIGN.md, "Hot-path RPCs carry batches").

The edge opens a budget for each HTTP request (`within(seconds)`). Every call made
on its behalf waits at most what is left (`remaining`), and every item sent to the
next hop carries a little less than that (`for_next_hop`, as `RequestMeta.timeout_ms`),
so the callee gives up — and answers `temporarily_unavailable` — before its caller
does: the edge waits longest, each hop passes on less than it has. A service that
receives an item opens a budget of the item's `timeout_ms` around its work, so the
calls it makes in turn are bounded the same way. An item whose budget has passed
is answered without work.

The budget is a context variable: every task started for a request (asyncio
copies the context) sees it; code outside any request sees no budget.
"""
from __future__ import annotations

import contextlib
import contextvars
import time

from inboundlib.actors import actor_var
from inboundlib.logs import request_id_var

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_deadline", default=None)

# What a hop keeps for itself out of the budget it passes on: enough to receive
# the callee's answer (or its refusal) and to answer its own caller in time.
HOP_SHARE = 0.1
MIN_HOP_MARGIN = 0.01


class _Within:
    """within()'s context manager: a class, not a generator, as it runs once per
    request and once per batched item (a generator-based one cost several times more)."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float):
        self._seconds = seconds

    def __enter__(self) -> None:
        deadline = time.monotonic() + self._seconds
        outer = _deadline.get()
        if outer is not None and outer < deadline:
            deadline = outer
        self._token = _deadline.set(deadline)

    def __exit__(self, *exc_info) -> None:
        _deadline.reset(self._token)


def within(seconds: float) -> contextlib.AbstractContextManager[None]:
    """Run the block with at most `seconds` left (never more than an enclosing budget leaves)."""
    return _Within(seconds)


def remaining(default: float) -> float:
    """Seconds left in the current budget, at most `default` (which applies when there is no budget).
    Zero or less: the budget has passed."""
    deadline = _deadline.get()
    if deadline is None:
        return default
    return min(default, deadline - time.monotonic())


def for_next_hop(default: float) -> float:
    """The budget to give the next hop: what is left minus this hop's margin."""
    return next_hop_share(remaining(default))


def next_hop_share(left: float) -> float:
    """Of `left` seconds, what the next hop gets: less this hop's margin."""
    return left - max(MIN_HOP_MARGIN, left * HOP_SHARE)


def shared_context() -> contextvars.Context:
    """A copy of the current context without any one request's budget, request id or
    actor: for work done on behalf of several requests at once (a batch, a shared cache
    load), which must neither give up at the first requester's deadline nor log or
    act in its name."""
    context = contextvars.copy_context()
    context.run(_deadline.set, None)
    context.run(request_id_var.set, "")
    context.run(actor_var.set, None)
    return context


def passed(default: float = float("inf")) -> bool:
    return remaining(default) <= 0

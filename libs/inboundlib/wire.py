"""Protobuf <-> domain for the types every contract shares (common.v1)."""
from __future__ import annotations

import contextlib

from inbound.common.v1 import common_pb2
from inboundlib import budget
from inboundlib.grants.api import RequestContext
from inboundlib.oauth.client_auth import (
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_JWT,
    CLIENT_SECRET_POST,
    NONE,
    PRIVATE_KEY_JWT,
    ClientCredentials,
)
from inboundlib.oauth.errors import OAuthError, from_code

_METHOD_FROM_PB = {
    common_pb2.CLIENT_AUTH_METHOD_NONE: NONE,
    common_pb2.CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC: CLIENT_SECRET_BASIC,
    common_pb2.CLIENT_AUTH_METHOD_CLIENT_SECRET_POST: CLIENT_SECRET_POST,
    common_pb2.CLIENT_AUTH_METHOD_CLIENT_SECRET_JWT: CLIENT_SECRET_JWT,
    common_pb2.CLIENT_AUTH_METHOD_PRIVATE_KEY_JWT: PRIVATE_KEY_JWT,
}
_METHOD_TO_PB = {value: key for key, value in _METHOD_FROM_PB.items()}


def error_to_pb(error: OAuthError) -> common_pb2.OAuthError:
    return common_pb2.OAuthError(code=error.code, description=error.description)


def error_from_pb(message: common_pb2.OAuthError) -> OAuthError:
    return from_code(message.code, message.description)


def meta(request_id: str, timeout: float) -> common_pb2.RequestMeta:
    """Per-item metadata for the next hop: the budget it gets is what this request
    has left (at most `timeout`) minus this hop's margin (inboundlib.budget);
    -1 when nothing is left, so the callee answers without work."""
    left_ms = int(budget.for_next_hop(timeout) * 1000)
    return common_pb2.RequestMeta(request_id=request_id, timeout_ms=left_ms if left_ms > 0 else -1)


def restamp(item, seconds_left: float) -> None:
    """Give a batched item (a message with `meta`) the budget it has left as it is sent,
    not the one it had when it was queued: an item that waited behind a batch in flight
    must not hand the next hop more time than its caller still waits."""
    left_ms = int(budget.next_hop_share(seconds_left) * 1000)
    item.meta.timeout_ms = left_ms if left_ms > 0 else -1


def expired(message: common_pb2.RequestMeta) -> bool:
    """An item sent with no time left (a caller that sets no budget, 0, is not refused)."""
    return message.timeout_ms < 0


def item_budget(message: common_pb2.RequestMeta) -> contextlib.AbstractContextManager[None]:
    """Work on a received item within the budget it carries (none when the caller gave none)."""
    if message.timeout_ms > 0:
        return budget.within(message.timeout_ms / 1000)
    return contextlib.nullcontext()


def credentials_to_pb(creds: ClientCredentials | None) -> common_pb2.ClientCredentials | None:
    if creds is None:
        return None
    return common_pb2.ClientCredentials(method=_METHOD_TO_PB[creds.method], client_id=creds.client_id,
                                        client_secret=creds.client_secret, client_assertion=creds.client_assertion)


def method_to_pb(method: str) -> int:
    return _METHOD_TO_PB[method]


def method_from_pb(value: int) -> str | None:
    return _METHOD_FROM_PB.get(value)


def credentials_from_pb(message: common_pb2.ClientCredentials) -> ClientCredentials | None:
    """None when the message is unset or names no method."""
    method = _METHOD_FROM_PB.get(message.method)
    if method is None:
        return None
    return ClientCredentials(method, message.client_id, message.client_secret, message.client_assertion)


def context_to_pb(context: RequestContext) -> common_pb2.RequestContext:
    return common_pb2.RequestContext(client_address=context.client_address, user_agent=context.user_agent,
                                     endpoint_url=context.endpoint_url)


def context_from_pb(message: common_pb2.RequestContext) -> RequestContext:
    return RequestContext(client_address=message.client_address, user_agent=message.user_agent,
                          endpoint_url=message.endpoint_url)

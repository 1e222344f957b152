"""Protobuf <-> domain for the types every contract shares (common.v1)."""
from __future__ import annotations

from inbound.common.v1 import common_pb2
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, CLIENT_SECRET_POST, NONE, ClientCredentials
from inboundlib.oauth.errors import OAuthError, from_code

_METHOD_FROM_PB = {
    common_pb2.CLIENT_AUTH_METHOD_NONE: NONE,
    common_pb2.CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC: CLIENT_SECRET_BASIC,
    common_pb2.CLIENT_AUTH_METHOD_CLIENT_SECRET_POST: CLIENT_SECRET_POST,
}
_METHOD_TO_PB = {value: key for key, value in _METHOD_FROM_PB.items()}


def error_to_pb(error: OAuthError) -> common_pb2.OAuthError:
    return common_pb2.OAuthError(code=error.code, description=error.description)


def error_from_pb(message: common_pb2.OAuthError) -> OAuthError:
    return from_code(message.code, message.description)


def meta(request_id: str, timeout: float) -> common_pb2.RequestMeta:
    return common_pb2.RequestMeta(request_id=request_id, timeout_ms=max(1, int(timeout * 1000)))


def expired(message: common_pb2.RequestMeta) -> bool:
    """An item sent with no time left (a caller that sets no budget, 0, is not refused)."""
    return message.timeout_ms < 0


def credentials_to_pb(creds: ClientCredentials | None) -> common_pb2.ClientCredentials | None:
    if creds is None:
        return None
    return common_pb2.ClientCredentials(method=_METHOD_TO_PB[creds.method], client_id=creds.client_id,
                                        client_secret=creds.client_secret)


def credentials_from_pb(message: common_pb2.ClientCredentials) -> ClientCredentials | None:
    """None when the message is unset or names no method."""
    method = _METHOD_FROM_PB.get(message.method)
    if method is None:
        return None
    return ClientCredentials(method, message.client_id, message.client_secret)

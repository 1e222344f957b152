"""Protobuf <-> domain for the types every contract shares (common.v1)."""
from __future__ import annotations

import time

from inbound.common.v1 import common_pb2
from inboundlib.oauth.errors import OAuthError, from_code


def error_to_pb(error: OAuthError) -> common_pb2.OAuthError:
    return common_pb2.OAuthError(code=error.code, description=error.description)


def error_from_pb(message: common_pb2.OAuthError) -> OAuthError:
    return from_code(message.code, message.description)


def meta(request_id: str, timeout: float) -> common_pb2.RequestMeta:
    return common_pb2.RequestMeta(request_id=request_id, deadline_unix_ms=int((time.time() + timeout) * 1000))


def expired(message: common_pb2.RequestMeta) -> bool:
    return bool(message.deadline_unix_ms) and message.deadline_unix_ms < time.time() * 1000

"""IdTokenRequest to protobuf and back: the one place that turns the released claims
into JSON for the wire (IdTokenRequest.claims_json) and reads them again; and TokenInfo
(token_issuer's Introspect, and ForeignTokens' for third-party tokens)."""
from __future__ import annotations

import json

from inbound.issuer.v1 import issuer_pb2 as pb
from inboundlib.oauth.errors import ServerError
from services.token_issuer.api import MAX_ID_TOKEN_CLAIMS_BYTES, IdTokenRequest, TokenInfo


def id_token_request_to_pb(wanted: IdTokenRequest) -> pb.IdTokenRequest:
    return pb.IdTokenRequest(nonce=wanted.nonce, auth_time=wanted.auth_time, sid=wanted.sid,
                             claims_json=json.dumps(wanted.claims, separators=(",", ":")) if wanted.claims else "",
                             code=wanted.code, at_hash=wanted.at_hash, lifetime_seconds=wanted.lifetime_seconds)


def id_token_request_from_pb(item: pb.IdTokenRequest) -> IdTokenRequest:
    """Raises ServerError (the caller's bug, never the user's: the private detail goes to the
    log) for claims that are too large, not JSON, or not a JSON object."""
    claims: object = {}
    if item.claims_json:
        if len(item.claims_json.encode()) > MAX_ID_TOKEN_CLAIMS_BYTES:
            raise ServerError(detail=f"ID token claims over {MAX_ID_TOKEN_CLAIMS_BYTES} bytes")
        try:
            claims = json.loads(item.claims_json)
        except ValueError:
            raise ServerError(detail="ID token claims are not JSON") from None
        if not isinstance(claims, dict):
            raise ServerError(detail="ID token claims are not a JSON object")
    return IdTokenRequest(nonce=item.nonce, auth_time=item.auth_time, sid=item.sid, claims=claims, code=item.code,
                          at_hash=item.at_hash, lifetime_seconds=item.lifetime_seconds)


def info_to_pb(info: TokenInfo) -> pb.TokenInfo:
    if not info.active:
        return pb.TokenInfo(active=False)
    return pb.TokenInfo(active=True, scope=info.scope, client_id=info.client_id, sub=info.sub,
                        username=info.username, token_type=info.token_type, exp=info.exp, iat=info.iat,
                        iss=info.iss, aud=info.aud, jti=info.jti, act_json=info.act_json, provider=info.provider)


def info_from_pb(i: pb.TokenInfo) -> TokenInfo:
    """An IntrospectResult's TokenInfo (token_issuer's, or ForeignTokens' for a third-party token)."""
    return TokenInfo(active=i.active, scope=i.scope, client_id=i.client_id, sub=i.sub, username=i.username,
                     token_type=i.token_type, exp=i.exp, iat=i.iat, iss=i.iss, aud=tuple(i.aud), jti=i.jti,
                     act_json=i.act_json, provider=i.provider)

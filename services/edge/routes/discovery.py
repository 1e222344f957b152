"""Discovery: authorization server metadata (RFC 8414) and the JWK Set (RFC 7517)."""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, CLIENT_SECRET_POST, NONE
from inboundlib.oauth.errors import TemporarilyUnavailable
from services.edge.errors import TokenEndpointErrors, json_response
from services.edge.routes.oauth import INTROSPECT_PATH, REVOKE_PATHS, TOKEN_PATHS

log = logging.getLogger("services.edge")

JWKS_PATH = "/oauth/jwks"
JWKS_ALIAS = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"


def build_metadata(issuer: str, grant_types: list[str], *, introspection: bool = True) -> dict:
    """RFC 8414 §2: only what this server really supports."""
    base = issuer.rstrip("/")
    auth_methods = [CLIENT_SECRET_BASIC, CLIENT_SECRET_POST]
    metadata = {
        "issuer": issuer,
        "token_endpoint": base + TOKEN_PATHS[0],
        "jwks_uri": base + JWKS_PATH,
        "grant_types_supported": grant_types,
        # `none`: a public client names itself with client_id alone (RFC 6749 §2.1, §6: refresh_token;
        # §4.3 password, where its client allows it); the grant runner refuses it to confidential clients.
        "token_endpoint_auth_methods_supported": [*auth_methods, NONE],
        # RFC 8414 requires the member; no authorization endpoint is served yet.
        "response_types_supported": [],
    }
    if introspection:
        metadata.update({
            "introspection_endpoint": base + INTROSPECT_PATH,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint": base + REVOKE_PATHS[0],
            "revocation_endpoint_auth_methods_supported": auth_methods,
        })
    return metadata


def routes(metadata: dict, jwks: Callable[[], Awaitable[dict]]) -> list[Route]:
    errors = TokenEndpointErrors()

    async def oauth_metadata(request: Request) -> Response:
        """RFC 8414 §3: authorization server metadata."""
        return json_response(metadata, headers={"Cache-Control": "public, max-age=300"})

    async def jwk_set(request: Request) -> Response:
        """RFC 7517 JWK Set of every key that signs, will sign or signed unexpired tokens."""
        try:
            document = await jwks()
        except Exception as exc:
            log.warning("jwks unavailable", extra={"error": type(exc).__name__})
            return errors.render(TemporarilyUnavailable())
        return Response(json.dumps(document), media_type="application/jwk-set+json",
                        headers={"Cache-Control": "public, max-age=60"})

    return [
        Route(METADATA_PATH, oauth_metadata, methods=["GET"]),
        Route(JWKS_PATH, jwk_set, methods=["GET"]),
        Route(JWKS_ALIAS, jwk_set, methods=["GET"]),
    ]

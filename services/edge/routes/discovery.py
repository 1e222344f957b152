"""Discovery: authorization server metadata (RFC 8414), OpenID Provider metadata
(OpenID Connect Discovery 1.0 §3) and the JWK Set (RFC 7517). Each lists only
what this edge serves: the authorization endpoint, UserInfo and end_session
only when the authorization_code service is configured; private_key_jwt and
client_secret_jwt (RFC 7523 §2.2) only when jwt_bearer, which verifies client
assertions for every endpoint, is (its grant is among the grants)."""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inboundlib.jose.keys import ASYMMETRIC_ALGORITHMS
from inboundlib.oauth.client_auth import (
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_JWT,
    CLIENT_SECRET_POST,
    JWT_BEARER_GRANT_TYPE,
    NONE,
    PRIVATE_KEY_JWT,
)
from inboundlib.oauth.errors import TemporarilyUnavailable
from inboundlib.oauth.oidc import STANDARD_SCOPES, SUPPORTED_CLAIMS
from services.edge.errors import TokenEndpointErrors, json_response
from services.edge.routes.browser import AUTHORIZE_PATHS, END_SESSION_PATH, USERINFO_PATH
from services.edge.routes.oauth import INTROSPECT_PATH, REVOKE_PATHS, TOKEN_PATHS

log = logging.getLogger("services.edge")

JWKS_PATH = "/oauth/jwks"
JWKS_ALIAS = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"
# Public documents, read by browser apps of any origin too (OpenID Connect clients in a SPA).
PUBLIC = {"Access-Control-Allow-Origin": "*"}
OPENID_CONFIGURATION_PATH = "/.well-known/openid-configuration"
# The grant whose service answers the authorization endpoint; it decides implicit too (docs/architecture).
AUTHORIZATION_GRANT = "authorization_code"
IMPLICIT = "implicit"
# RFC 6749 §3.1.1, OpenID Connect Core §3.1.2.1 / §3.2.2.1 (implicit only for clients allowed it).
RESPONSE_TYPES = ["code", "token", "id_token token"]
RESPONSE_MODES = ["query", "fragment"]
CODE_CHALLENGE_METHODS = ["S256"]  # RFC 7636 §4.2; `plain` is refused (RFC 9700 §2.1.1)
# What a client assertion may be signed with (inboundlib.jose: each as its key type allows;
# RFC 8414 §2: never `none`). HMAC only as HS256: client secrets are 256-bit, shorter than
# HS384's and HS512's minimum keys (RFC 7518 §3.2), which the verifier refuses.
ASSERTION_SIGNING_ALGS = sorted(ASYMMETRIC_ALGORITHMS | {"HS256"})


def build_metadata(issuer: str, grant_types: list[str], *, introspection: bool = True) -> dict:
    """RFC 8414 §2: only what this server really supports."""
    base = issuer.rstrip("/")
    auth_methods = [CLIENT_SECRET_BASIC, CLIENT_SECRET_POST]
    # jwt_bearer answers both halves of RFC 7523: where its grant is served, so are client assertions.
    assertions = JWT_BEARER_GRANT_TYPE in grant_types
    if assertions:
        auth_methods += [CLIENT_SECRET_JWT, PRIVATE_KEY_JWT]
    browser = AUTHORIZATION_GRANT in grant_types
    metadata = {
        "issuer": issuer,
        "token_endpoint": base + TOKEN_PATHS[0],
        "jwks_uri": base + JWKS_PATH,
        "grant_types_supported": sorted({*grant_types, IMPLICIT}) if browser else grant_types,
        # `none`: a public client names itself with client_id alone (RFC 6749 §2.1, §6: refresh_token;
        # §4.3 password, where its client allows it); the grant runner refuses it to confidential clients.
        "token_endpoint_auth_methods_supported": [*auth_methods, NONE],
        # RFC 8414 requires the member: empty while no authorization endpoint is served.
        "response_types_supported": RESPONSE_TYPES if browser else [],
    }
    if assertions:
        metadata["token_endpoint_auth_signing_alg_values_supported"] = ASSERTION_SIGNING_ALGS
    if browser:
        metadata.update({
            "authorization_endpoint": base + AUTHORIZE_PATHS[0],
            "response_modes_supported": RESPONSE_MODES,
            "code_challenge_methods_supported": CODE_CHALLENGE_METHODS,
            "authorization_response_iss_parameter_supported": True,  # RFC 9207 §3
        })
    if introspection:
        metadata.update({
            "introspection_endpoint": base + INTROSPECT_PATH,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint": base + REVOKE_PATHS[0],
            "revocation_endpoint_auth_methods_supported": auth_methods,
        })
        if assertions:
            metadata.update({"introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_SIGNING_ALGS,
                             "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_SIGNING_ALGS})
    return metadata


def build_openid_configuration(metadata: dict, id_token_algs: list[str]) -> dict:
    """OpenID Connect Discovery 1.0 §3, from the RFC 8414 metadata of the same server:
    served only beside an authorization endpoint (no OpenID Provider without one)."""
    base = metadata["issuer"].rstrip("/")
    configuration = dict(metadata)
    configuration.update({
        "userinfo_endpoint": base + USERINFO_PATH,
        "end_session_endpoint": base + END_SESSION_PATH,
        "subject_types_supported": ["public"],
        # The algorithm INBOUND_ID_TOKEN_ALG names (RS256 by default: Core §15.1 requires it available).
        "id_token_signing_alg_values_supported": list(id_token_algs),
        "scopes_supported": list(STANDARD_SCOPES),
        "claims_supported": list(SUPPORTED_CLAIMS),
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    })
    return configuration


def routes(metadata: dict, jwks: Callable[[], Awaitable[dict]],
           openid_configuration: dict | None = None) -> list[Route]:
    errors = TokenEndpointErrors()

    async def oauth_metadata(request: Request) -> Response:
        """RFC 8414 §3: authorization server metadata."""
        return json_response(metadata, headers={"Cache-Control": "public, max-age=300", **PUBLIC})

    async def jwk_set(request: Request) -> Response:
        """RFC 7517 JWK Set of every key that signs, will sign or signed unexpired tokens."""
        try:
            document = await jwks()
        except Exception as exc:
            log.warning("jwks unavailable", extra={"error": type(exc).__name__})
            return errors.render(TemporarilyUnavailable())
        return Response(json.dumps(document), media_type="application/jwk-set+json",
                        headers={"Cache-Control": "public, max-age=60", **PUBLIC})

    async def openid_metadata(request: Request) -> Response:
        """OpenID Connect Discovery 1.0 §4."""
        return json_response(openid_configuration, headers={"Cache-Control": "public, max-age=300", **PUBLIC})

    served = [
        Route(METADATA_PATH, oauth_metadata, methods=["GET"]),
        Route(JWKS_PATH, jwk_set, methods=["GET"]),
        Route(JWKS_ALIAS, jwk_set, methods=["GET"]),
    ]
    if openid_configuration is not None:
        served.append(Route(OPENID_CONFIGURATION_PATH, openid_metadata, methods=["GET"]))
    return served

"""OAuth 2.0 Token Exchange (RFC 8693): the request's parameters, the token type
identifiers, and the `act` claim.

Only the rules of the RFC live here; what a client may exchange (its policy, the
providers it trusts) is the third_party_token service's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from inboundlib.grants.api import GrantParameters, TokenRequest
from inboundlib.oauth.errors import InvalidRequest

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"

# RFC 8693 §3: token type identifiers.
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
SAML1_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:saml1"
SAML2_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:saml2"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # RFC 7519 §9

# What may be presented as a subject or actor token here: JWTs (an OpenID provider's
# ID or access token, or another JWT it signed) and Inbound's own access tokens.
SUBJECT_TOKEN_TYPES = (ID_TOKEN_TYPE, ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE)
# What may be asked for: an access token (a JWT when `jwt` is asked for).
REQUESTED_TOKEN_TYPES = (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE)

# RFC 8693 §2.1 and RFC 8707 §2: `resource` and `audience` may repeat; nothing else may.
PARAMETERS = GrantParameters(
    single=frozenset({"subject_token", "subject_token_type", "actor_token", "actor_token_type",
                      "requested_token_type", "scope"}),
    repeatable=frozenset({"resource", "audience"}))

# A JWT from an IdP is a few kilobytes; past this it is not one we would accept.
MAX_TOKEN_LENGTH = 16_384
MAX_TARGETS = 20
MAX_TARGET_LENGTH = 2048
# How deep a chain of `act` claims may nest (§4.1: each prior actor inside the current one).
MAX_ACT_DEPTH = 5


@dataclass(frozen=True)
class ExchangeRequest:
    """The parameters of RFC 8693 §2.1, checked for presence and form (not for trust)."""
    subject_token: str
    subject_token_type: str
    actor_token: str = ""
    actor_token_type: str = ""
    requested_token_type: str = ACCESS_TOKEN_TYPE
    resources: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    scope: str | None = None

    def __repr__(self) -> str:  # never the tokens
        return (f"ExchangeRequest(subject_token_type={self.subject_token_type!r}, "
                f"actor_token_type={self.actor_token_type!r}, requested_token_type={self.requested_token_type!r})")

    @property
    def targets(self) -> tuple[str, ...]:
        """Every audience and resource asked for (RFC 8693 §2.1: both name where the token is used)."""
        return tuple(dict.fromkeys(self.audiences + self.resources))


def parse_request(request: TokenRequest) -> ExchangeRequest:
    """RFC 8693 §2.1 / §2.2.2: a missing or malformed parameter is invalid_request.
    The token types are checked here against what this server understands; a type it
    does not (saml, refresh_token) is invalid_request too (§2.2.2 allows it)."""
    subject_token = request.param("subject_token") or ""
    subject_type = request.param("subject_token_type") or ""
    if not subject_token or not subject_type:
        missing = [n for n, v in (("subject_token", subject_token), ("subject_token_type", subject_type)) if not v]
        raise InvalidRequest(f"The {' and '.join(missing)} parameter{'s are' if len(missing) > 1 else ' is'} "
                             "missing.", detail=f"missing {', '.join(missing)}")
    if subject_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest("The subject_token_type is not supported.", detail="unsupported subject_token_type")
    actor_token = request.param("actor_token") or ""
    actor_type = request.param("actor_token_type") or ""
    # §2.1: actor_token_type is REQUIRED when actor_token is present, and MUST NOT be sent without it.
    if bool(actor_token) != bool(actor_type):
        raise InvalidRequest("The actor_token and actor_token_type parameters go together.",
                             detail="actor_token without its type, or a type without the token")
    if actor_type and actor_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest("The actor_token_type is not supported.", detail="unsupported actor_token_type")
    requested = request.param("requested_token_type") or ACCESS_TOKEN_TYPE
    if requested not in REQUESTED_TOKEN_TYPES:
        raise InvalidRequest("The requested_token_type is not supported.", detail="unsupported requested_token_type")
    for token in (subject_token, actor_token):
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidRequest("A token is too long.", detail=f"token over {MAX_TOKEN_LENGTH} characters")
    resources, audiences = request.values("resource"), request.values("audience")
    if len(resources) + len(audiences) > MAX_TARGETS:
        raise InvalidRequest("Too many resources or audiences.", detail="too many targets")
    for value in resources + audiences:
        if not value or len(value) > MAX_TARGET_LENGTH:
            raise InvalidRequest("A resource or audience is empty or too long.", detail="bad target")
    for value in resources:
        # RFC 8707 §2: an absolute URI without a fragment.
        if "#" in value or ":" not in value:
            raise InvalidRequest("A resource must be an absolute URI without a fragment.",
                                 detail="resource not an absolute URI")
    return ExchangeRequest(subject_token=subject_token, subject_token_type=subject_type, actor_token=actor_token,
                           actor_token_type=actor_type, requested_token_type=requested, resources=resources,
                           audiences=audiences, scope=request.param("scope"))


def act_claim(actor_sub: str, actor_iss: str, prior: object = None) -> dict:
    """RFC 8693 §4.1: the current actor, with the subject token's own `act` (the prior
    chain of delegation) nested inside it; a chain deeper than MAX_ACT_DEPTH is cut."""
    act: dict = {"sub": actor_sub}
    if actor_iss:
        act["iss"] = actor_iss
    nested = _chain(prior, MAX_ACT_DEPTH - 1)
    if nested:
        act["act"] = nested
    return act


def _chain(act: object, depth: int) -> dict | None:
    """Only sub, iss and a nested act of a prior act claim (§4.1: other claims are not meaningful there)."""
    if not isinstance(act, dict) or depth <= 0 or not isinstance(act.get("sub"), str):
        return None
    kept: dict = {"sub": act["sub"]}
    if isinstance(act.get("iss"), str):
        kept["iss"] = act["iss"]
    nested = _chain(act.get("act"), depth - 1)
    if nested:
        kept["act"] = nested
    return kept


def act_json(act: dict | None) -> str:
    return json.dumps(act, separators=(",", ":")) if act else ""


def parse_act_json(text: str) -> dict | None:
    """An `act` as carried in IssueRequest / TokenInfo; None for none or a bad one."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

"""OAuth errors as HTTP, per endpoint: the status, headers and body are the
endpoint's decision, not the error's (an error is a code and public text).

- `TokenEndpointErrors`: RFC 6749 §5.2 JSON (also RFC 7009 §2.2.1 and RFC 7662
  §2.3 for revocation and introspection); `invalid_client` is 401 with a Basic
  challenge (RFC 7235 §3.1: every 401 carries one).
- `BearerErrors`: where a bearer token is checked, RFC 6750 §3: the
  `WWW-Authenticate: Bearer` challenge with the error code, and the statuses
  of §3.1 (invalid_request 400, invalid_token 401, insufficient_scope 403).
- `RedirectErrors`: browser endpoints whose client and redirect URI are
  verified send the error back to the client, RFC 6749 §4.1.2.1 (query) and
  §4.2.2.1 (fragment), with `state` and the RFC 9207 `iss`.
- `PageErrors`: the browser's pages (authorization endpoint, sign-in, consent,
  account, end_session): an HTML page with the error's status, never a redirect
  (§4.1.2.1: the client or redirect URI could not be trusted), with the pages'
  security headers (services/edge/pages.py).
"""
from __future__ import annotations

import json
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.responses import RedirectResponse, Response

from inboundlib.oauth.errors import InvalidRequest, OAuthError, TemporarilyUnavailable
from services.edge import pages

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Every endpoint: infrastructure failure is 5xx (DESIGN.md).
_INFRASTRUCTURE = {"server_error": 500, "temporarily_unavailable": 503}
RETRY_AFTER_SECONDS = "1"


class HttpError(Exception):
    """A request the edge refuses for HTTP reasons, before any OAuth meaning:
    wrong method, body too large or too slow. Rendered with its own status by
    every endpoint, in the endpoint's body shape, as `invalid_request`."""
    status = 400
    description = "The request is malformed."

    def __init__(self, description: str | None = None):
        self.description = description or self.description
        super().__init__(self.description)

    def as_oauth(self) -> OAuthError:
        return InvalidRequest(self.description)


class MethodNotAllowed(HttpError):
    """RFC 6749 §3.2, RFC 7009 §2.1, RFC 7662 §2.1: these endpoints take POST only."""
    status = 405
    description = "This endpoint accepts POST only."


class BodyTooLarge(HttpError):
    status = 413
    description = "The request body is too large."


class BodyTooSlow(HttpError):
    """RFC 9110 §15.5.9: the client did not send its body in time."""
    status = 408
    description = "The request body was not received in time."


class Throttled(HttpError):
    """RFC 6585 §4: too many failed client authentications from this address (for this
    client id, or for any): answered before the request's secret is checked. Retry-After
    says when to try again, in whole seconds."""
    status = 429
    description = "Too many failed client authentications; retry after the time in Retry-After."

    def __init__(self, retry_after: int):
        super().__init__()
        self.retry_after = retry_after

    def as_oauth(self) -> OAuthError:
        return TemporarilyUnavailable(self.description)


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


def _infrastructure_headers(headers: dict, status: int) -> dict:
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER_SECONDS
    return headers


class TokenEndpointErrors:
    """RFC 6749 §5.2 (and RFC 7009 §2.2.1, RFC 7662 §2.3): JSON, never cached."""

    STATUS = {"invalid_client": 401, **_INFRASTRUCTURE}
    CHALLENGE = 'Basic realm="inbound", charset="UTF-8"'

    def status(self, error: OAuthError) -> int:
        return self.STATUS.get(error.code, 400)

    def render(self, error: OAuthError | HttpError) -> Response:
        if isinstance(error, HttpError):
            return json_response(error.as_oauth().to_json(), error.status, dict(NO_STORE))
        status = self.status(error)
        headers = _infrastructure_headers(dict(NO_STORE), status)
        if status == 401:
            headers["WWW-Authenticate"] = self.CHALLENGE
        return json_response(error.to_json(), status, headers)


def _quoted(value: str) -> str:
    """An RFC 7235 quoted-string; RFC 6750 §3 limits the values to %x20-21 / %x23-5B / %x5D-7E."""
    return '"' + "".join(c for c in value if " " <= c <= "~" and c not in '"\\') + '"'


class BearerErrors:
    """RFC 6750 §3 and §3.1, for endpoints that check a bearer token."""

    STATUS = {"invalid_request": 400, "invalid_token": 401, "insufficient_scope": 403, **_INFRASTRUCTURE}

    def __init__(self, realm: str = "inbound"):
        self.realm = realm

    def status(self, error: OAuthError) -> int:
        return self.STATUS.get(error.code, 400)

    def challenge(self, error: OAuthError | None = None, scope: str = "") -> str:
        """§3: with no token sent at all the challenge carries no error code (§3.1)."""
        parts = [f"realm={_quoted(self.realm)}"]
        if error is not None:
            parts += [f"error={_quoted(error.code)}", f"error_description={_quoted(error.description)}"]
        if scope:
            parts.append(f"scope={_quoted(scope)}")
        return "Bearer " + ", ".join(parts)

    def missing_token(self) -> Response:
        """§3.1: the request carried no token: 401 and a bare challenge."""
        return Response(b"", status_code=401, headers={**NO_STORE, "WWW-Authenticate": self.challenge()})

    def render(self, error: OAuthError | HttpError, *, scope: str = "") -> Response:
        if isinstance(error, HttpError):
            oauth = error.as_oauth()
            return json_response(oauth.to_json(), error.status,
                                 {**NO_STORE, "WWW-Authenticate": self.challenge(oauth)})
        status = self.status(error)
        headers = _infrastructure_headers(dict(NO_STORE), status)
        if status < 500:
            headers["WWW-Authenticate"] = self.challenge(error, scope)
        return json_response(error.to_json(), status, headers)


class RedirectErrors:
    """RFC 6749 §4.1.2.1 / §4.2.2.1: the error goes back to the client's verified
    redirect URI, with `state` as received and `iss` (RFC 9207 §2)."""

    def __init__(self, issuer: str):
        self.issuer = issuer

    def render(self, error: OAuthError, redirect_uri: str, *, state: str = "", fragment: bool = False) -> Response:
        params = {"error": error.code, "error_description": error.description}
        if state:
            params["state"] = state
        params["iss"] = self.issuer
        scheme, netloc, path, query, existing_fragment = urlsplit(redirect_uri)
        encoded = urlencode(params)
        if fragment:  # §4.2.2.1: the implicit grant answers in the fragment
            location = urlunsplit((scheme, netloc, path, query, encoded))
        else:  # §3.1.2: keep the redirect URI's own query, add ours
            location = urlunsplit((scheme, netloc, path, f"{query}&{encoded}" if query else encoded, ""))
        # 303: the browser follows with a GET whatever method brought it here.
        return RedirectResponse(location, status_code=303, headers=dict(NO_STORE))


class CsrfRefused(HttpError):
    """A browser form POSTed without the CSRF token of this browser's CSRF cookie, or
    from another origin (services/edge/cookies.py): refused before anything is called."""
    status = 403
    description = ("This form was not sent from this site, or has expired. Go back, reload the page "
                   "and try again.")


class PageErrors:
    """§4.1.2.1: the browser's endpoints show the user an error page and never
    redirect. Every value escaped by the template; the pages' security headers."""

    STATUS = {"access_denied": 403, **_INFRASTRUCTURE}

    def __init__(self, prefix: str = ""):
        self.prefix = prefix

    def status(self, error: OAuthError) -> int:
        return self.STATUS.get(error.code, 400)

    def page(self, error: str, description: str, status: int) -> Response:
        return pages.render("error.html", status, _infrastructure_headers({}, status), prefix=self.prefix,
                            error=error, description=description)

    def render(self, error: OAuthError | HttpError) -> Response:
        status = error.status if isinstance(error, HttpError) else self.status(error)
        oauth = error.as_oauth() if isinstance(error, HttpError) else error
        return self.page(oauth.code, oauth.description, status)


__all__ = ["BearerErrors", "BodyTooLarge", "BodyTooSlow", "CsrfRefused", "HttpError", "MethodNotAllowed", "NO_STORE",
           "PageErrors", "RedirectErrors", "Throttled", "TokenEndpointErrors", "json_response"]

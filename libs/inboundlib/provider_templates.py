"""The usual settings of well-known OpenID providers, for `inboundctl provider add --template`.

A template fills what every installation of that provider shares (the issuer's shape, the
discovery document, the signing algorithm, the claim that names the user); the operator
still gives what is theirs (the tenant or domain, the accepted audiences) and may override
any value. The values are the providers' documented ones:

- azure (Microsoft Entra ID, v2.0 endpoints): issuer https://login.microsoftonline.com/{tenant}/v2.0
  for ID tokens and v2 access tokens (an API's app registration needs
  accessTokenAcceptedVersion 2, else its access tokens carry the v1 issuer
  https://sts.windows.net/{tenant}/); RS256; the user by `oid`, the user's immutable object id
  in the tenant (Microsoft's claims reference: preferred_username, email and upn are mutable,
  may be reassigned, and must not be used for authorization decisions). The tenant is its id
  (a GUID): the tokens' iss and the tenant's discovery document name it so, also when the
  tenant is reached by one of its domain names, so a domain would match no token.
- okta (a custom authorization server, "default" unless named): https://{domain}/oauth2/{server}; RS256.
- auth0: https://{domain}/ (the trailing slash is part of Auth0's issuer); RS256.
- google: https://accounts.google.com; RS256; the user by email.
The tenant must be one tenant: "common", "organizations" and "consumers" are multi-tenant
aliases whose tokens carry each tenant's own issuer, which a single provider cannot pin.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)+$")
_TENANT_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SERVER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MULTI_TENANT_ALIASES = ("common", "organizations", "consumers")


class TemplateError(ValueError):
    """A template's parameter is missing or malformed; the message says which."""


@dataclass(frozen=True)
class ProviderTemplate:
    name: str
    title: str
    issuer: str  # with {tenant}, {domain} or {server} to fill
    needs: tuple[str, ...]  # the parameters the operator gives: tenant, domain
    user_claim: str
    user_field: str
    algorithms: tuple[str, ...] = ("RS256",)

    def fill(self, *, tenant: str = "", domain: str = "", server: str = "default") -> dict[str, object]:
        """The provider's settings: issuer, discovery_url, algorithms, user_claim, user_field, template."""
        values = {"tenant": _tenant(tenant) if "tenant" in self.needs else "",
                  "domain": _domain(domain) if "domain" in self.needs else "",
                  "server": _server(server) if "{server}" in self.issuer else ""}
        issuer = self.issuer.format(**values)
        return {"issuer": issuer, "discovery_url": issuer.rstrip("/") + "/.well-known/openid-configuration",
                "algorithms": self.algorithms, "user_claim": self.user_claim, "user_field": self.user_field,
                "template": self.name}


def _tenant(value: str) -> str:
    if not value:
        raise TemplateError("the azure template needs --tenant (the directory's tenant id or a verified domain)")
    if value.lower() in MULTI_TENANT_ALIASES:
        raise TemplateError(f"--tenant {value}: a multi-tenant alias has no one issuer; give the tenant's own id")
    if not _TENANT_ID.match(value):
        raise TemplateError("--tenant is the directory's tenant id (a GUID): Entra ID's tokens name their tenant"
                            " by it, never by a domain name")
    return value.lower()


def _domain(value: str) -> str:
    if not value:
        raise TemplateError("this template needs --domain (the provider's host name, e.g. acme.okta.com)")
    if not _HOST.match(value):
        raise TemplateError("--domain is a host name only (no scheme, port or path)")
    return value.lower()


def _server(value: str) -> str:
    if not _SERVER.match(value):
        raise TemplateError("--auth-server is an Okta authorization server id (letters, digits, - and _)")
    return value


TEMPLATES: dict[str, ProviderTemplate] = {t.name: t for t in (
    ProviderTemplate("azure", "Microsoft Entra ID (Azure AD)", "https://login.microsoftonline.com/{tenant}/v2.0",
                     ("tenant",), user_claim="oid", user_field="username"),
    ProviderTemplate("okta", "Okta (custom authorization server)", "https://{domain}/oauth2/{server}", ("domain",),
                     user_claim="email", user_field="email"),
    ProviderTemplate("auth0", "Auth0", "https://{domain}/", ("domain",), user_claim="email", user_field="email"),
    ProviderTemplate("google", "Google", "https://accounts.google.com", (), user_claim="email", user_field="email"),
)}

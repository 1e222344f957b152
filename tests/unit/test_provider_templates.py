"""The provider templates fill each provider's documented issuer and discovery document,
and refuse what cannot name one issuer."""
from __future__ import annotations

import pytest

from inboundlib.provider_templates import TEMPLATES, TemplateError


def test_each_template_fills_its_documented_issuer():
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    azure = TEMPLATES["azure"].fill(tenant=tenant.upper())
    assert azure["issuer"] == f"https://login.microsoftonline.com/{tenant}/v2.0"
    # The immutable object id, never preferred_username/email/upn (mutable, reassignable: Microsoft's
    # ID token claims reference says they must not be used for authorization decisions).
    assert (azure["user_claim"], azure["user_field"]) == ("oid", "username")
    assert TEMPLATES["okta"].fill(domain="acme.okta.com")["issuer"] == "https://acme.okta.com/oauth2/default"
    assert TEMPLATES["okta"].fill(domain="acme.okta.com", server="aus1")["issuer"] == "https://acme.okta.com/oauth2/aus1"
    auth0 = TEMPLATES["auth0"].fill(domain="acme.eu.auth0.com")
    assert auth0["issuer"] == "https://acme.eu.auth0.com/"  # Auth0's issuer ends with a slash
    assert auth0["discovery_url"] == "https://acme.eu.auth0.com/.well-known/openid-configuration"
    google = TEMPLATES["google"].fill()
    assert google["issuer"] == "https://accounts.google.com" and google["user_claim"] == "email"
    assert google["discovery_url"] == "https://accounts.google.com/.well-known/openid-configuration"
    assert all(t.fill(tenant=tenant, domain="a.example")["algorithms"] == ("RS256",) for t in TEMPLATES.values())


@pytest.mark.parametrize("name,params,why", [
    ("azure", {}, "needs --tenant"),
    ("azure", {"tenant": "common"}, "multi-tenant"),
    ("azure", {"tenant": "not a tenant"}, "GUID"),
    # A domain reaches the tenant's endpoints, but its tokens' iss names the tenant's GUID.
    ("azure", {"tenant": "contoso.onmicrosoft.com"}, "GUID"),
    ("okta", {}, "needs --domain"),
    ("okta", {"domain": "https://acme.okta.com"}, "host name"),
    ("auth0", {"domain": "acme.auth0.com/x"}, "host name"),
    ("okta", {"domain": "acme.okta.com", "server": "../x"}, "auth-server"),
])
def test_a_template_refuses_what_names_no_one_issuer(name, params, why):
    with pytest.raises(TemplateError, match=why):
        TEMPLATES[name].fill(**params)

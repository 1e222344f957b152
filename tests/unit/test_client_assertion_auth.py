"""Client authentication by JWT (RFC 7523 §2.2, RFC 7521 §4.2) in inboundlib.oauth.client_auth:
extracting client_assertion, one method per client, and JwtClientAuth's hand-off to the verifier."""
from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from inboundlib.grants.api import RequestContext
from inboundlib.oauth.client_auth import (
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_JWT,
    CLIENT_SECRET_POST,
    JWT_ASSERTION_TYPE,
    MAX_CLIENT_ASSERTION,
    NONE,
    PRIVATE_KEY_JWT,
    ClientAssertion,
    ClientAuthenticator,
    ClientCredentials,
    extract_credentials,
    hash_client_secret,
)
from inboundlib.oauth.errors import InvalidClient, InvalidRequest, KeysPending

KEY = ec.generate_private_key(ec.SECP256R1())
HMAC_SECRET = "a-client-secret-of-thirty-two-bytes!"


def assertion(claims: dict | None = None, alg: str = "ES256", key=KEY) -> str:
    claims = {"iss": "app", "sub": "app", "aud": "https://as.example/oauth/token", "exp": 2_000_000_000,
              "jti": "j1", **(claims or {})}
    return jwt.encode(claims, HMAC_SECRET if alg.startswith("HS") else key, algorithm=alg)


def form(value: str | None = None, kind: str | None = JWT_ASSERTION_TYPE, **extra) -> dict:
    params = {"client_assertion": assertion() if value is None else value, **extra}
    if kind is not None:
        params["client_assertion_type"] = kind
    return params


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# --- extraction ---------------------------------------------------------------------


def test_private_key_jwt_is_recognised_by_an_asymmetric_alg():
    token = assertion()
    params = form(token, grant_type="client_credentials")
    creds = extract_credentials(None, params)
    assert (creds.method, creds.client_id, creds.client_assertion) == (PRIVATE_KEY_JWT, "app", token)
    assert params == {"grant_type": "client_credentials"}, "the credentials leave the parameters"
    assert token not in repr(creds)


def test_client_secret_jwt_is_recognised_by_an_hs_alg():
    creds = extract_credentials(None, form(assertion(alg="HS256")))
    assert (creds.method, creds.client_id) == (CLIENT_SECRET_JWT, "app")


def test_a_client_id_naming_the_same_client_is_accepted():
    assert extract_credentials(None, form(client_id="app")).client_id == "app"


def test_a_client_id_naming_another_client_is_invalid_client():
    with pytest.raises(InvalidClient):
        extract_credentials(None, form(client_id="other"))


def test_iss_and_sub_must_be_equal():
    with pytest.raises(InvalidClient) as info:
        extract_credentials(None, form(assertion({"iss": "app", "sub": "other"})))
    assert "iss and sub" in info.value.detail


@pytest.mark.parametrize("claims", [{"iss": None}, {"sub": None}, {"sub": 7, "iss": 7}])
def test_iss_and_sub_are_required_strings(claims):
    claims = {k: v for k, v in {"iss": "app", "sub": "app", **claims}.items() if v is not None}
    token = b64({"alg": "ES256"}) + "." + b64({"aud": "x", **claims}) + ".c2ln"  # (pyjwt refuses to make it)
    with pytest.raises(InvalidClient):
        extract_credentials(None, form(token))


def test_a_wrong_assertion_type_is_invalid_client():
    with pytest.raises(InvalidClient) as info:
        extract_credentials(None, form(kind="urn:ietf:params:oauth:client-assertion-type:saml2-bearer"))
    assert info.value.description == "Unsupported client assertion type."


@pytest.mark.parametrize("params", [form(kind=None), {"client_assertion_type": JWT_ASSERTION_TYPE},
                                    form(kind=""), form("")])
def test_a_missing_half_is_invalid_request(params):
    with pytest.raises(InvalidRequest):
        extract_credentials(None, params)


@pytest.mark.parametrize("value", ["not-a-jwt", "a.b.c", b64({"alg": "ES256"}) + ".e30", "..",
                                   b64({"alg": "ES256"}) + "." + b64({"iss": "app"})[:-1] + "!.sig"])
def test_a_malformed_assertion_is_invalid_client(value):
    with pytest.raises(InvalidClient):
        extract_credentials(None, form(value))


@pytest.mark.parametrize("header", [{"alg": "none"}, {"alg": "NONE"}, {}, {"alg": 5}])
def test_an_assertion_without_a_signing_alg_is_invalid_client(header):
    token = b64(header) + "." + b64({"iss": "app", "sub": "app"}) + "."
    with pytest.raises(InvalidClient):
        extract_credentials(None, form(token))


def test_an_oversized_assertion_is_refused_unparsed(monkeypatch):
    parsed = []
    monkeypatch.setattr(jwt, "get_unverified_header", lambda t: parsed.append(t) or {})
    with pytest.raises(InvalidClient):
        extract_credentials(None, form(assertion({"pad": "x" * MAX_CLIENT_ASSERTION})))
    assert parsed == []


def test_assertion_and_a_secret_is_invalid_request():
    with pytest.raises(InvalidRequest):
        extract_credentials(None, form(client_id="app", client_secret="s"))


def test_assertion_and_basic_is_invalid_request():
    header = "Basic " + base64.b64encode(b"app:s").decode()
    with pytest.raises(InvalidRequest):
        extract_credentials(header, form())


def test_the_client_id_of_the_claims_must_be_a_client_id():
    with pytest.raises(InvalidClient):
        extract_credentials(None, form(assertion({"iss": "a\x00b", "sub": "a\x00b"})))


# --- one method per client, and the hand-off to the verifier ---------------------------


@dataclass
class Client:
    client_id: str = "app"
    secret_hash: str = field(default_factory=lambda: hash_client_secret("s"))
    public: bool = False
    active: bool = True
    grant_types: list[str] = field(default_factory=lambda: ["client_credentials"])
    token_endpoint_auth_method: str = PRIVATE_KEY_JWT


class Verifier:
    def __init__(self, outcome: Exception | None = None):
        self.outcome = outcome
        self.asked: list[ClientAssertion] = []

    async def verify_client_assertion(self, item: ClientAssertion) -> None:
        self.asked.append(item)
        if self.outcome is not None:
            raise self.outcome


class Clients:
    def __init__(self, *clients):
        self.clients = {c.client_id: c for c in clients}

    async def get_client(self, client_id):
        return self.clients.get(client_id)


def run(coro):
    return asyncio.run(coro)


CONTEXT = RequestContext(endpoint_url="https://as.example/oauth/introspect")


def test_an_assertion_is_verified_by_the_verifier_with_the_endpoint_url():
    verifier = Verifier()
    client = Client()
    creds = extract_credentials(None, form())
    assert run(ClientAuthenticator(Clients(client), verifier=verifier).authenticate(creds, CONTEXT)) is client
    [asked] = verifier.asked
    assert (asked.client_id, asked.method, asked.assertion, asked.endpoint_url) == (
        "app", PRIVATE_KEY_JWT, creds.client_assertion, CONTEXT.endpoint_url)


def test_the_verifier_s_refusal_is_the_answer():
    verifier = Verifier(InvalidClient(detail="wrong aud"))
    with pytest.raises(InvalidClient) as info:
        run(ClientAuthenticator(Clients(Client()), verifier=verifier).authenticate(
            extract_credentials(None, form()), CONTEXT))
    assert info.value.detail == "wrong aud"


def test_keys_pending_passes_through():
    verifier = Verifier(KeysPending(detail="jwks being fetched"))
    with pytest.raises(KeysPending):
        run(ClientAuthenticator(Clients(Client()), verifier=verifier).authenticate(
            extract_credentials(None, form()), CONTEXT))


def test_without_a_verifier_jwt_methods_are_not_supported():
    with pytest.raises(InvalidClient) as info:
        run(ClientAuthenticator(Clients(Client())).authenticate(extract_credentials(None, form()), CONTEXT))
    assert "not supported" in info.value.detail


@pytest.mark.parametrize(("registered", "creds"), [
    (PRIVATE_KEY_JWT, ClientCredentials(CLIENT_SECRET_BASIC, "app", "s")),
    (PRIVATE_KEY_JWT, ClientCredentials(CLIENT_SECRET_JWT, "app", client_assertion=assertion(alg="HS256"))),
    (CLIENT_SECRET_JWT, ClientCredentials(PRIVATE_KEY_JWT, "app", client_assertion=assertion())),
    (CLIENT_SECRET_JWT, ClientCredentials(CLIENT_SECRET_POST, "app", "s")),
    (CLIENT_SECRET_BASIC, ClientCredentials(CLIENT_SECRET_POST, "app", "s")),
    (CLIENT_SECRET_POST, ClientCredentials(CLIENT_SECRET_BASIC, "app", "s")),
    (CLIENT_SECRET_BASIC, ClientCredentials(PRIVATE_KEY_JWT, "app", client_assertion=assertion())),
], ids=["pkjwt-basic", "pkjwt-hs256", "csjwt-pkjwt", "csjwt-post", "basic-post", "post-basic", "basic-pkjwt"])
def test_a_client_may_use_only_the_method_it_is_registered_for(registered, creds):
    verifier = Verifier()
    with pytest.raises(InvalidClient) as info:
        run(ClientAuthenticator(Clients(Client(token_endpoint_auth_method=registered)), verifier=verifier)
            .authenticate(creds, CONTEXT))
    assert info.value.detail == f"client is registered for {registered}, sent {creds.method}"
    assert verifier.asked == [], "never verified: the method alone refuses it"


def test_the_registered_method_is_accepted():
    for registered, creds in [(CLIENT_SECRET_POST, ClientCredentials(CLIENT_SECRET_POST, "app", "s")),
                              (CLIENT_SECRET_JWT, ClientCredentials(CLIENT_SECRET_JWT, "app",
                                                                    client_assertion=assertion(alg="HS256")))]:
        client = Client(token_endpoint_auth_method=registered)
        assert run(ClientAuthenticator(Clients(client), verifier=Verifier()).authenticate(creds, CONTEXT)) is client


def test_a_public_client_may_only_name_itself():
    verifier = Verifier()
    client = Client(public=True, secret_hash="", token_endpoint_auth_method=PRIVATE_KEY_JWT)
    authenticator = ClientAuthenticator(Clients(client), verifier=verifier)
    assert run(authenticator.authenticate(ClientCredentials(NONE, "app"))) is client
    with pytest.raises(InvalidClient):
        run(authenticator.authenticate(extract_credentials(None, form()), CONTEXT))
    assert verifier.asked == []


def test_a_disabled_client_is_refused_before_its_assertion_is_verified():
    verifier = Verifier()
    with pytest.raises(InvalidClient) as info:
        run(ClientAuthenticator(Clients(Client(active=False)), verifier=verifier).authenticate(
            extract_credentials(None, form()), CONTEXT))
    assert info.value.detail == "client is disabled"
    assert verifier.asked == []


# --- the grant runner passes keys_pending on --------------------------------------------------


async def test_the_grant_runner_passes_keys_pending_on_unaudited_and_uncounted():
    from inboundlib.events import TOKEN_DENIED
    from inboundlib.grants.api import GrantParameters, TokenRequest, TokenResponse
    from inboundlib.grants.runner import GrantRunner
    from inboundlib.metrics import TOKEN_REQUESTS
    from tests.fakes import FakeBus

    class Grant:
        grant_type = "client_credentials"
        parameters = GrantParameters()
        authenticates_client = False

        async def handle(self, request, client):
            return TokenResponse(access_token="t", token_type="Bearer", expires_in=60)

    def counted() -> dict:
        return {sample.labels["outcome"]: sample.value for metric in TOKEN_REQUESTS.collect()
                for sample in metric.samples
                if sample.name.endswith("_total") and sample.labels["grant_type"] == "client_credentials"}

    bus = FakeBus()
    runner = GrantRunner(Grant(), ClientAuthenticator(Clients(Client()), verifier=Verifier(KeysPending())), bus)
    before = counted()
    with pytest.raises(KeysPending):
        await runner.handle(TokenRequest(grant_type="client_credentials", client=extract_credentials(None, form()),
                                         context=CONTEXT))
    assert bus.events(TOKEN_DENIED) == [], "no refusal to audit: the edge asks again"
    assert counted() == before, "no denial counted"

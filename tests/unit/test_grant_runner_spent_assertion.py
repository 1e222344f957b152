"""The grant runner and keys being fetched after a client assertion was used (RFC 7523 §2.2,
issue "Federation", "No HTTP in a batch"): the edge sends a keys_pending request again, which is
right while the client's credential can be checked twice (a secret), but a verified client
assertion's jti is spent, so the same request would come back as a replay (invalid_client,
counted by the failed-authentication throttle). Keys pending in the grant itself after such an
authentication are answered temporarily_unavailable: the client retries with a new assertion."""
from __future__ import annotations

from dataclasses import dataclass, field

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from inboundlib.events import TOKEN_DENIED
from inboundlib.grants.api import GrantParameters, RequestContext, TokenRequest
from inboundlib.grants.runner import GrantRunner
from inboundlib.oauth.client_auth import (
    CLIENT_SECRET_BASIC,
    JWT_ASSERTION_TYPE,
    PRIVATE_KEY_JWT,
    ClientAuthenticator,
    ClientCredentials,
    extract_credentials,
    hash_client_secret,
)
from inboundlib.oauth.errors import KeysPending, TemporarilyUnavailable
from tests.fakes import FakeBus

KEY = ec.generate_private_key(ec.SECP256R1())
SECRET = "a-client-secret-of-thirty-two-bytes!"
CONTEXT = RequestContext(endpoint_url="https://as.example/oauth/token")
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class Client:
    client_id: str = "app"
    token_endpoint_auth_method: str = PRIVATE_KEY_JWT
    secret_hash: str = hash_client_secret(SECRET)
    public: bool = False
    active: bool = True
    grant_types: list = field(default_factory=lambda: [GRANT])


class Clients:
    def __init__(self, client):
        self.client = client

    async def get_client(self, client_id):
        return self.client if client_id == self.client.client_id else None


class Verifier:
    """jwt_bearer's verdict: the assertion proves the client (its jti now used)."""
    async def verify_client_assertion(self, item) -> None:
        return None


class KeysPendingGrant:
    """A grant whose own keys (an integration's, a provider's) are still being fetched."""
    grant_type = GRANT
    parameters = GrantParameters(single=frozenset({"assertion"}))
    authenticates_client = False

    async def handle(self, request, client):
        raise KeysPending(detail="integration keys being fetched")


def assertion_credentials() -> ClientCredentials:
    signed = jwt.encode({"iss": "app", "sub": "app", "aud": CONTEXT.endpoint_url, "exp": 2_000_000_000,
                         "jti": "j1"}, KEY, algorithm="ES256")
    return extract_credentials(None, {"client_assertion_type": JWT_ASSERTION_TYPE, "client_assertion": signed})


def runner(client: Client, bus: FakeBus) -> GrantRunner:
    return GrantRunner(KeysPendingGrant(), ClientAuthenticator(Clients(client), verifier=Verifier()), bus)


async def test_keys_pending_after_a_client_assertion_is_temporarily_unavailable_not_sent_again():
    bus = FakeBus()
    with pytest.raises(TemporarilyUnavailable) as info:
        await runner(Client(), bus).handle(TokenRequest(grant_type=GRANT, client=assertion_credentials(),
                                                        params={"assertion": ("a",)}, context=CONTEXT))
    assert not isinstance(info.value, KeysPending), "the edge would resend a spent client assertion"
    assert bus.events(TOKEN_DENIED) == [], "not a refusal of the client"


async def test_keys_pending_after_a_client_secret_is_still_sent_again():
    bus = FakeBus()
    creds = ClientCredentials(CLIENT_SECRET_BASIC, "app", SECRET)
    with pytest.raises(KeysPending):
        await runner(Client(token_endpoint_auth_method=CLIENT_SECRET_BASIC), bus).handle(
            TokenRequest(grant_type=GRANT, client=creds, params={"assertion": ("a",)}, context=CONTEXT))
    assert bus.events(TOKEN_DENIED) == []

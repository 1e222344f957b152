"""services.jwt_bearer.client_assertions: RFC 7523 §3 for client authentication (§2.2),
rule by rule, with the real validator and real keys; the registry, the jti store and the
fetcher are in-memory stand-ins."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import os
import time
import uuid
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.utils import base64url_encode

from inboundlib.events import CLIENT_CHANGED, ENTITY_CLIENT, registry_changed
from inboundlib.jose.validator import JwtValidator
from inboundlib.kek import KeyEncryptor
from inboundlib.oauth.client_auth import CLIENT_SECRET_JWT, PRIVATE_KEY_JWT, ClientAssertion
from inboundlib.oauth.errors import InvalidClient, KeysPending
from services.jwt_bearer.assembly import JwtBearerService
from services.jwt_bearer.client_assertions import AssertionSettings, ClientAssertionChecker
from tests.fakes import FakeBus, FakeClients, client_record

ISSUER = "https://as.example"
TOKEN_ENDPOINT = ISSUER + "/oauth/token"
INTROSPECT = ISSUER + "/oauth/introspect"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SECRET = "a-client-secret-that-is-long-enough-0123456789"
KEK = KeyEncryptor(os.urandom(32))


def jwks(*keys) -> str:
    out = []
    for index, key in enumerate(keys):
        algorithm = ECAlgorithm if isinstance(key, ec.EllipticCurvePrivateKey) else RSAAlgorithm
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        out.append({**jwk, "kid": f"k{index}"})
    return json.dumps({"keys": out})


PKJWT = client_record(client_id="pk", token_endpoint_auth_method=PRIVATE_KEY_JWT, jwks=jwks(EC_KEY, RSA_KEY))
CSJWT = client_record(client_id="cs", token_endpoint_auth_method=CLIENT_SECRET_JWT)
REMOTE = client_record(client_id="remote", token_endpoint_auth_method=PRIVATE_KEY_JWT,
                       jwks_uri="https://keys.example/jwks")


class Jtis:
    def __init__(self):
        self.seen: dict[tuple[str, str], int] = {}

    async def first_use(self, namespace, jti, expires_at):
        if (namespace, jti) in self.seen:
            return False
        self.seen[(namespace, jti)] = expires_at
        return True


class Secrets:
    def __init__(self, sealed: dict[str, bytes]):
        self.sealed = sealed
        self.asked = 0

    async def get_client_secrets(self, client_ids):
        self.asked += 1
        return [self.sealed.get(c, b"") for c in client_ids]


class Fetcher:
    """The fetcher answers only from its cache: a miss starts a fetch and is KeysPending."""

    def __init__(self, cached: dict | None = None):
        self.cached = cached or {}
        self.warmed: list[str] = []

    def key_set(self, url, *, max_cache=None):
        from inboundlib.jose.keys import KeySet
        if url not in self.cached:
            raise KeysPending(detail="jwks being fetched")
        return KeySet.from_jwks(self.cached[url])

    def refetch_for_unknown_kid(self, url):
        return False

    def warm(self, url, kind, max_cache=None):
        self.warmed.append(url)


def checker(*clients, fetcher=None, jtis=None, sealed=None, **settings):
    sealed = {"cs": KEK.encrypt("client:cs", SECRET.encode())} if sealed is None else sealed
    return ClientAssertionChecker(
        AssertionSettings(issuer=ISSUER, **settings), clients=FakeClients(*(clients or (PKJWT, CSJWT, REMOTE))),
        secrets=Secrets(sealed), opener=KEK, fetcher=fetcher or Fetcher(), validator=JwtValidator(jtis or Jtis()))


def sign(client_id="pk", *, alg="ES256", key=EC_KEY, kid="k0", **claims) -> str:
    now = int(time.time())
    body = {"iss": client_id, "sub": client_id, "aud": TOKEN_ENDPOINT, "iat": now, "exp": now + 60,
            "jti": str(uuid.uuid4()), **claims}
    body = {k: v for k, v in body.items() if v is not None}
    secret = SECRET if alg.startswith("HS") else key
    return jwt.encode(body, secret, algorithm=alg, headers={"kid": kid} if kid else None)


def verify(check, token, client_id="pk", method=PRIVATE_KEY_JWT, endpoint=TOKEN_ENDPOINT):
    return asyncio.run(check.verify_client_assertion(ClientAssertion(client_id, method, token, endpoint)))


def refused(check, token, client_id="pk", method=PRIVATE_KEY_JWT, endpoint=TOKEN_ENDPOINT) -> str:
    with pytest.raises(InvalidClient) as info:
        verify(check, token, client_id, method, endpoint)
    assert info.value.description == InvalidClient.default_description
    assert token not in info.value.detail
    return info.value.detail


# --- what is accepted -----------------------------------------------------------------------------

def test_private_key_jwt_with_an_inline_jwks():
    verify(checker(), sign())
    verify(checker(), sign(alg="RS256", key=RSA_KEY, kid="k1"))


@pytest.mark.parametrize("aud", [TOKEN_ENDPOINT, ISSUER, INTROSPECT, [INTROSPECT, "https://other"]])
def test_aud_may_name_the_endpoint_it_is_sent_to_the_token_endpoint_or_the_issuer(aud):
    verify(checker(), sign(aud=aud), endpoint=INTROSPECT)


def test_client_secret_jwt_with_the_sealed_secret():
    check = checker()
    verify(check, sign("cs", alg="HS256", kid=None), "cs", CLIENT_SECRET_JWT)
    verify(check, sign("cs", alg="HS256", kid=None), "cs", CLIENT_SECRET_JWT)
    assert check.secrets.asked == 1, "opened once while the record is unchanged"


def test_a_rotated_secret_is_opened_again():
    check = checker()
    verify(check, sign("cs", alg="HS256", kid=None), "cs", CLIENT_SECRET_JWT)
    check.clients.put(dataclasses.replace(CSJWT, secret_rotated_at=CSJWT.secret_rotated_at + 1))
    check.secrets.sealed["cs"] = KEK.encrypt("client:cs", b"another-secret-of-sufficient-length-0123456")
    assert "bad signature" in refused(check, sign("cs", alg="HS256", kid=None), "cs", CLIENT_SECRET_JWT)


async def test_a_second_rotation_within_the_same_second_is_seen_on_the_client_s_event():
    """The opened-secret memo is versioned by the record's times in whole seconds: a client's
    change event drops it (two rotations in one second left the first new secret usable)."""
    check = checker()
    await check.verify_client_assertion(ClientAssertion("cs", CLIENT_SECRET_JWT, sign("cs", alg="HS256", kid=None),
                                                        TOKEN_ENDPOINT))
    check.secrets.sealed["cs"] = KEK.encrypt("client:cs", b"another-secret-of-sufficient-length-0123456")
    bus = FakeBus()
    service = JwtBearerService(grant=SimpleNamespace(api=SimpleNamespace(handle=None), clients=check.clients),
                               assertions=check, fetcher=None, integrations=None)
    await service.attach(bus)
    bus.publish(CLIENT_CHANGED, registry_changed(ENTITY_CLIENT, "cs", "secret_rotated"))
    await bus.deliver()
    with pytest.raises(InvalidClient) as info:
        await check.verify_client_assertion(ClientAssertion("cs", CLIENT_SECRET_JWT,
                                                            sign("cs", alg="HS256", kid=None), TOKEN_ENDPOINT))
    assert "bad signature" in info.value.detail


# --- each rule ------------------------------------------------------------------------------------

def test_wrong_aud():
    assert "audience" in refused(checker(), sign(aud="https://elsewhere.example/token"))


def test_iss_must_be_the_client():
    assert "issuer" in refused(checker(), sign(iss="other"))


def test_sub_must_be_the_client():
    assert "subject" in refused(checker(), sign(sub="other"))


def test_expired_beyond_the_skew():
    now = int(time.time())
    assert "expired" in refused(checker(skew=30), sign(iat=now - 200, exp=now - 100))


def test_a_lifetime_beyond_the_maximum():
    now = int(time.time())
    assert "lifetime" in refused(checker(max_lifetime=300), sign(iat=now, exp=now + 301))


@pytest.mark.parametrize("claim", ["exp", "jti", "aud"])
def test_required_claims(claim):
    assert f"missing claim {claim}" in refused(checker(), sign(**{claim: None}))


def test_a_replayed_jti_is_refused_in_the_client_s_namespace():
    jtis = Jtis()
    check = checker(jtis=jtis)
    token = sign(jti="once")
    verify(check, token)
    assert "replayed" in refused(check, token)
    assert ("client:pk", "once") in jtis.seen


def test_the_same_jti_from_another_client_is_not_a_replay():
    jtis = Jtis()
    check = checker(jtis=jtis)
    verify(check, sign(jti="shared"))
    verify(check, sign("cs", alg="HS256", kid=None, jti="shared"), "cs", CLIENT_SECRET_JWT)


def test_bad_signature():
    other = ec.generate_private_key(ec.SECP256R1())
    assert "bad signature" in refused(checker(), sign(key=other))


def test_the_method_must_be_the_client_s():
    assert "registered for private_key_jwt" in refused(checker(), sign(alg="HS256", kid=None), "pk",
                                                       CLIENT_SECRET_JWT)
    assert "registered for client_secret_jwt" in refused(checker(), sign("cs"), "cs", PRIVATE_KEY_JWT)


def test_hmac_with_a_public_key_client_is_refused():
    """An HS256 assertion keyed with the client's public key (the algorithm-confusion
    attack), presented as private_key_jwt: no HMAC key is in a public key set."""
    public_pem = EC_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    header = base64url_encode(json.dumps({"alg": "HS256", "kid": "k0"}).encode())
    body = base64url_encode(json.dumps({"iss": "pk", "sub": "pk", "aud": TOKEN_ENDPOINT, "iat": now,
                                        "exp": now + 60, "jti": "x"}).encode())
    signature = base64url_encode(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest())
    assert "HS256" in refused(checker(), (header + b"." + body + b"." + signature).decode())


def test_a_signing_alg_pinned_by_the_client_restricts_the_algorithm():
    pinned = dataclasses.replace(PKJWT, token_endpoint_auth_signing_alg="RS256")
    check = checker(pinned)
    verify(check, sign(alg="RS256", key=RSA_KEY, kid="k1"))
    assert "not allowed" in refused(check, sign(alg="ES256"))


def test_a_private_key_jwt_client_pinned_to_hmac_is_refused():
    assert "pinned to HS256" in refused(checker(dataclasses.replace(PKJWT, token_endpoint_auth_signing_alg="HS256")),
                                        sign())


def test_a_disabled_client_is_refused():
    assert "disabled" in refused(checker(dataclasses.replace(PKJWT, active=False)), sign())


def test_an_unknown_client_is_refused():
    assert "unknown client" in refused(checker(), sign("nobody"), "nobody")


def test_a_private_key_jwt_client_without_keys_is_refused():
    assert "no keys" in refused(checker(dataclasses.replace(PKJWT, jwks="")), sign())


def test_a_client_secret_jwt_client_without_a_sealed_secret_is_refused():
    assert "no sealed secret" in refused(checker(sealed={}), sign("cs", alg="HS256", kid=None), "cs",
                                         CLIENT_SECRET_JWT)


def test_a_secret_sealed_for_another_client_does_not_open():
    sealed = {"cs": KEK.encrypt("client:other", SECRET.encode())}
    assert "cannot be opened" in refused(checker(sealed=sealed), sign("cs", alg="HS256", kid=None), "cs",
                                         CLIENT_SECRET_JWT)


def test_keys_by_jwks_uri_not_yet_fetched_are_keys_pending_then_used():
    fetcher = Fetcher()
    check = checker(fetcher=fetcher)
    token = sign("remote")
    with pytest.raises(KeysPending):
        verify(check, token, "remote")
    fetcher.cached[REMOTE.jwks_uri] = jwks(EC_KEY)
    verify(check, token, "remote")  # the jti was not used up by the pending attempt


def test_warm_fetches_a_remote_client_s_keys_ahead():
    fetcher = Fetcher()
    check = checker(fetcher=fetcher)
    check.warm(REMOTE)
    check.warm(PKJWT)
    assert fetcher.warmed == [REMOTE.jwks_uri]


# --- over gRPC: the servicer and the batched client -----------------------------------------------

async def test_verify_over_grpc_answers_each_item_on_its_own():
    import grpc

    from services.jwt_bearer.client_assertions import ClientAssertionsClient, add_to_server

    server = grpc.aio.server()
    add_to_server(checker(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            remote = ClientAssertionsClient(channel)
            good, bad = sign(), sign(aud="https://elsewhere.example")
            outcomes = await asyncio.gather(
                remote.verify_client_assertion(ClientAssertion("pk", PRIVATE_KEY_JWT, good, TOKEN_ENDPOINT)),
                remote.verify_client_assertion(ClientAssertion("pk", PRIVATE_KEY_JWT, bad, TOKEN_ENDPOINT)),
                remote.verify_client_assertion(ClientAssertion("remote", PRIVATE_KEY_JWT, sign("remote"),
                                                               TOKEN_ENDPOINT)),
                return_exceptions=True)
    finally:
        await server.stop(0)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], InvalidClient) and "audience" in outcomes[1].detail
    assert isinstance(outcomes[2], KeysPending)


# --- review: what may be an audience, and records written around the registry's checks ------------

@pytest.mark.parametrize("elsewhere", ["https://rs.example/api", "https://as.example.evil/oauth/token",
                                       ISSUER + "/oauth/introspect?x=1"])
def test_an_endpoint_url_not_under_the_issuer_is_no_audience(elsewhere):
    """A gRPC caller (a resource server introspecting as a client) sends endpoint_url itself: an
    assertion the client made for that caller, or for another server, must not pass here."""
    assert "audience not accepted" in refused(checker(), sign(aud=elsewhere), endpoint=elsewhere)


def test_an_unusable_inline_jwks_is_invalid_client():
    broken = client_record(client_id="pk", token_endpoint_auth_method=PRIVATE_KEY_JWT, jwks="not json")
    assert "jwks is unusable" in refused(checker(broken), sign())


def test_a_secret_too_short_for_hs256_is_invalid_client():
    short = {"cs": KEK.encrypt("client:cs", b"short")}
    assert "secret is unusable" in refused(checker(sealed=short), sign("cs", alg="HS256", kid=None), "cs",
                                           CLIENT_SECRET_JWT)

"""The token exchange grant (RFC 8693 §2) rule by rule, through the grant runner, with a
real provider key (the jose validator) and in-memory fakes for the directory, the users,
the jti store and token_issuer. Each test breaks one rule of a request that otherwise
succeeds (test_control_*); the real stack runs the paths in
tests/integration/test_third_party_tokens.py."""
from __future__ import annotations

import dataclasses
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from inboundlib.grants.api import TokenRequest
from inboundlib.grants.runner import GrantRunner
from inboundlib.jose.keys import KeySet, StaticKeys
from inboundlib.jose.validator import JwtValidator
from inboundlib.oauth import token_exchange as tx
from inboundlib.oauth.client_auth import CLIENT_SECRET_BASIC, ClientCredentials, hash_client_secret
from inboundlib.oauth.errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    UnauthorizedClient,
)
from services.client_registry.api import (
    GRANT_TOKEN_EXCHANGE,
    InvalidArgument,
    OidcProvider,
    TokenExchangePolicy,
    UserRecord,
)
from services.third_party_token.foreign_tokens import ForeignTokens
from services.third_party_token.grant import TokenExchangeGrant
from services.third_party_token.providers import FederatedUserCache, ForeignTokenVerifier
from services.token_issuer.api import FORMAT_JWT, TokenInfo
from tests.fakes import FakeBus, FakeClients, FakeIssuer, client_record

ISSUER = "https://inbound.example"
IDP = "https://idp.example"
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-s3cret-s3"
PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(PRIVATE.public_key())), "kid": "k1", "use": "sig"}
PROVIDER = OidcProvider(name="idp", issuer=IDP, discovery_url=IDP + "/.well-known/openid-configuration",
                        audiences=("inbound-app",), algorithms=("RS256",), user_claim="email", user_field="email",
                        scopes=("api.read", "profile"), check_jti=True)
ALICE = UserRecord(id="u-alice", username="alice", email="alice@example.com", display_name="", active=True, roles=())
POLICY = TokenExchangePolicy(subject_token_types=(tx.ID_TOKEN_TYPE, tx.ACCESS_TOKEN_TYPE, tx.JWT_TOKEN_TYPE),
                             providers=("idp",), own_tokens=True, scopes=(), audiences=("https://api.example",),
                             actor_tokens=True)


def idp_token(**claims) -> str:
    now = int(time.time())
    body = {"iss": IDP, "sub": "idp-sub", "aud": "inbound-app", "email": "alice@example.com", "iat": now,
            "exp": now + 300, "jti": uuid.uuid4().hex, **claims}
    return jwt.encode(body, PRIVATE, algorithm="RS256", headers={"kid": "k1"})


class Directory:
    def __init__(self, *providers: OidcProvider):
        self.providers = {p.issuer: p for p in providers}

    async def provider(self, issuer: str):
        p = self.providers.get(issuer)
        return (p, StaticKeys(KeySet.from_jwks({"keys": [JWK]}))) if p else None


class Users:
    def __init__(self, *users: UserRecord):
        self.users = list(users)
        self.provisioned: list[tuple] = []

    async def find_user(self, field: str, value: str):
        return next((u for u in self.users if getattr(u, field) == value), None)

    async def provision_user(self, field, value, roles, provider):
        user = UserRecord(id="u-new", username=value, email=value, display_name="", active=True, roles=tuple(roles))
        self.users.append(user)
        self.provisioned.append((field, value, tuple(roles), provider))
        return user


class Jtis:
    """The registry's used-jti store as the validator asks it."""

    def __init__(self):
        self.seen: set[tuple[str, str]] = set()

    async def first_use(self, namespace: str, jti: str, expires_at: int) -> bool:
        first = (namespace, jti) not in self.seen
        self.seen.add((namespace, jti))
        return first


class Issuer(FakeIssuer):
    def __init__(self, infos: dict[str, TokenInfo] | None = None):
        super().__init__()
        self.infos = infos or {}

    async def introspect(self, token, caller=None, *, request_id=""):
        return self.infos.get(token, TokenInfo(active=False))


def setup(provider=PROVIDER, users=None, infos=None, policy=POLICY, **client):
    users = users or Users(ALICE)
    verifier = ForeignTokenVerifier(Directory(provider), FederatedUserCache(users),
                                    JwtValidator(jtis=Jtis()))
    issuer = Issuer(infos)
    record = client_record(client_id="app", secret_hash=hash_client_secret(SECRET),
                           grant_types=(GRANT_TOKEN_EXCHANGE,), scopes=("api.read", "api.write", "profile"),
                           token_exchange=policy, **client)
    runner = GrantRunner(TokenExchangeGrant(verifier, issuer, issuer_url=ISSUER), FakeClients(record), FakeBus())
    return runner, issuer, users, verifier


async def exchange(runner, **params):
    params.setdefault("subject_token", idp_token())
    params.setdefault("subject_token_type", tx.ID_TOKEN_TYPE)
    return await runner.handle(TokenRequest(
        grant_type=GRANT_TOKEN_EXCHANGE, client=ClientCredentials(CLIENT_SECRET_BASIC, "app", SECRET),
        params={k: v if isinstance(v, tuple) else (v,) for k, v in params.items()}))


async def test_control_an_id_token_becomes_an_access_token_for_the_mapped_user():
    runner, issuer, _, _ = setup()
    response = await exchange(runner)
    [issued] = issuer.requests
    assert (issued.subject, issued.username, issued.provider) == ("u-alice", "alice", "idp")
    # client ∩ provider scopes (the policy lists none: no extra limit)
    assert set(issued.scopes) == {"api.read", "profile"} and not issued.act_json
    assert response.issued_token_type == tx.ACCESS_TOKEN_TYPE and response.token_type == "Bearer"
    assert not response.refresh_token and "refresh_token" not in response.to_json()


async def test_no_policy_is_unauthorized_client():
    runner, *_ = setup(policy=None)
    with pytest.raises(UnauthorizedClient):
        await exchange(runner)


@pytest.mark.parametrize("params", [
    {"subject_token": ""},
    {"subject_token_type": ""},
    {"subject_token_type": tx.SAML2_TOKEN_TYPE},
    {"requested_token_type": tx.REFRESH_TOKEN_TYPE},
    {"actor_token": "a.b.c"},
    {"actor_token_type": tx.JWT_TOKEN_TYPE},
    {"resource": "not-absolute"},
    {"resource": "https://api.example#frag"},
    {"subject_token": ("x", "y")},  # a repeated single-valued parameter
])
async def test_bad_parameters_are_invalid_request(params):
    runner, issuer, *_ = setup()
    with pytest.raises(InvalidRequest):
        await exchange(runner, **params)
    assert issuer.requests == []


async def test_a_subject_token_type_outside_the_policy_is_refused():
    runner, *_ = setup(policy=dataclasses.replace(POLICY, subject_token_types=(tx.ACCESS_TOKEN_TYPE,)))
    with pytest.raises(InvalidRequest):
        await exchange(runner)


async def test_an_actor_token_needs_the_policy_s_consent():
    runner, *_ = setup(policy=dataclasses.replace(POLICY, actor_tokens=False))
    with pytest.raises(InvalidRequest):
        await exchange(runner, actor_token=idp_token(), actor_token_type=tx.JWT_TOKEN_TYPE)


async def test_audiences_and_resources_must_be_in_the_policy():
    runner, issuer, *_ = setup()
    with pytest.raises(InvalidTarget):
        await exchange(runner, audience=("https://api.example", "https://other.example"))
    with pytest.raises(InvalidTarget):
        await exchange(runner, resource="https://other.example/")
    await exchange(runner, audience="https://api.example", resource="https://api.example")
    assert issuer.requests[-1].audience == ("https://api.example",)
    no_audiences, issuer2, *_ = setup(policy=dataclasses.replace(POLICY, audiences=()))
    with pytest.raises(InvalidTarget):
        await exchange(no_audiences, audience="https://api.example")


async def test_a_provider_outside_the_policy_is_invalid_grant():
    runner, *_ = setup(policy=dataclasses.replace(POLICY, providers=("someone-else",)))
    with pytest.raises(InvalidGrant):
        await exchange(runner)


async def test_a_disabled_provider_or_an_unknown_issuer_is_invalid_grant():
    runner, *_ = setup(provider=dataclasses.replace(PROVIDER, active=False))
    with pytest.raises(InvalidGrant):
        await exchange(runner)
    runner, *_ = setup()
    with pytest.raises(InvalidGrant):
        await exchange(runner, subject_token=idp_token(iss="https://unknown.example"))


async def test_a_token_the_provider_did_not_sign_is_invalid_grant():
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    forged = jwt.encode({"iss": IDP, "sub": "x", "aud": "inbound-app", "email": "alice@example.com", "iat": now,
                         "exp": now + 60, "jti": "j"}, other, algorithm="RS256", headers={"kid": "k1"})
    runner, *_ = setup()
    with pytest.raises(InvalidGrant):
        await exchange(runner, subject_token=forged)
    with pytest.raises(InvalidGrant):
        await exchange(runner, subject_token=idp_token(aud="someone-else"))


async def test_an_unknown_user_is_refused_unless_the_provider_provisions():
    runner, *_ = setup(users=Users())
    with pytest.raises(InvalidGrant):
        await exchange(runner)
    users = Users()
    runner, issuer, *_ = setup(users=users, provider=dataclasses.replace(PROVIDER, provision_users=True,
                                                                         provision_roles=("partner",)))
    await exchange(runner)
    assert users.provisioned == [("email", "alice@example.com", ("partner",), "idp")]
    assert issuer.requests[-1].subject == "u-new"


async def test_a_disabled_user_is_refused():
    runner, *_ = setup(users=Users(dataclasses.replace(ALICE, active=False)))
    with pytest.raises(InvalidGrant):
        await exchange(runner)


async def test_a_token_without_the_user_claim_is_refused():
    runner, *_ = setup()
    with pytest.raises(InvalidGrant):
        await exchange(runner, subject_token=idp_token(email=None))


async def test_an_email_the_idp_has_not_verified_maps_no_user():
    users = Users(ALICE)
    runner, issuer, *_ = setup(users=users, provider=dataclasses.replace(PROVIDER, provision_users=True))
    for unverified in (False, "false"):
        with pytest.raises(InvalidGrant):
            await exchange(runner, subject_token=idp_token(email_verified=unverified))
    assert not issuer.requests and not users.provisioned
    await exchange(runner, subject_token=idp_token(email_verified=True))
    assert issuer.requests[-1].subject == ALICE.id


async def test_a_provider_that_checks_jti_refuses_a_second_exchange():
    runner, *_ = setup()
    token = idp_token()
    await exchange(runner, subject_token=token)
    with pytest.raises(InvalidGrant):
        await exchange(runner, subject_token=token)
    lax, *_ = setup(provider=dataclasses.replace(PROVIDER, check_jti=False))
    await exchange(lax, subject_token=token)
    await exchange(lax, subject_token=token)


async def test_a_refused_scope_does_not_spend_a_single_use_token():
    runner, *_ = setup()
    token = idp_token()
    with pytest.raises(InvalidScope):
        await exchange(runner, subject_token=token, scope="api.write")
    await exchange(runner, subject_token=token)  # its jti was not claimed by the refused request


async def test_scopes_never_exceed_client_policy_or_provider():
    runner, issuer, *_ = setup(policy=dataclasses.replace(POLICY, scopes=("api.read",)))
    await exchange(runner)
    assert issuer.requests[-1].scopes == ("api.read",)
    for scope in ("profile", "api.write"):  # not in the policy / not the provider's
        with pytest.raises(InvalidScope):
            await exchange(runner, scope=scope)
    runner, issuer, *_ = setup()
    with pytest.raises(InvalidScope):
        await exchange(runner, scope="api.write")  # the client's, not the provider's
    await exchange(runner, scope="profile")
    assert issuer.requests[-1].scopes == ("profile",)


def own(sub="u-bob", scope="api.read api.write", exp_in=120, act="", token_type="Bearer") -> TokenInfo:
    now = int(time.time())
    return TokenInfo(active=True, scope=scope, client_id="other", sub=sub, username="bob", token_type=token_type,
                     exp=now + exp_in, iat=now, iss=ISSUER, aud=("api",), jti="j", act_json=act)


OWN = "ib_at_" + "x" * 40


async def test_our_own_token_needs_the_policy_and_must_be_active():
    runner, *_ = setup(infos={OWN: own()}, policy=dataclasses.replace(POLICY, own_tokens=False))
    with pytest.raises(InvalidGrant):
        await exchange(runner, subject_token=OWN, subject_token_type=tx.ACCESS_TOKEN_TYPE)
    runner, *_ = setup(infos={})
    with pytest.raises(InvalidGrant):
        await exchange(runner, subject_token=OWN, subject_token_type=tx.ACCESS_TOKEN_TYPE)
    runner, *_ = setup(infos={OWN: own(token_type="refresh_token")})
    with pytest.raises(InvalidGrant):
        await exchange(runner, subject_token=OWN, subject_token_type=tx.ACCESS_TOKEN_TYPE)


async def test_our_own_token_is_never_outlived_nor_widened():
    runner, issuer, *_ = setup(infos={OWN: own(exp_in=120)})
    await exchange(runner, subject_token=OWN, subject_token_type=tx.ACCESS_TOKEN_TYPE)
    issued = issuer.requests[-1]
    assert issued.subject == "u-bob" and issued.provider == ""
    assert issued.lifetime_seconds <= 120 and set(issued.scopes) == {"api.read", "api.write"}
    runner, issuer, *_ = setup(infos={OWN: own(scope="api.read")})
    with pytest.raises(InvalidScope):
        await exchange(runner, subject_token=OWN, subject_token_type=tx.ACCESS_TOKEN_TYPE, scope="api.write")


async def test_an_actor_token_makes_act_with_the_prior_chain_nested():
    prior = json.dumps({"sub": "first-actor", "iss": ISSUER})
    runner, issuer, *_ = setup(infos={OWN: own(act=prior)})
    response = await exchange(runner, subject_token=OWN, subject_token_type=tx.ACCESS_TOKEN_TYPE,
                              actor_token=idp_token(), actor_token_type=tx.ID_TOKEN_TYPE,
                              requested_token_type=tx.JWT_TOKEN_TYPE)
    issued = issuer.requests[-1]
    assert json.loads(issued.act_json) == {"sub": "u-alice", "iss": ISSUER,
                                           "act": {"sub": "first-actor", "iss": ISSUER}}
    assert issued.subject == "u-bob" and issued.format == FORMAT_JWT
    assert response.issued_token_type == tx.JWT_TOKEN_TYPE


async def test_our_own_actor_token_is_never_outlived():
    runner, issuer, *_ = setup(infos={OWN: own(exp_in=120)})
    await exchange(runner, actor_token=OWN, actor_token_type=tx.ACCESS_TOKEN_TYPE)  # subject: an IdP's token
    assert 0 < issuer.requests[-1].lifetime_seconds <= 120


async def test_a_bad_actor_token_is_invalid_grant():
    runner, issuer, *_ = setup()
    with pytest.raises(InvalidGrant):
        await exchange(runner, actor_token=idp_token(aud="nobody"), actor_token_type=tx.JWT_TOKEN_TYPE)
    assert issuer.requests == []


async def test_foreign_tokens_introspect_as_the_mapped_user_and_never_burn_the_jti():
    _, _, _, verifier = setup()
    tokens = ForeignTokens(verifier)
    token = idp_token(azp="the-rp")
    for _ in range(2):  # presented again and again: not a replay
        info = await tokens.introspect_foreign(token)
        assert info.active and (info.sub, info.username, info.provider, info.client_id) == \
            ("u-alice", "alice", "idp", "the-rp")
        assert info.scope == "api.read profile" and info.iss == IDP
    assert not (await tokens.introspect_foreign(idp_token(aud="nobody"))).active
    assert not (await tokens.introspect_foreign("a.b.c")).active


def test_act_chains_keep_only_sub_iss_and_nesting():
    chain = tx.act_claim("a", "https://i", prior={"sub": "b", "extra": 1, "act": {"sub": "c", "act": "junk"}})
    assert chain == {"sub": "a", "iss": "https://i", "act": {"sub": "b", "act": {"sub": "c"}}}
    deep = {"sub": "x"}
    for n in range(20):
        deep = {"sub": f"x{n}", "act": deep}
    depth, node = 0, tx.act_claim("a", "", prior=deep)
    while node:
        depth, node = depth + 1, node.get("act")
    assert depth == tx.MAX_ACT_DEPTH


def test_token_lengths_are_bounded():
    request = TokenRequest(grant_type=GRANT_TOKEN_EXCHANGE, client=None,
                           params={"subject_token": ("x" * (tx.MAX_TOKEN_LENGTH + 1),),
                                   "subject_token_type": (tx.JWT_TOKEN_TYPE,)})
    with pytest.raises(InvalidRequest):
        tx.parse_request(request)


async def test_a_user_that_cannot_be_provisioned_is_refused():
    class Unprovisionable(Users):
        async def provision_user(self, field, value, roles, provider):
            raise InvalidArgument("not an email")

    runner, *_ = setup(users=Unprovisionable(), provider=dataclasses.replace(PROVIDER, provision_users=True))
    with pytest.raises(InvalidGrant):
        await exchange(runner)

"""Protobuf <-> domain records for the registry contract (used by server.py and client.py)."""
from __future__ import annotations

import dataclasses

from inbound.common.v1 import common_pb2
from inbound.events.v1 import events_pb2
from inbound.registry.v1 import registry_pb2 as pb
from services.client_registry.api import (
    PURPOSE_PASSWORD_GRANT,
    REVOKE_CLIENT,
    REVOKE_GRANT,
    REVOKE_JTI,
    REVOKE_SUBJECT,
    AuthorizationCodeRecord,
    BrowserSession,
    ClaimRule,
    ClientRecord,
    ClientSpec,
    ClientUpdate,
    CodeNotFound,
    CodeOutcome,
    CodeReused,
    ConsentRecord,
    Invalid,
    ItemError,
    JtiClaim,
    JwtBearerIntegration,
    Locked,
    OidcProvider,
    OpaqueTokenRecord,
    PendingAuthorization,
    Refused,
    Replay,
    RevocationCursor,
    RevocationRecord,
    Rotated,
    Rotation,
    RotationOutcome,
    ScopeRecord,
    SignIn,
    SigningKeyRecord,
    SignInOutcome,
    TokenExchangePolicy,
    UserRecord,
    UserSpec,
    UserUpdate,
)


def client_to_pb(c: ClientRecord, *, with_secret_hash: bool) -> pb.Client:
    """`with_secret_hash=False` for a caller that does not verify client secrets."""
    return pb.Client(
        client_id=c.client_id, name=c.name, secret_hash=c.secret_hash if with_secret_hash else "", public=c.public,
        grant_types=c.grant_types, scopes=c.scopes, redirect_uris=c.redirect_uris,
        access_token_lifetime=c.access_token_lifetime, refresh_token_lifetime=c.refresh_token_lifetime,
        token_format=c.token_format, pkce_required=c.pkce_required, active=c.active, logo_url=c.logo_url,
        comments=c.comments, created_at=c.created_at, updated_at=c.updated_at,
        secret_rotated_at=c.secret_rotated_at, allow_public_password_grant=c.allow_public_password_grant,
        refresh_token_absolute_lifetime=c.refresh_token_absolute_lifetime,
        post_logout_redirect_uris=c.post_logout_redirect_uris,
        token_endpoint_auth_method=c.token_endpoint_auth_method, jwks=c.jwks, jwks_uri=c.jwks_uri,
        token_endpoint_auth_signing_alg=c.token_endpoint_auth_signing_alg,
        token_exchange=exchange_policy_to_pb(c.token_exchange),
    )


def exchange_policy_to_pb(p: TokenExchangePolicy | None) -> pb.TokenExchangePolicy | None:
    return None if p is None else _flat_to_pb(p, pb.TokenExchangePolicy)


def exchange_policy_from_pb(m, field: str = "token_exchange") -> TokenExchangePolicy | None:
    """`m`'s policy field, None when unset."""
    return _flat_from_pb(getattr(m, field), TokenExchangePolicy) if m.HasField(field) else None


def client_from_pb(m: pb.Client) -> ClientRecord:
    return ClientRecord(
        client_id=m.client_id, name=m.name, secret_hash=m.secret_hash, public=m.public,
        grant_types=tuple(m.grant_types), scopes=tuple(m.scopes), redirect_uris=tuple(m.redirect_uris),
        access_token_lifetime=m.access_token_lifetime, refresh_token_lifetime=m.refresh_token_lifetime,
        token_format=m.token_format, pkce_required=m.pkce_required, active=m.active, logo_url=m.logo_url,
        comments=m.comments, created_at=m.created_at, updated_at=m.updated_at,
        secret_rotated_at=m.secret_rotated_at, allow_public_password_grant=m.allow_public_password_grant,
        refresh_token_absolute_lifetime=m.refresh_token_absolute_lifetime,
        post_logout_redirect_uris=tuple(m.post_logout_redirect_uris),
        # An older registry sends no method: what migration 0008 gives its clients.
        token_endpoint_auth_method=m.token_endpoint_auth_method or ("none" if m.public else "client_secret_basic"),
        jwks=m.jwks, jwks_uri=m.jwks_uri, token_endpoint_auth_signing_alg=m.token_endpoint_auth_signing_alg,
        token_exchange=exchange_policy_from_pb(m),
    )


_OPTIONAL_SPEC_FIELDS = ("access_token_lifetime", "refresh_token_lifetime", "token_format", "pkce_required",
                         "allow_public_password_grant", "refresh_token_absolute_lifetime",
                         "token_endpoint_auth_method")


def spec_to_pb(s: ClientSpec) -> pb.ClientSpec:
    m = pb.ClientSpec(name=s.name, public=s.public, grant_types=s.grant_types, scopes=s.scopes,
                      redirect_uris=s.redirect_uris, logo_url=s.logo_url, comments=s.comments,
                      post_logout_redirect_uris=s.post_logout_redirect_uris, jwks=s.jwks, jwks_uri=s.jwks_uri,
                      token_endpoint_auth_signing_alg=s.token_endpoint_auth_signing_alg,
                      token_exchange=exchange_policy_to_pb(s.token_exchange))
    for name in _OPTIONAL_SPEC_FIELDS:
        value = getattr(s, name)
        if value is not None:
            setattr(m, name, value)
    return m


def spec_from_pb(m: pb.ClientSpec) -> ClientSpec:
    return ClientSpec(
        name=m.name, public=m.public, grant_types=list(m.grant_types), scopes=list(m.scopes),
        redirect_uris=list(m.redirect_uris), logo_url=m.logo_url, comments=m.comments,
        post_logout_redirect_uris=list(m.post_logout_redirect_uris), jwks=m.jwks, jwks_uri=m.jwks_uri,
        token_endpoint_auth_signing_alg=m.token_endpoint_auth_signing_alg, token_exchange=exchange_policy_from_pb(m),
        **{name: getattr(m, name) if m.HasField(name) else None for name in _OPTIONAL_SPEC_FIELDS})


_OPTIONAL_UPDATE_FIELDS = ("active", "name", "access_token_lifetime", "refresh_token_lifetime", "token_format",
                           "pkce_required", "logo_url", "comments", "allow_public_password_grant",
                           "refresh_token_absolute_lifetime", "token_endpoint_auth_method", "jwks", "jwks_uri",
                           "token_endpoint_auth_signing_alg")
_LIST_UPDATE_FIELDS = ("grant_types", "scopes", "redirect_uris", "post_logout_redirect_uris")


def update_to_pb(client_id: str, u: ClientUpdate) -> pb.UpdateClientRequest:
    m = pb.UpdateClientRequest(client_id=client_id)
    for name in _OPTIONAL_UPDATE_FIELDS:
        value = getattr(u, name)
        if value is not None:
            setattr(m, name, value)
    for name in _LIST_UPDATE_FIELDS:
        value = getattr(u, name)
        if value is not None:
            getattr(m, name).extend(value)
            setattr(m, f"set_{name}", True)
    if u.token_exchange is not None:
        m.token_exchange.CopyFrom(exchange_policy_to_pb(u.token_exchange))
    m.clear_token_exchange = u.clear_token_exchange
    return m


def update_from_pb(m: pb.UpdateClientRequest) -> ClientUpdate:
    u = ClientUpdate()
    for name in _OPTIONAL_UPDATE_FIELDS:
        if m.HasField(name):
            setattr(u, name, getattr(m, name))
    for name in _LIST_UPDATE_FIELDS:
        if getattr(m, f"set_{name}"):
            setattr(u, name, list(getattr(m, name)))
    u.token_exchange = exchange_policy_from_pb(m)
    u.clear_token_exchange = m.clear_token_exchange
    return u


def jti_claim_to_pb(c: JtiClaim) -> pb.JtiClaim:
    return _flat_to_pb(c, pb.JtiClaim)


def jti_claim_from_pb(m: pb.JtiClaim) -> JtiClaim:
    return _flat_from_pb(m, JtiClaim)


def jti_outcome_to_pb(o: bool | ItemError) -> pb.JtiClaimOutcome:
    return pb.JtiClaimOutcome(error=item_error_to_pb(o)) if isinstance(o, ItemError) else pb.JtiClaimOutcome(claimed=o)


def jti_outcome_from_pb(m: pb.JtiClaimOutcome) -> bool | ItemError:
    if m.WhichOneof("outcome") == "claimed":
        return m.claimed
    return item_error_from_pb(m.error) or ItemError("internal", "no outcome")


def key_to_pb(k: SigningKeyRecord) -> pb.SigningKey:
    return pb.SigningKey(kid=k.kid, alg=k.alg, encrypted_private_key=k.encrypted_private_key,
                         public_jwk_json=k.public_jwk_json, created_at=k.created_at, activates_at=k.activates_at)


def key_from_pb(m: pb.SigningKey) -> SigningKeyRecord:
    return SigningKeyRecord(kid=m.kid, alg=m.alg, encrypted_private_key=m.encrypted_private_key,
                            public_jwk_json=m.public_jwk_json, created_at=m.created_at, activates_at=m.activates_at)


def item_error_to_pb(e: ItemError | None) -> pb.ItemError:
    return pb.ItemError(code=e.code, message=e.message) if e is not None else pb.ItemError()


def item_error_from_pb(m: pb.ItemError) -> ItemError | None:
    return ItemError(m.code, m.message) if m.code or m.message else None


def opaque_to_pb(t: OpaqueTokenRecord) -> pb.OpaqueToken:
    return pb.OpaqueToken(token_hash=t.token_hash, jti=t.jti, client_id=t.client_id, subject=t.subject,
                          username=t.username, scopes=t.scopes, audience=t.audience, issued_at=t.issued_at,
                          expires_at=t.expires_at, kind=t.kind, grant_id=t.grant_id,
                          issued_at_unix_ms=t.issued_at_precise_ms, consumed=t.consumed, revoked=t.revoked,
                          family_expires_at=t.family_expires_at)


def opaque_from_pb(m: pb.OpaqueToken) -> OpaqueTokenRecord:
    return OpaqueTokenRecord(token_hash=m.token_hash, jti=m.jti, client_id=m.client_id, subject=m.subject,
                             username=m.username, scopes=tuple(m.scopes), audience=tuple(m.audience),
                             issued_at=m.issued_at, expires_at=m.expires_at, kind=m.kind or "access",
                             grant_id=m.grant_id, issued_at_ms=m.issued_at_unix_ms, consumed=m.consumed,
                             revoked=m.revoked, family_expires_at=m.family_expires_at)


def _cut_off_ms(precise_ms: int, seconds: int) -> int:
    """The cut-off from a message: to the ms, or (from an older writer) the end of its second."""
    return precise_ms or (seconds * 1000 + 999 if seconds else 0)


def revocation_to_pb(r: RevocationRecord) -> pb.Revocation:
    return pb.Revocation(id=r.id, kind=r.kind, value=r.value, client_id=r.client_id,
                         revoked_before=r.revoked_before, revoked_before_unix_ms=r.revoked_before_ms,
                         expires_at=r.expires_at, revoked_by=r.revoked_by)


def revocation_from_pb(m: pb.Revocation) -> RevocationRecord:
    return RevocationRecord(id=m.id, kind=m.kind, value=m.value, client_id=m.client_id,
                            revoked_before_ms=_cut_off_ms(m.revoked_before_unix_ms, m.revoked_before),
                            expires_at=m.expires_at, revoked_by=m.revoked_by)


def cursor_to_pb(c: RevocationCursor) -> pb.RevocationCursor:
    return pb.RevocationCursor(txid=c.txid, id=c.id)


def cursor_from_pb(m: pb.RevocationCursor) -> RevocationCursor:
    return RevocationCursor(txid=m.txid, id=m.id)


def revocation_from_event(event: events_pb2.TokenRevoked) -> RevocationRecord:
    value = {REVOKE_JTI: event.jti, REVOKE_GRANT: event.grant_id, REVOKE_CLIENT: event.client_id,
             REVOKE_SUBJECT: event.subject}.get(event.kind, "")
    return RevocationRecord(kind=event.kind, value=value, client_id=event.client_id, expires_at=event.expires_at,
                            revoked_before_ms=_cut_off_ms(event.revoked_before_unix_ms, event.revoked_before),
                            revoked_by=event.revoked_by)


def revocation_event(r: RevocationRecord) -> events_pb2.Event:
    return events_pb2.Event(token_revoked=events_pb2.TokenRevoked(
        kind=r.kind, client_id=r.client_id, jti=r.value if r.kind == REVOKE_JTI else "",
        grant_id=r.value if r.kind == REVOKE_GRANT else "", subject=r.value if r.kind == REVOKE_SUBJECT else "",
        revoked_before=r.revoked_before, revoked_before_unix_ms=r.revoked_before_ms,
        expires_at=r.expires_at, revoked_by=r.revoked_by))


# --- refresh-token rotation ------------------------------------------------------------------------

def rotation_to_pb(r: Rotation) -> pb.RotateRefreshTokenRequest:
    return pb.RotateRefreshTokenRequest(meta=common_pb2.RequestMeta(request_id=r.request_id),
                                        token_hash=r.token_hash, client_id=r.client_id,
                                        new_token_hash=r.new_token_hash, new_jti=r.new_jti,
                                        grace_seconds=r.grace_seconds)


def rotation_from_pb(m: pb.RotateRefreshTokenRequest) -> Rotation:
    return Rotation(token_hash=m.token_hash, client_id=m.client_id, new_token_hash=m.new_token_hash,
                    new_jti=m.new_jti, grace_seconds=m.grace_seconds, request_id=m.meta.request_id)


def rotation_outcome_to_pb(o: RotationOutcome) -> pb.RotationOutcome:
    if isinstance(o, Rotated):
        return pb.RotationOutcome(rotated=pb.RefreshRotated(consumed=opaque_to_pb(o.consumed),
                                                            successor=opaque_to_pb(o.successor)))
    if isinstance(o, Replay):
        return pb.RotationOutcome(replay=pb.RefreshReplay(encrypted_response=o.encrypted_response,
                                                          consumed=opaque_to_pb(o.consumed),
                                                          replay_until_unix_ms=o.replay_until_ms))
    if isinstance(o, Refused):
        refused = pb.RefreshRefused(reason=o.reason, grant_id=o.grant_id)
        if o.revocation is not None:
            refused.revocation.CopyFrom(revocation_to_pb(o.revocation))
        return pb.RotationOutcome(refused=refused)
    return pb.RotationOutcome(error=item_error_to_pb(o))


def rotation_outcome_from_pb(m: pb.RotationOutcome) -> RotationOutcome:
    kind = m.WhichOneof("outcome")
    if kind == "rotated":
        return Rotated(consumed=opaque_from_pb(m.rotated.consumed), successor=opaque_from_pb(m.rotated.successor))
    if kind == "replay":
        return Replay(encrypted_response=m.replay.encrypted_response, consumed=opaque_from_pb(m.replay.consumed),
                      replay_until_ms=m.replay.replay_until_unix_ms)
    if kind == "refused":
        return Refused(reason=m.refused.reason, grant_id=m.refused.grant_id,
                       revocation=revocation_from_pb(m.refused.revocation)
                       if m.refused.HasField("revocation") else None)
    return item_error_from_pb(m.error) or ItemError("internal", "no outcome")


# --- users ----------------------------------------------------------------------------------------

def user_to_pb(u: UserRecord) -> pb.User:
    return pb.User(id=u.id, username=u.username, email=u.email, display_name=u.display_name, active=u.active,
                   roles=u.roles, given_name=u.given_name, family_name=u.family_name,
                   email_verified=u.email_verified, locale=u.locale, zoneinfo=u.zoneinfo, created_at=u.created_at,
                   updated_at=u.updated_at, password_changed_at=u.password_changed_at, locked_until=u.locked_until,
                   verified_at_unix_ms=u.verified_at_ms)


def user_from_pb(m: pb.User) -> UserRecord:
    return UserRecord(id=m.id, username=m.username, email=m.email, display_name=m.display_name, active=m.active,
                      roles=tuple(m.roles), given_name=m.given_name, family_name=m.family_name,
                      email_verified=m.email_verified, locale=m.locale, zoneinfo=m.zoneinfo,
                      created_at=m.created_at, updated_at=m.updated_at, password_changed_at=m.password_changed_at,
                      locked_until=m.locked_until, verified_at_ms=m.verified_at_unix_ms)


def user_spec_to_pb(s: UserSpec) -> pb.UserSpec:
    return pb.UserSpec(username=s.username, email=s.email, display_name=s.display_name, roles=s.roles,
                       given_name=s.given_name, family_name=s.family_name, email_verified=s.email_verified,
                       locale=s.locale, zoneinfo=s.zoneinfo, active=s.active, password=s.password)


def user_spec_from_pb(m: pb.UserSpec) -> UserSpec:
    return UserSpec(username=m.username, email=m.email, display_name=m.display_name, roles=list(m.roles),
                    given_name=m.given_name, family_name=m.family_name, email_verified=m.email_verified,
                    locale=m.locale, zoneinfo=m.zoneinfo, active=m.active if m.HasField("active") else True,
                    password=m.password)


_USER_UPDATE_FIELDS = ("username", "email", "display_name", "active", "given_name", "family_name", "email_verified",
                       "locale", "zoneinfo")


def user_update_to_pb(user_id: str, u: UserUpdate) -> pb.UpdateUserRequest:
    m = pb.UpdateUserRequest(id=user_id)
    for name in _USER_UPDATE_FIELDS:
        value = getattr(u, name)
        if value is not None:
            setattr(m, name, value)
    return m


def user_update_from_pb(m: pb.UpdateUserRequest) -> UserUpdate:
    u = UserUpdate()
    for name in _USER_UPDATE_FIELDS:
        if m.HasField(name):
            setattr(u, name, getattr(m, name))
    return u


def sign_in_to_pb(s: SignIn) -> pb.AuthenticateUserRequest:
    m = pb.AuthenticateUserRequest(username=s.username, password=s.password, client_address=s.client_address,
                                   purpose=s.purpose)
    m.meta.request_id = s.request_id
    return m


def sign_in_from_pb(m: pb.AuthenticateUserRequest) -> SignIn:
    return SignIn(username=m.username, password=m.password, client_address=m.client_address,
                  purpose=m.purpose or PURPOSE_PASSWORD_GRANT, request_id=m.meta.request_id)


def sign_in_outcome_to_pb(o: SignInOutcome) -> pb.AuthenticationOutcome:
    if isinstance(o, UserRecord):
        return pb.AuthenticationOutcome(user=user_to_pb(o))
    if isinstance(o, Locked):
        return pb.AuthenticationOutcome(locked=pb.AuthenticationLocked(locked_until=o.locked_until))
    if isinstance(o, ItemError):
        return pb.AuthenticationOutcome(error=item_error_to_pb(o))
    return pb.AuthenticationOutcome(invalid=True)


def sign_in_outcome_from_pb(m: pb.AuthenticationOutcome) -> SignInOutcome:
    kind = m.WhichOneof("outcome")
    if kind == "user":
        return user_from_pb(m.user)
    if kind == "locked":
        return Locked(locked_until=m.locked.locked_until)
    if kind == "invalid":
        return Invalid()
    return item_error_from_pb(m.error) or ItemError("internal", "no outcome")


# --- the scope catalog and the authorization endpoint's state --------------------------------------
# These records are flat: each field has the same name and meaning in its message (scalars, and
# tuples of scalars for repeated fields), so one pair of functions converts them all; the
# round-trip test (tests/unit/test_registry_wire_browser.py) checks every field both ways.

def _flat_to_pb(record, message_type):
    return message_type(**{f.name: getattr(record, f.name) for f in dataclasses.fields(record)})


def _flat_from_pb(message, record_type):
    values = {}
    for f in dataclasses.fields(record_type):
        value = getattr(message, f.name)
        values[f.name] = value if isinstance(value, (str, bytes, int, float, bool)) else tuple(value)
    return record_type(**values)


def scope_to_pb(s: ScopeRecord) -> pb.Scope:
    return _flat_to_pb(s, pb.Scope)


def scope_from_pb(m: pb.Scope) -> ScopeRecord:
    return _flat_from_pb(m, ScopeRecord)


def session_to_pb(s: BrowserSession) -> pb.BrowserSession:
    return _flat_to_pb(s, pb.BrowserSession)


def session_from_pb(m: pb.BrowserSession) -> BrowserSession:
    return _flat_from_pb(m, BrowserSession)


def pending_to_pb(p: PendingAuthorization) -> pb.PendingAuthorization:
    return _flat_to_pb(p, pb.PendingAuthorization)


def pending_from_pb(m: pb.PendingAuthorization) -> PendingAuthorization:
    return _flat_from_pb(m, PendingAuthorization)


def consent_to_pb(c: ConsentRecord) -> pb.Consent:
    return _flat_to_pb(c, pb.Consent)


def consent_from_pb(m: pb.Consent) -> ConsentRecord:
    return _flat_from_pb(m, ConsentRecord)


def code_to_pb(c: AuthorizationCodeRecord) -> pb.AuthorizationCode:
    return _flat_to_pb(c, pb.AuthorizationCode)


def code_from_pb(m: pb.AuthorizationCode) -> AuthorizationCodeRecord:
    return _flat_from_pb(m, AuthorizationCodeRecord)


def code_outcome_to_pb(o: CodeOutcome) -> pb.CodeConsumption:
    if isinstance(o, AuthorizationCodeRecord):
        return pb.CodeConsumption(code=code_to_pb(o))
    if isinstance(o, CodeReused):
        return pb.CodeConsumption(reused=True, reused_grant_id=o.grant_id)
    if isinstance(o, CodeNotFound):
        return pb.CodeConsumption(not_found=True)
    return pb.CodeConsumption(error=item_error_to_pb(o))


def code_outcome_from_pb(m: pb.CodeConsumption) -> CodeOutcome:
    kind = m.WhichOneof("outcome")
    if kind == "code":
        return code_from_pb(m.code)
    if kind == "reused":
        return CodeReused(grant_id=m.reused_grant_id)
    if kind == "not_found":
        return CodeNotFound()
    return item_error_from_pb(m.error) or ItemError("internal", "no outcome")


# --- federation ---------------------------------------------------------------------------------

def integration_to_pb(i: JwtBearerIntegration) -> pb.Integration:
    fields = {f.name: getattr(i, f.name) for f in dataclasses.fields(i) if f.name != "claim_rules"}
    return pb.Integration(**fields, claim_rules=[_flat_to_pb(r, pb.ClaimRule) for r in i.claim_rules])


def integration_from_pb(m: pb.Integration) -> JwtBearerIntegration:
    values = {}
    for f in dataclasses.fields(JwtBearerIntegration):
        if f.name == "claim_rules":
            values[f.name] = tuple(_flat_from_pb(r, ClaimRule) for r in m.claim_rules)
        else:
            value = getattr(m, f.name)
            values[f.name] = value if isinstance(value, (str, bytes, int, float, bool)) else tuple(value)
    return JwtBearerIntegration(**values)


def provider_to_pb(p: OidcProvider) -> pb.Provider:
    return _flat_to_pb(p, pb.Provider)


def provider_from_pb(m: pb.Provider) -> OidcProvider:
    return _flat_from_pb(m, OidcProvider)

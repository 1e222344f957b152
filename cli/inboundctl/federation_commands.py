"""inboundctl integration / provider: JWT-bearer integrations (RFC 7523) and OpenID providers.

    inboundctl integration add --name N --client ID --issuer ISS
        (--jwks-uri URL | --jwks FILE | --certificate FILE | --hs256-secret-file FILE | --generate-hs256-secret)
        [--kid K] [--alg A]... [--subject user|client] [--user-field username|email|id]
        [--claim-rule "CLAIM OPERATOR VALUE"]... [--scope S]... [--max-lifetime SECONDS] [--no-require-jti]
    inboundctl integration list | show ID | update ID [options] | disable ID | enable ID | delete ID

    inboundctl provider add NAME [--template azure|okta|auth0|google] [--tenant T] [--domain D]
        [--issuer URL] [--discovery-url URL] --audience A... [--alg A]... [--user-claim C]
        [--user-field F] [--cache-lifespan S] [--clock-skew S] [--check-jti] [--provision-users]
        [--provision-role R]... [--scope S]...
    inboundctl provider list | show NAME | update NAME [options] | disable NAME | enable NAME | delete NAME

An HS256 integration's secret is kept sealed under the key-encryption key; a generated one
is printed this once. A template fills a provider's usual values (libs/inboundlib/provider_templates.py);
any option given beside it wins.
"""
from __future__ import annotations

import argparse
import secrets
import sys
from dataclasses import dataclass, replace

from inboundctl.errors import EXIT_INVALID, EXIT_NOT_FOUND, CliError

REGISTRY = "client_registry"
SECRET_NOTE = "Store this HS256 secret now: it is kept only sealed and will not be shown again."
KEY_SOURCES = ("jwks_uri", "jwks", "certificate_pem")


def _open(s, client_class: str):
    from services.client_registry import client

    return getattr(client, client_class)(s._open(s.args.registry_addr, "client-registry"))


def read_option_file(option: str, path: str | None) -> str | None:
    """The text of the file an option names ("-": standard input); None when the option is unset."""
    if path is None:
        return None
    data = read_option_bytes(option, path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{option} {path}: not UTF-8 text", EXIT_INVALID) from None


def read_option_bytes(option: str, path: str) -> bytes:
    """The bytes of the file an option names ("-": standard input)."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise CliError(f"cannot read {option} {path}: {exc.strerror}", EXIT_INVALID) from None


def _claim_rules(values: list[str] | None):
    """--claim-rule "CLAIM OPERATOR VALUE" (the value may hold spaces)."""
    from services.client_registry.api import ClaimRule

    if values is None:
        return None
    rules = []
    for value in values:
        parts = value.split(None, 2)
        if len(parts) != 3:
            raise CliError(f"--claim-rule {value!r}: give CLAIM OPERATOR VALUE (e.g. \"tenant equals acme\")",
                           EXIT_INVALID)
        rules.append(ClaimRule(*parts))
    return tuple(rules)


def _show(a: argparse.Namespace, record, extra: list[tuple[str, object]] = ()) -> None:
    from inboundctl import output

    if a.json:
        output.emit_json(output.record_dict(record) | dict(extra))
        return
    rows = []
    for name, value in output.record_dict(record).items():
        if name in ("created_at", "updated_at"):
            value = output.when(value)
        elif isinstance(value, list):
            value = " ".join(str(v) if not isinstance(v, dict) else " ".join(map(str, v.values())) for v in value)
            value = value if len(value) < 200 else f"{value[:60]}… ({len(value)} characters)"
        elif isinstance(value, bool):
            value = output.yes_no(value)
        elif isinstance(value, str) and len(value) > 200:  # an inline JWKS or a certificate
            value = f"{value[:60]}… ({len(value)} characters)"
        rows.append((name, value if value not in ("", None) else "-"))
    output.listing(rows + list(extra))


# --- what integrations and providers share: found by their key, disabled, enabled, deleted -------

@dataclass(frozen=True)
class Kind:
    noun: str  # in messages: "integration with id", "provider"
    client: str  # its gRPC client class in services.client_registry.client
    key: str  # the command line's argument holding its key (and the JSON key of a deletion)
    json_key: str
    get: str
    update: str
    delete: str


INTEGRATIONS = Kind("integration with id", "IntegrationsClient", "integration_id", "id", "get_integration",
                    "update_integration", "delete_integration")
PROVIDERS = Kind("provider", "ProvidersClient", "provider_name", "name", "get_provider", "update_provider",
                 "delete_provider")


def _not_found(kind: Kind, a: argparse.Namespace) -> CliError:
    return CliError(f"no {kind.noun} {getattr(a, kind.key)!r}", EXIT_NOT_FOUND)


async def _get(s, a: argparse.Namespace, kind: Kind):
    found = await getattr(_open(s, kind.client), kind.get)(getattr(a, kind.key))
    if found is None:
        raise _not_found(kind, a)
    return found


async def _set_active(s, a: argparse.Namespace, kind: Kind, active: bool) -> None:
    current = await _get(s, a, kind)
    _show(a, await getattr(_open(s, kind.client), kind.update)(replace(current, active=active)))


async def _delete(s, a: argparse.Namespace, kind: Kind) -> None:
    from inboundctl import output

    if not await getattr(_open(s, kind.client), kind.delete)(getattr(a, kind.key)):
        raise _not_found(kind, a)
    if a.json:
        output.emit_json({kind.json_key: getattr(a, kind.key), "deleted": True})
    else:
        print(f"{kind.noun.split()[0]} {output.clean(getattr(a, kind.key))} deleted")


def _kind_commands(kind: Kind):
    """disable, enable and delete for one kind (argparse handlers)."""
    async def disable(s, a):
        await _set_active(s, a, kind, False)

    async def enable(s, a):
        await _set_active(s, a, kind, True)

    async def delete(s, a):
        await _delete(s, a, kind)

    return disable, enable, delete


# --- integrations -------------------------------------------------------------------------------

def _integration_secret(a: argparse.Namespace) -> tuple[bytes | None, str]:
    """The HS256 secret the options give (None: none given), and the text to print (a generated one)."""
    if a.generate_hs256_secret:
        text = secrets.token_urlsafe(48)
        return text.encode(), text
    if a.hs256_secret_file is None:
        return None, ""
    data = read_option_bytes("--hs256-secret-file", a.hs256_secret_file)
    try:
        # A text secret loses the newline an editor or `echo` added; random bytes are taken as they
        # are (`head -c 32 /dev/urandom`: stripping could cut a byte the partner signs with).
        return data.decode("utf-8").strip().encode(), ""
    except UnicodeDecodeError:
        return data, ""


def _integration_fields(a: argparse.Namespace) -> dict[str, object]:
    """The fields the options set (unset ones left out)."""
    fields: dict[str, object] = {
        "name": a.name, "issuer": a.issuer, "kid": a.kid, "algorithms": tuple(a.alg) if a.alg else None,
        "subject_kind": a.subject, "user_field": a.user_field, "claim_rules": _claim_rules(a.claim_rule),
        "scopes": tuple(a.scope) if a.scope else None, "max_assertion_lifetime": a.max_lifetime,
        "require_jti": a.require_jti}
    sources = {"jwks_uri": a.jwks_uri, "jwks": read_option_file("--jwks", a.jwks),
               "certificate_pem": read_option_file("--certificate", a.certificate)}
    if any(v is not None for v in sources.values()) or a.generate_hs256_secret or a.hs256_secret_file:
        # A new key source replaces the old one (an integration trusts exactly one).
        fields.update({k: v or "" for k, v in sources.items()})
        fields["allow_hs256"] = bool(a.generate_hs256_secret or a.hs256_secret_file)
    return {k: v for k, v in fields.items() if v is not None}


async def integration_add(s, a: argparse.Namespace) -> None:
    from services.client_registry.api import JwtBearerIntegration

    secret, shown = _integration_secret(a)
    fields = _integration_fields(a)
    created = await _open(s, "IntegrationsClient").create_integration(
        JwtBearerIntegration(id="", client_id=a.client, **fields), secret or b"")
    _show(a, created, [("hs256_secret", shown)] if shown else [])
    if shown:
        print(("" if a.json else "\n") + SECRET_NOTE, file=sys.stderr if a.json else sys.stdout)


async def _integration(s, a: argparse.Namespace):
    return await _get(s, a, INTEGRATIONS)


async def integration_list(s, a: argparse.Namespace) -> None:
    from inboundctl import output

    found = await _open(s, "IntegrationsClient").list_integrations()
    if a.json:
        output.emit_json([output.record_dict(i) for i in found])
    elif not found:
        print("no integrations registered")
    else:
        output.table(("ID", "NAME", "CLIENT_ID", "ISSUER", "KEYS", "SUBJECT", "ACTIVE"), [
            (i.id, i.name, i.client_id, i.issuer, next((k for k in KEY_SOURCES if getattr(i, k)), "hs256"),
             f"{i.subject_kind}:{i.user_field}" if i.subject_kind == "user" else "client", output.yes_no(i.active))
            for i in found])


async def integration_show(s, a: argparse.Namespace) -> None:
    _show(a, await _integration(s, a))


async def integration_update(s, a: argparse.Namespace) -> None:
    current = await _integration(s, a)
    secret, shown = _integration_secret(a)
    fields = _integration_fields(a)
    if not fields and secret is None:
        raise CliError("nothing to update: give at least one option (see `inboundctl integration update -h`)",
                       EXIT_INVALID)
    updated = await _open(s, "IntegrationsClient").update_integration(replace(current, **fields), secret)
    _show(a, updated, [("hs256_secret", shown)] if shown else [])
    if shown:
        print(("" if a.json else "\n") + SECRET_NOTE, file=sys.stderr if a.json else sys.stdout)


# --- providers ----------------------------------------------------------------------------------

def _provider_fields(a: argparse.Namespace) -> dict[str, object]:
    from inboundlib.provider_templates import TEMPLATES, TemplateError

    fields: dict[str, object] = {}
    if a.template:
        try:
            fields.update(TEMPLATES[a.template].fill(tenant=a.tenant or "", domain=a.domain or "",
                                                     server=a.auth_server or "default"))
        except TemplateError as exc:
            raise CliError(str(exc), EXIT_INVALID) from None
    elif a.tenant or a.domain or a.auth_server:
        raise CliError("--tenant, --domain and --auth-server go with --template", EXIT_INVALID)
    given = {"issuer": a.issuer, "discovery_url": a.discovery_url,
             "audiences": tuple(a.audience) if a.audience else None,
             "algorithms": tuple(a.alg) if a.alg else None, "user_claim": a.user_claim, "user_field": a.user_field,
             "cache_lifespan": a.cache_lifespan, "clock_skew": a.clock_skew, "check_jti": a.check_jti,
             "provision_users": a.provision_users,
             "provision_roles": tuple(a.provision_role) if a.provision_role else None,
             "scopes": tuple(a.scope) if a.scope else None}
    if a.issuer and not a.discovery_url and not a.template:
        given["discovery_url"] = ""  # the registry derives it from the new issuer
    fields.update({k: v for k, v in given.items() if v is not None})
    return fields


async def provider_add(s, a: argparse.Namespace) -> None:
    from services.client_registry.api import OidcProvider

    fields = _provider_fields(a)
    if "issuer" not in fields:
        raise CliError("a provider needs --issuer, or --template (azure, okta, auth0, google)", EXIT_INVALID)
    if "audiences" not in fields:
        raise CliError("a provider needs --audience: the aud its tokens carry for you (e.g. your app's client id)",
                       EXIT_INVALID)
    fields.setdefault("discovery_url", "")
    _show(a, await _open(s, "ProvidersClient").create_provider(OidcProvider(name=a.provider_name, **fields)))


async def _provider(s, a: argparse.Namespace):
    return await _get(s, a, PROVIDERS)


async def provider_list(s, a: argparse.Namespace) -> None:
    from inboundctl import output

    found = await _open(s, "ProvidersClient").list_providers()
    if a.json:
        output.emit_json([output.record_dict(p) for p in found])
    elif not found:
        print("no providers registered")
    else:
        output.table(("NAME", "ISSUER", "USER", "PROVISION", "ACTIVE", "TEMPLATE"), [
            (p.name, p.issuer, f"{p.user_claim}->{p.user_field}", output.yes_no(p.provision_users),
             output.yes_no(p.active), p.template or "-") for p in found])


async def provider_show(s, a: argparse.Namespace) -> None:
    _show(a, await _provider(s, a))


async def provider_update(s, a: argparse.Namespace) -> None:
    current = await _provider(s, a)
    fields = _provider_fields(a)
    if not fields:
        raise CliError("nothing to update: give at least one option (see `inboundctl provider update -h`)",
                       EXIT_INVALID)
    _show(a, await _open(s, "ProvidersClient").update_provider(replace(current, **fields)))


# --- the command line ---------------------------------------------------------------------------

def _integration_options(p: argparse.ArgumentParser, *, update: bool) -> None:
    if not update:
        p.add_argument("--name", required=True)
        p.add_argument("--client", required=True, metavar="CLIENT_ID", help="the client that presents the assertions")
        p.add_argument("--issuer", required=True, metavar="ISS", help="the assertions' iss")
    else:
        p.add_argument("--name")
        p.add_argument("--issuer", metavar="ISS", help="the assertions' iss")
    keys = p.add_mutually_exclusive_group(required=not update)
    keys.add_argument("--jwks-uri", metavar="URL", help="the https URL of the issuer's JWKS")
    keys.add_argument("--jwks", metavar="FILE", help="a file holding the issuer's public JWKS ('-': stdin)")
    keys.add_argument("--certificate", metavar="FILE", help="a PEM certificate whose key signs the assertions")
    keys.add_argument("--hs256-secret-file", metavar="FILE",
                      help="a shared HS256 secret (32 bytes or more), allowing HS256 for this integration")
    keys.add_argument("--generate-hs256-secret", action="store_true",
                      help="make a shared HS256 secret (printed this once), allowing HS256 for this integration")
    p.add_argument("--kid", help="trust only the key with this kid")
    p.add_argument("--alg", action="append", metavar="ALG", help="an accepted algorithm (repeatable; default: any "
                                                                 "the key type allows)")
    p.add_argument("--subject", choices=("user", "client"), help="whom sub names: a user, or the client itself")
    p.add_argument("--user-field", choices=("username", "email", "id"), help="the user field sub is matched on")
    p.add_argument("--claim-rule", action="append", metavar="RULE",
                   help='an extra condition, "CLAIM OPERATOR VALUE" with OPERATOR equals, not_equals, in '
                        "(a comma list) or contains (repeatable; replaces the list)")
    p.add_argument("--scope", action="append", metavar="S", help="the most its tokens carry (repeatable)")
    p.add_argument("--max-lifetime", type=int, metavar="SECONDS", help="the longest assertion accepted (exp - iat)")
    p.add_argument("--require-jti", action=argparse.BooleanOptionalAction, default=None,
                   help="refuse assertions without a jti (default: required)")


def _provider_options(p: argparse.ArgumentParser) -> None:
    from inboundlib.provider_templates import TEMPLATES

    p.add_argument("--template", choices=tuple(TEMPLATES), help="fill the provider's usual values")
    p.add_argument("--tenant", help="azure: the directory (tenant) id, a GUID")
    p.add_argument("--domain", help="okta, auth0: the provider's host name (acme.okta.com, acme.eu.auth0.com)")
    p.add_argument("--auth-server", help="okta: the authorization server id (default: default)")
    p.add_argument("--issuer", metavar="URL", help="the tokens' iss (https)")
    p.add_argument("--discovery-url", metavar="URL",
                   help="its OpenID discovery document (default: the issuer's /.well-known/openid-configuration)")
    p.add_argument("--audience", action="append", metavar="A", help="an aud its tokens must carry (repeatable)")
    p.add_argument("--alg", action="append", metavar="ALG", help="an accepted algorithm (repeatable; default RS256)")
    p.add_argument("--user-claim", metavar="CLAIM", help="the claim naming the user (sub, oid, email, upn, ...)")
    p.add_argument("--user-field", choices=("username", "email", "id"), help="the user field that claim maps to")
    p.add_argument("--cache-lifespan", type=int, metavar="SECONDS", help="the longest its keys are cached")
    p.add_argument("--clock-skew", type=int, metavar="SECONDS", help="tolerance on exp, nbf and iat")
    p.add_argument("--check-jti", action=argparse.BooleanOptionalAction, default=None,
                   help="refuse a token whose jti was seen before")
    p.add_argument("--provision-users", action=argparse.BooleanOptionalAction, default=None,
                   help="create unknown users (without a password) on their first token")
    p.add_argument("--provision-role", action="append", metavar="ROLE", help="a role provisioned users get")
    p.add_argument("--scope", action="append", metavar="S", help="the most its tokens carry here (repeatable)")


def add_subparsers(areas, common: argparse.ArgumentParser) -> None:
    integrations = areas.add_parser("integration", help="JWT-bearer integrations (RFC 7523; client_registry)")
    commands = integrations.add_subparsers(dest="command", required=True)

    def command(group, name: str, handler, help: str, key: str | None) -> argparse.ArgumentParser:
        p = group.add_parser(name, parents=[common], help=help, description=help, allow_abbrev=False)
        p.set_defaults(handler=handler, service=REGISTRY)
        if key == "integration":
            p.add_argument("integration_id", metavar="ID")
        elif key == "provider":
            p.add_argument("provider_name", metavar="NAME")
        return p

    _integration_options(command(commands, "add", integration_add, "register an integration", None), update=False)
    command(commands, "list", integration_list, "list every integration", None)
    command(commands, "show", integration_show, "show one integration", "integration")
    _integration_options(command(commands, "update", integration_update,
                                 "change an integration; a key option replaces its key source", "integration"),
                         update=True)
    disable, enable, delete = _kind_commands(INTEGRATIONS)
    command(commands, "disable", disable, "refuse its assertions until enabled again", "integration")
    command(commands, "enable", enable, "accept its assertions again", "integration")
    command(commands, "delete", delete, "delete an integration (no confirmation)", "integration")

    providers = areas.add_parser("provider", help="trusted OpenID providers (client_registry)")
    commands = providers.add_subparsers(dest="command", required=True)
    _provider_options(command(commands, "add", provider_add, "register a provider", "provider"))
    command(commands, "list", provider_list, "list every provider", None)
    command(commands, "show", provider_show, "show one provider", "provider")
    _provider_options(command(commands, "update", provider_update, "change a provider", "provider"))
    disable, enable, delete = _kind_commands(PROVIDERS)
    command(commands, "disable", disable, "refuse its tokens until enabled again", "provider")
    command(commands, "enable", enable, "accept its tokens again", "provider")
    command(commands, "delete", delete, "delete a provider (no confirmation)", "provider")

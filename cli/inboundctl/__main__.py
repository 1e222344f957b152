"""inboundctl: manage Inbound's clients, users and signing keys from the command line.

    inboundctl client create --name NAME [--public] [--grant-type G]... [--scope S]... [--redirect-uri U]...
    inboundctl client list | show ID | disable ID | enable ID | delete ID | rotate-secret ID
    inboundctl client update ID [--name ..] [--scope ..]... [--grant-type ..]... ...
        [--auth-method M] [--jwks FILE | --jwks-uri URL] [--signing-alg ALG] [--exchange-... | --clear-exchange]
    inboundctl client rotate-secret ID [--auth-method client_secret_basic|client_secret_post|client_secret_jwt]
    inboundctl integration add | list | show | update | disable | enable | delete   (see federation_commands.py)
    inboundctl provider add [--template azure|okta|auth0|google] | list | show | update | disable | enable | delete
    inboundctl user create USERNAME [--password-stdin | --no-password] ...   (see user_commands.py)
    inboundctl user list | show | update | disable | enable | delete | set-password | unlock
    inboundctl user grant-role USER ROLE... | revoke-role USER ROLE...
    inboundctl scope create NAME --description TEXT [--no-consent] | list | show | update | delete
    inboundctl keys list
    inboundctl keys rotate [--alg ES256|RS256|EdDSA] [--activation-delay SECONDS]
    inboundctl keys rewrap

Every change is recorded with the operator who made it: the one the operator
certificate names (the services ignore any other name). Only where gRPC runs in
plaintext (INBOUND_GRPC_TLS=plaintext: nobody is authenticated) do they record
--operator NAME (env INBOUND_OPERATOR, default the local user name) as given.

Connections are mutual TLS with the operator certificate named by
INBOUND_TLS_CERT_FILE, INBOUND_TLS_KEY_FILE and INBOUND_TLS_CA_FILE (see the
package docstring); a missing setting is bad input (exit code 2).

Exit codes: 0 done; 1 a service could not be reached or failed; 2 bad input (also: deleting a
scope a client still has); 3 no such client, user or scope; 4 it exists already (a username or a
scope name taken).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

from inboundctl.errors import EXIT_EXISTS, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, CliError

DEFAULT_REGISTRY_ADDR = "127.0.0.1:50051"
DEFAULT_ISSUER_ADDR = "127.0.0.1:50052"
REGISTRY, ISSUER = "client_registry", "token_issuer"

SIGNING_ALGORITHMS = ("ES256", "RS256", "EdDSA")  # token_issuer.keys.ALGORITHMS, without importing crypto code
TOKEN_FORMATS = ("jwt", "opaque")
GRANT_ALIASES = {
    "jwt-bearer": "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "jwt_bearer": "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "token-exchange": "urn:ietf:params:oauth:grant-type:token-exchange",
    "token_exchange": "urn:ietf:params:oauth:grant-type:token-exchange",
}


# --- what each command does ---------------------------------------------------------------------

class Session:
    """The one gRPC channel a command uses, opened inside the running loop and closed after it."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.channel = None

    def _open(self, addr: str, server_name: str):
        from inboundctl import tls_config
        from inboundlib import grpcx

        self.channel = grpcx.channel(addr, tls_config(), server_name=server_name)
        return self.channel

    def registry(self):
        """The registry's Clients service (the only domain inboundctl changes directly)."""
        from services.client_registry.client import ClientsClient

        return ClientsClient(self._open(self.args.registry_addr, "client-registry"))

    def users(self):
        """The registry's user directory (api.UserDirectory)."""
        from services.client_registry.client import UsersClient

        return UsersClient(self._open(self.args.registry_addr, "client-registry"))

    def issuer(self):
        from services.token_issuer.client import IssuerClient

        return IssuerClient(self._open(self.args.issuer_addr, "token-issuer"))

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()


def _scopes(values: list[str] | None) -> list[str] | None:
    """`--scope "a b" --scope c` -> [a, b, c]: a scope token never holds a space (RFC 6749 §3.3)."""
    if values is None:
        return None
    return [s for value in values for s in value.split()]


def _grants(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [GRANT_ALIASES.get(g, g) for g in values]


AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt")
# Methods that prove the client with a secret; moving to client_secret_jwt (or to a secret from
# private_key_jwt) makes a new one, which the registry answers once (rotate-secret --auth-method).
SECRET_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_jwt")
TOKEN_TYPE_ALIASES = {name: f"urn:ietf:params:oauth:token-type:{name}" for name in ("id_token", "access_token", "jwt")}


def _read_jwks(path: str | None) -> str | None:
    """--jwks FILE ("-": standard input): the JWKS as text (the registry checks it)."""
    from inboundctl.federation_commands import read_option_file

    return read_option_file("--jwks", path)


def _exchange_policy(a: argparse.Namespace):
    """The token-exchange policy the --exchange-* options describe (None when none is given)."""
    from services.client_registry.api import TokenExchangePolicy

    given = (a.exchange_token_type, a.exchange_provider, a.exchange_scope, a.exchange_audience)
    if all(v is None for v in given) and not a.exchange_own_tokens and not a.exchange_actor_tokens:
        return None
    return TokenExchangePolicy(
        subject_token_types=tuple(TOKEN_TYPE_ALIASES.get(t, t) for t in a.exchange_token_type or ()),
        providers=tuple(a.exchange_provider or ()), own_tokens=a.exchange_own_tokens,
        scopes=tuple(_scopes(a.exchange_scope) or ()), audiences=tuple(a.exchange_audience or ()),
        actor_tokens=a.exchange_actor_tokens)


def _not_found(client_id: str) -> CliError:
    return CliError(f"no client with id {client_id!r}", EXIT_NOT_FOUND)


async def client_create(s: Session, a: argparse.Namespace) -> None:
    from inboundctl import output
    from services.client_registry.api import ClientSpec

    spec = ClientSpec(
        name=a.name, public=a.public, grant_types=_grants(a.grant_type) or [], scopes=_scopes(a.scope) or [],
        redirect_uris=a.redirect_uri or [], access_token_lifetime=a.access_token_lifetime,
        refresh_token_lifetime=a.refresh_token_lifetime, token_format=a.token_format,
        pkce_required=True if a.pkce_required else None, logo_url=a.logo_url or "", comments=a.comments or "",
        allow_public_password_grant=a.allow_public_password_grant,
        refresh_token_absolute_lifetime=a.refresh_token_absolute_lifetime,
        post_logout_redirect_uris=a.post_logout_redirect_uri or [], token_endpoint_auth_method=a.auth_method,
        jwks=_read_jwks(a.jwks) or "", jwks_uri=a.jwks_uri or "", token_endpoint_auth_signing_alg=a.signing_alg or "",
        token_exchange=_exchange_policy(a))
    client, secret = await s.registry().create_client(spec)
    if a.json:
        output.emit_json({"client": output.client_dict(client), "client_secret": secret or None})
        if secret:
            print(output.SECRET_NOTE, file=sys.stderr)
    else:
        output.show_client_with_secret(client, secret)


async def client_list(s: Session, a: argparse.Namespace) -> None:
    from inboundctl import output

    clients = await s.registry().list_clients()
    if a.json:
        output.emit_json([output.client_dict(c) for c in clients])
    else:
        output.client_table(clients)


async def client_show(s: Session, a: argparse.Namespace) -> None:
    from inboundctl import output

    client = await s.registry().get_client(a.client_id)
    if client is None:
        raise _not_found(a.client_id)
    if a.json:
        output.emit_json(output.client_dict(client))
    else:
        output.show_client(client)


async def _update(s: Session, a: argparse.Namespace, update) -> None:
    from inboundctl import output
    from services.client_registry.api import NotFound

    try:
        client = await s.registry().update_client(a.client_id, update)
    except NotFound:
        raise _not_found(a.client_id) from None
    if a.json:
        output.emit_json(output.client_dict(client))
    else:
        output.show_client(client)


async def client_enable(s: Session, a: argparse.Namespace) -> None:
    from services.client_registry.api import ClientUpdate

    await _update(s, a, ClientUpdate(active=True))


async def client_disable(s: Session, a: argparse.Namespace) -> None:
    from services.client_registry.api import ClientUpdate

    await _update(s, a, ClientUpdate(active=False))


async def client_update(s: Session, a: argparse.Namespace) -> None:
    from services.client_registry.api import ClientUpdate

    update = ClientUpdate(
        name=a.name, grant_types=_grants(a.grant_type), scopes=[] if a.clear_scopes else _scopes(a.scope),
        redirect_uris=[] if a.clear_redirect_uris else a.redirect_uri, token_format=a.token_format,
        access_token_lifetime=a.access_token_lifetime, refresh_token_lifetime=a.refresh_token_lifetime,
        pkce_required=a.pkce_required, logo_url=a.logo_url, comments=a.comments,
        allow_public_password_grant=a.allow_public_password_grant,
        refresh_token_absolute_lifetime=a.refresh_token_absolute_lifetime,
        post_logout_redirect_uris=[] if a.clear_post_logout_redirect_uris else a.post_logout_redirect_uri,
        jwks=_read_jwks(a.jwks), jwks_uri=a.jwks_uri, token_endpoint_auth_signing_alg=a.signing_alg,
        token_exchange=_exchange_policy(a), clear_token_exchange=a.clear_exchange)
    if a.auth_method is not None:
        current = await s.registry().get_client(a.client_id)
        if current is None:
            raise _not_found(a.client_id)
        if a.auth_method != current.token_endpoint_auth_method and (
                a.auth_method == "client_secret_jwt"
                or (a.auth_method in SECRET_METHODS and current.token_endpoint_auth_method not in SECRET_METHODS)):
            # The new method needs a new secret: made (and for client_secret_jwt sealed) by a rotation,
            # first (the other options may need the new method: --signing-alg HS256). One document
            # shows the outcome, with the secret even when the other options are then refused
            # (the old secret no longer works: the new one must not be lost).
            client, secret = await _rotated(s, a, a.auth_method)
            try:
                if any(value is not None for value in vars(update).values() if value is not False):
                    client = await s.registry().update_client(a.client_id, update)
            finally:
                _show_rotated(a, client, secret)
            return
        else:
            update.token_endpoint_auth_method = a.auth_method
    if all(value is None for value in vars(update).values() if value is not False):
        raise CliError("nothing to update: give at least one option (see `inboundctl client update -h`)",
                       EXIT_INVALID)
    await _update(s, a, update)


async def client_delete(s: Session, a: argparse.Namespace) -> None:
    from inboundctl import output

    if not await s.registry().delete_client(a.client_id):
        raise _not_found(a.client_id)
    if a.json:
        output.emit_json({"client_id": a.client_id, "deleted": True})
    else:
        print(f"client {output.clean(a.client_id)} deleted")


async def client_rotate_secret(s: Session, a: argparse.Namespace) -> None:
    _show_rotated(a, *await _rotated(s, a, a.auth_method))


async def _rotated(s: Session, a: argparse.Namespace, auth_method: str | None):
    """A new secret; with `auth_method`, the client moves to it in the same step."""
    from services.client_registry.api import NotFound

    try:
        return await s.registry().rotate_client_secret(a.client_id, auth_method)
    except NotFound:
        raise _not_found(a.client_id) from None


def _show_rotated(a: argparse.Namespace, client, secret: str) -> None:
    """The rotated client and its new secret, printed this once."""
    from inboundctl import output

    if a.json:
        output.emit_json({"client": output.client_dict(client), "client_secret": secret})
        print(output.SECRET_NOTE + " The old secret no longer works.", file=sys.stderr)
    else:
        output.listing([("client_id", client.client_id), ("name", client.name),
                        ("token_endpoint_auth_method", client.token_endpoint_auth_method), ("client_secret", secret)])
        print("\n" + output.SECRET_NOTE + " The old secret no longer works.")


async def client_revoke_tokens(s: Session, a: argparse.Namespace) -> None:
    from inboundctl import output

    # Refuse unknown ids rather than store a revocation for nothing.
    if await s.registry().get_client(a.client_id) is None:
        raise _not_found(a.client_id)
    before_ms = await s.issuer().revoke_client_tokens(a.client_id)
    if a.json:
        output.emit_json({"client_id": a.client_id, "revoked_before": before_ms // 1000,
                          "revoked_before_ms": before_ms})
    else:
        print(f"every token of client {output.clean(a.client_id)} issued until "
              f"{output.when(before_ms // 1000)} is revoked (on every token_issuer replica within a second)")


async def keys_list(s: Session, a: argparse.Namespace) -> None:
    from inboundctl import output

    keys = await s.issuer().list_keys()
    if a.json:
        output.emit_json([output.key_dict(k) for k in keys])
    else:
        output.key_table(keys)


async def keys_rotate(s: Session, a: argparse.Namespace) -> None:
    from inboundctl import output

    key = await s.issuer().rotate_key(a.alg or "", a.activation_delay)
    if a.json:
        output.emit_json(output.key_dict(key))
        return
    output.show_key(key)
    if key.signing:
        print("\nThe new key signs from now on; older keys stay in the JWKS so their tokens keep verifying.")
    else:
        print(f"\nThe new key is published in the JWKS now and signs from {output.when(key.activates_at)}.")


async def keys_rewrap(s: Session, a: argparse.Namespace) -> None:
    from inboundctl import output

    report = await s.issuer().rewrap_keys()
    # The same keys seal client_secret_jwt and HS256 integration secrets, which client_registry holds.
    sealed = await s.registry().rewrap_sealed_secrets()
    if a.json:
        output.emit_json({"rewrapped": list(report.rewrapped), "current": list(report.current),
                          "unreadable": list(report.unreadable),
                          "sealed_secrets": {"rewrapped": sealed.rewrapped, "current": sealed.current,
                                             "unreadable": list(sealed.unreadable)}})
        return
    print(f"{len(report.rewrapped)} signing key(s) re-encrypted under the first key-encryption key, "
          f"{len(report.current)} already under it.")
    if report.unreadable:
        print(f"{len(report.unreadable)} stored key(s) open with none of the issuer's key-encryption keys and were "
              f"left as stored (token_issuer skips them): {', '.join(report.unreadable)}")
    print(f"{sealed.rewrapped} sealed secret(s) (client_secret_jwt clients, HS256 integrations) re-encrypted, "
          f"{sealed.current} already under it.")
    if sealed.unreadable:
        print(f"{len(sealed.unreadable)} sealed secret(s) open with none of client_registry's key-encryption keys "
              f"and were left as stored (rotate them): {', '.join(output.clean(u) for u in sealed.unreadable)}")


# --- the command line ---------------------------------------------------------------------------

def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _common() -> argparse.ArgumentParser:
    """Options accepted both before and after the subcommand (SUPPRESS: an unset one overrides nothing)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable JSON output")
    p.add_argument("--registry-addr", default=argparse.SUPPRESS, metavar="HOST:PORT",
                   help=f"client_registry gRPC address (env INBOUND_REGISTRY_ADDR, default {DEFAULT_REGISTRY_ADDR})")
    p.add_argument("--issuer-addr", default=argparse.SUPPRESS, metavar="HOST:PORT",
                   help=f"token_issuer gRPC address (env INBOUND_ISSUER_ADDR, default {DEFAULT_ISSUER_ADDR})")
    p.add_argument("--audit-addr", default=argparse.SUPPRESS, metavar="HOST:PORT",
                   help="audit gRPC address (env INBOUND_AUDIT_ADDR, default 127.0.0.1:50070)")
    p.add_argument("--operator", default=argparse.SUPPRESS, metavar="NAME",
                   help="who is making the change, for the audit log, only where gRPC is plaintext (env "
                        "INBOUND_OPERATOR, default the local user); with mutual TLS the services record "
                        "the operator your certificate names")
    return p


def _client_settings(p: argparse.ArgumentParser, *, update: bool) -> None:
    verb = "replaces the list" if update else "repeatable"
    p.add_argument("--grant-type", action="append", metavar="G",
                   help=f"grant type ({verb}); jwt-bearer and token-exchange stand for their URNs")
    scopes = p.add_mutually_exclusive_group() if update else p
    scopes.add_argument("--scope", action="append", metavar="S",
                        help=f"scope ({verb}); a space-separated list is split")
    if update:
        scopes.add_argument("--clear-scopes", action="store_true", help="remove every scope")
    uris = p.add_mutually_exclusive_group() if update else p
    uris.add_argument("--redirect-uri", action="append", metavar="U", help=f"redirect URI ({verb})")
    if update:
        uris.add_argument("--clear-redirect-uris", action="store_true", help="remove every redirect URI")
    logout = p.add_mutually_exclusive_group() if update else p
    logout.add_argument("--post-logout-redirect-uri", action="append", metavar="U",
                        help=f"where the browser may go after signing out (OpenID Connect RP-Initiated Logout; "
                             f"{verb})")
    if update:
        logout.add_argument("--clear-post-logout-redirect-uris", action="store_true",
                            help="remove every post-logout redirect URI")
    p.add_argument("--token-format", choices=TOKEN_FORMATS, help="access token format")
    p.add_argument("--access-token-lifetime", type=_positive, metavar="N", help="seconds")
    p.add_argument("--refresh-token-lifetime", type=_positive, metavar="N",
                   help="seconds a refresh token lives (each rotation starts a new one)")
    p.add_argument("--refresh-token-absolute-lifetime", type=_non_negative, metavar="SECONDS",
                   help="seconds after its first refresh token that a refresh-token family ends, however often "
                        "it was rotated (0: no such limit" + (", the default)" if not update else ")"))
    p.add_argument("--allow-public-password-grant", action=argparse.BooleanOptionalAction, default=None,
                   help="let this public client use the password grant without authenticating (RFC 6749 §4.3.2; "
                        "off by default)")
    if update:
        p.add_argument("--pkce-required", action=argparse.BooleanOptionalAction, default=None,
                       help="require PKCE (public clients always do)")
    else:
        p.add_argument("--pkce-required", action="store_true", help="require PKCE (public clients always do)")
    p.add_argument("--logo-url", metavar="URL")
    p.add_argument("--comments", metavar="TEXT")
    p.add_argument("--auth-method", choices=AUTH_METHODS,
                   help="how the client authenticates, the only way it may (RFC 7591 token_endpoint_auth_method; "
                        "default: none for public clients, client_secret_basic otherwise)"
                        + ("; moving to client_secret_jwt prints a new secret" if update else ""))
    p.add_argument("--jwks", metavar="FILE", help="private_key_jwt: a file holding the client's public JWKS ('-': stdin)")
    p.add_argument("--jwks-uri", metavar="URL", help="private_key_jwt: the https URL of the client's JWKS")
    p.add_argument("--signing-alg", metavar="ALG",
                   help="the one JWS algorithm of its assertions (HS256/384/512 for client_secret_jwt; RS*, PS*, "
                        "ES*, EdDSA for private_key_jwt)")
    exchange = p.add_argument_group("token exchange (RFC 8693): what the client may exchange"
                                    + ("; any of these replaces the whole policy" if update else ""))
    exchange.add_argument("--exchange-token-type", action="append", metavar="T",
                          help="a subject token type it may exchange: id_token, access_token, jwt (or the URN); "
                               "repeatable")
    exchange.add_argument("--exchange-provider", action="append", metavar="NAME",
                          help="a registered OpenID provider whose tokens it may exchange; repeatable")
    exchange.add_argument("--exchange-own-tokens", action="store_true", help="it may exchange Inbound's own tokens")
    exchange.add_argument("--exchange-scope", action="append", metavar="S",
                          help="the most an exchanged token may carry (within the client's scopes); repeatable")
    exchange.add_argument("--exchange-audience", action="append", metavar="A",
                          help="an audience it may ask for; repeatable")
    exchange.add_argument("--exchange-actor-tokens", action="store_true",
                          help="it may send actor tokens (delegation: act)")
    if update:
        exchange.add_argument("--clear-exchange", action="store_true", help="it may no longer exchange tokens")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="inboundctl", parents=[common],
        description="Manage Inbound's registered clients, signing keys and token revocation; read the audit log.",
        epilog="Exit codes: 0 done, 1 a service could not be reached or failed, 2 bad input, 3 no such client, "
               "user or scope, 4 it exists already.")
    areas = parser.add_subparsers(dest="area", required=True, metavar="{client,user,scope,integration,provider,keys,audit}")

    client = areas.add_parser("client", help="registered OAuth clients (client_registry)")
    client_cmds = client.add_subparsers(dest="command", required=True)

    def command(group, name: str, handler: Callable[[Session, argparse.Namespace], Awaitable[None]],
                service: str, help: str, client_id: bool = False) -> argparse.ArgumentParser:
        p = group.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(handler=handler, service=service)
        if client_id:
            p.add_argument("client_id", metavar="ID")
        return p

    p = command(client_cmds, "create", client_create, REGISTRY,
                "register a client; its secret is printed this once")
    p.add_argument("--name", required=True)
    p.add_argument("--public", action="store_true", help="a public client (no secret; PKCE always required)")
    _client_settings(p, update=False)

    command(client_cmds, "list", client_list, REGISTRY, "list every client")
    command(client_cmds, "show", client_show, REGISTRY, "show one client", client_id=True)
    command(client_cmds, "disable", client_disable, REGISTRY,
            "refuse the client's token requests until it is enabled again", client_id=True)
    command(client_cmds, "enable", client_enable, REGISTRY, "accept the client's requests again", client_id=True)
    command(client_cmds, "delete", client_delete, REGISTRY, "delete a client (no confirmation)", client_id=True)
    p = command(client_cmds, "rotate-secret", client_rotate_secret, REGISTRY,
                "issue a new secret (printed this once); the old one stops working", client_id=True)
    p.add_argument("--auth-method", choices=SECRET_METHODS,
                   help="move the client to this method in the same step (client_secret_jwt: its secret is "
                        "kept sealed under the key-encryption key)")
    command(client_cmds, "revoke-tokens", client_revoke_tokens, ISSUER,
            "revoke every access and refresh token the client holds now", client_id=True)
    p = command(client_cmds, "update", client_update, REGISTRY,
                "change a client's settings; list options replace the whole list", client_id=True)
    p.add_argument("--name")
    _client_settings(p, update=True)

    from inboundctl import user_commands  # inboundctl user ... (the registry's user directory)
    user_commands.add_subparsers(areas, common)
    from inboundctl import scope_commands  # inboundctl scope ... (the registry's scope catalog)
    scope_commands.add_subparsers(areas, common)
    from inboundctl import federation_commands  # inboundctl integration ... | provider ... (federation)
    federation_commands.add_subparsers(areas, common)

    keys = areas.add_parser("keys", help="token signing keys (token_issuer)")
    key_cmds = keys.add_subparsers(dest="command", required=True)
    command(key_cmds, "list", keys_list, ISSUER, "list signing keys")
    p = command(key_cmds, "rotate", keys_rotate, ISSUER,
                "add a new signing key; it is in the JWKS at once and signs after the activation delay")
    p.add_argument("--alg", choices=SIGNING_ALGORITHMS, help="signing algorithm (default: the issuer's)")
    p.add_argument("--activation-delay", type=_non_negative, metavar="SECONDS",
                   help="seconds until the key signs (default: the issuer's INBOUND_KEY_ACTIVATION_DELAY)")
    command(key_cmds, "rewrap", keys_rewrap, ISSUER,
            "re-encrypt every stored signing key, and client_registry's sealed client_secret_jwt and HS256 "
            "integration secrets, under the first key-encryption key (after it was put first on every "
            "token_issuer, client_registry and jwt_bearer replica; then the older keys can be dropped)")
    from inboundctl import audit_commands  # inboundctl audit tail | search (the audit service)
    audit_commands.add_subparsers(areas)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    args.registry_addr = (getattr(args, "registry_addr", None) or os.environ.get("INBOUND_REGISTRY_ADDR")
                          or DEFAULT_REGISTRY_ADDR)
    args.issuer_addr = (getattr(args, "issuer_addr", None) or os.environ.get("INBOUND_ISSUER_ADDR")
                        or DEFAULT_ISSUER_ADDR)
    args.operator = getattr(args, "operator", None) or os.environ.get("INBOUND_OPERATOR") or _local_user()
    return args


def _local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return f"uid-{os.getuid()}"


async def _run(args: argparse.Namespace) -> None:
    from inboundlib import actors

    # Every call this command makes names the operator (grpcx.request_metadata sends it); with
    # mutual TLS the services ignore it and take the operator from the certificate.
    actors.actor_var.set(actors.actor(actors.OPERATOR, args.operator))
    session = Session(args)
    try:
        await args.handler(session, args)
    finally:
        await session.close()


def _failure(exc: BaseException, args: argparse.Namespace) -> CliError | None:
    """The message and exit code for an expected failure; None for a bug (which keeps its traceback)."""
    import grpc

    from inboundlib.batching import Expired, Overloaded
    from inboundlib.config import ConfigError
    from inboundlib.oauth.errors import OAuthError
    from services.client_registry.api import AlreadyExists, InUse, InvalidArgument, NotFound

    addr = args.registry_addr if args.service == REGISTRY else args.issuer_addr
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, ConfigError):
        return CliError(str(exc), EXIT_INVALID)
    if isinstance(exc, InvalidArgument):
        return CliError(str(exc) or "invalid argument", EXIT_INVALID)
    if isinstance(exc, NotFound):
        if getattr(args, "client_id", None):
            return CliError(f"no client with id {args.client_id!r}", EXIT_NOT_FOUND)
        if getattr(args, "user", None):
            return CliError(f"no user with id or username {args.user!r}", EXIT_NOT_FOUND)
        if getattr(args, "scope_name", None):
            return CliError(f"no scope {args.scope_name!r} in the catalog", EXIT_NOT_FOUND)
        return CliError(str(exc), EXIT_NOT_FOUND)
    if isinstance(exc, InUse):  # a scope a client still has
        return CliError(str(exc), EXIT_INVALID)
    if isinstance(exc, AlreadyExists):  # a username taken (case-insensitively), a scope name taken
        return CliError(str(exc) or "it exists already", EXIT_EXISTS)
    if isinstance(exc, OAuthError):  # token_issuer refuses a rotation as invalid_request
        return CliError(exc.description, EXIT_INVALID)
    if isinstance(exc, grpc.aio.AioRpcError):
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return CliError(f"cannot reach {args.service} at {addr} ({exc.details()})", EXIT_UNAVAILABLE)
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CliError(f"{args.service} at {addr} did not answer in time", EXIT_UNAVAILABLE)
        return CliError(f"{args.service} at {addr} failed: {exc.code().name}: {exc.details()}", EXIT_UNAVAILABLE)
    if isinstance(exc, (Expired, Overloaded)):
        return CliError(f"{args.service} at {addr} did not answer in time", EXIT_UNAVAILABLE)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.area == "audit":
        from inboundctl import audit_commands
        return audit_commands.main(args)
    try:
        asyncio.run(_run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `inboundctl client list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        failure = _failure(exc, args)
        if failure is None:
            raise
        print(f"inboundctl: error: {failure}", file=sys.stderr)
        return failure.code
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `inboundctl client list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

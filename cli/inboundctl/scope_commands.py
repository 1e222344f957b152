"""inboundctl scope: the scope catalog (api.ScopeCatalog, over gRPC).

    inboundctl scope create NAME --description TEXT [--no-consent]
    inboundctl scope list
    inboundctl scope show NAME
    inboundctl scope update NAME [--description TEXT] [--consent-required | --no-consent-required]
    inboundctl scope delete NAME

A client may only be given scopes of the catalog. The description is what the
consent page shows the user, in words ("Read your calendar"); a scope without
consent required (like `openid`) is granted without asking. A scope still given
to a client cannot be deleted (exit code 2, naming the clients).
"""
from __future__ import annotations

import argparse
import sys

from inboundctl.errors import EXIT_INVALID, EXIT_NOT_FOUND, CliError

REGISTRY = "client_registry"
SCOPE_FIELDS = ("name", "description", "consent_required", "created_at", "updated_at")


def not_found(name: str) -> CliError:
    return CliError(f"no scope {name!r} in the catalog", EXIT_NOT_FOUND)


def _catalog(s):
    from services.client_registry.client import ScopesClient

    return ScopesClient(s._open(s.args.registry_addr, "client-registry"))


def _scope_dict(scope) -> dict:
    return {name: getattr(scope, name) for name in SCOPE_FIELDS}


def _rows(scope) -> list[tuple[str, object]]:
    from inboundctl import output

    return [("name", scope.name), ("description", scope.description),
            ("consent_required", output.yes_no(scope.consent_required)),
            ("created", output.when(scope.created_at)), ("updated", output.when(scope.updated_at))]


def _emit(a: argparse.Namespace, scope) -> None:
    from inboundctl import output

    if a.json:
        output.emit_json(_scope_dict(scope))
    else:
        output.listing(_rows(scope))


# --- the commands -------------------------------------------------------------------------------

async def scope_create(s, a: argparse.Namespace) -> None:
    _emit(a, await _catalog(s).create_scope(a.scope_name, a.description, not a.no_consent))


async def scope_list(s, a: argparse.Namespace) -> None:
    from inboundctl import output

    scopes = await _catalog(s).list_scopes()
    if a.json:
        output.emit_json([_scope_dict(x) for x in scopes])
    elif not scopes:
        print("the scope catalog is empty")
    else:
        output.table(("NAME", "CONSENT", "DESCRIPTION"),
                     [(x.name, output.yes_no(x.consent_required), x.description) for x in scopes])


async def scope_show(s, a: argparse.Namespace) -> None:
    [scope] = await _catalog(s).get_scopes([a.scope_name])
    if scope is None:
        raise not_found(a.scope_name)
    _emit(a, scope)


async def scope_update(s, a: argparse.Namespace) -> None:
    from services.client_registry.api import ScopeUpdate

    if a.description is None and a.consent_required is None:
        raise CliError("nothing to update: give --description or --[no-]consent-required", EXIT_INVALID)
    _emit(a, await _catalog(s).update_scope(a.scope_name, ScopeUpdate(description=a.description,
                                                                      consent_required=a.consent_required)))


async def scope_delete(s, a: argparse.Namespace) -> None:
    from inboundctl import output
    from services.client_registry.api import InUse

    try:
        deleted = await _catalog(s).delete_scope(a.scope_name)
    except InUse as exc:
        raise CliError(f"{exc}: take it from them first (inboundctl client update ID --scope ...)",
                       EXIT_INVALID) from None
    if not deleted:
        raise not_found(a.scope_name)
    if a.json:
        output.emit_json({"name": a.scope_name, "deleted": True})
    else:
        print(f"scope {output.clean(a.scope_name)} deleted", file=sys.stdout)


def add_subparsers(areas, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    scopes = areas.add_parser("scope", help="the scope catalog (client_registry): scopes clients may be given")
    commands = scopes.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str, named: bool = True) -> argparse.ArgumentParser:
        p = commands.add_parser(name, parents=[common], help=help, description=help, allow_abbrev=False)
        p.set_defaults(handler=handler, service=REGISTRY)
        if named:
            p.add_argument("scope_name", metavar="NAME", help="the scope (an RFC 6749 scope token)")
        return p

    p = command("create", scope_create, "add a scope to the catalog")
    p.add_argument("--description", required=True, metavar="TEXT",
                   help="what the consent page shows the user, in words")
    p.add_argument("--no-consent", action="store_true",
                   help="grant it without asking the user (like openid); default: consent required")
    command("list", scope_list, "list the catalog", named=False)
    command("show", scope_show, "show one scope")
    p = command("update", scope_update, "change a scope's description or whether it needs consent")
    p.add_argument("--description", metavar="TEXT")
    p.add_argument("--consent-required", action=argparse.BooleanOptionalAction, default=None,
                   help="ask the user before granting it")
    command("delete", scope_delete, "delete a scope no client has")
    return scopes

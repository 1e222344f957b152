"""inboundctl user: the registry's user directory (api.UserDirectory, over gRPC).

    inboundctl user create USERNAME [--email E] [--display-name N] [--role R]... [--disabled]
                                    [--password-stdin | --no-password]
    inboundctl user list [--query TEXT] [--limit N]
    inboundctl user show USER | disable USER | enable USER | unlock USER
    inboundctl user update USER [--username U] [--email E] [--display-name N] ...
    inboundctl user set-password USER [--password-stdin]
    inboundctl user grant-role USER ROLE... | revoke-role USER ROLE...
    inboundctl user delete USER [--yes]

USER is a user's id or username. A password is read from a prompt on the terminal
(asked twice) or, with --password-stdin, from one line of standard input; there is
no option that takes it on the command line, and no environment variable: both are
visible to other local users and kept in shell histories. A password change,
disabling and deleting revoke every token the user holds.
"""
from __future__ import annotations

import argparse
import re
import sys

from inboundctl.errors import EXIT_INVALID, EXIT_NOT_FOUND, CliError

REGISTRY = "client_registry"
LIST_PAGE = 1000  # the registry's page size limit (ListUsersRequest.limit)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
REVOKED_NOTE = "Every token the user held is revoked (on every replica within a second)."


def not_found(ref: str) -> CliError:
    return CliError(f"no user with id or username {ref!r}", EXIT_NOT_FOUND)


async def resolve(directory, ref: str):
    """The user `ref` names: by id when it has the form of one (user ids are UUIDs),
    else (or when no user has that id) by username, case-insensitively."""
    user = None
    if _UUID.fullmatch(ref):
        user = await directory.get_user(id=ref.lower())
    if user is None:
        user = await directory.get_user(username=ref)
    if user is None:
        raise not_found(ref)
    return user


def read_password(a: argparse.Namespace) -> str:
    """The new password, from stdin (--password-stdin) or the terminal; "" for --no-password."""
    from inboundctl import passwords

    if getattr(a, "no_password", False):
        return ""
    try:
        return passwords.from_stdin() if a.password_stdin else passwords.from_prompt()
    except passwords.PasswordInputError as exc:
        raise CliError(str(exc), EXIT_INVALID) from None


def confirm(question: str) -> bool:
    """Ask on the terminal; without one, refuse (a script says --yes)."""
    if not sys.stdin.isatty():
        raise CliError("deleting a user asks for confirmation on a terminal: add --yes to skip it", EXIT_INVALID)
    print(question, end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _emit(a: argparse.Namespace, user, *note: str) -> None:
    from inboundctl import output

    if a.json:
        output.emit_json(output.user_dict(user))
        for line in note:
            print(line, file=sys.stderr)
    else:
        output.show_user(user)
        if note:
            print("\n" + " ".join(note))


# --- the commands -------------------------------------------------------------------------------

async def user_create(s, a: argparse.Namespace) -> None:
    from services.client_registry.api import UserSpec

    password = read_password(a)
    spec = UserSpec(username=a.username, email=a.email or "", display_name=a.display_name or "",
                    roles=list(a.role or []), given_name=a.given_name or "", family_name=a.family_name or "",
                    email_verified=a.email_verified, locale=a.locale or "", zoneinfo=a.zoneinfo or "",
                    active=not a.disabled, password=password)
    user = await s.users().create_user(spec)
    _emit(a, user, *(() if password else ("The user has no password: set one with "
                                          f"`inboundctl user set-password {user.id}`.",)))


async def user_list(s, a: argparse.Namespace) -> None:
    from inboundctl import output

    directory = s.users()
    users: list = []
    after = ""
    while a.limit is None or len(users) < a.limit:
        want = LIST_PAGE if a.limit is None else min(LIST_PAGE, a.limit - len(users))
        page = await directory.list_users(after=after, limit=want, query=a.query or "")
        users.extend(page.users)
        if not page.next or not page.users:
            break
        after = page.next
    if a.limit is not None:
        users = users[:a.limit]
    if a.json:
        output.emit_json([output.user_dict(u) for u in users])
    else:
        output.user_table(users)


async def user_show(s, a: argparse.Namespace) -> None:
    _emit(a, await resolve(s.users(), a.user))


async def _change(s, a: argparse.Namespace, call, *note: str, before=None) -> None:
    """Resolve USER, run `before()` (if any), then `await call(directory, user)` -> the changed
    user. A user deleted in between is answered as unknown."""
    from services.client_registry.api import NotFound

    directory = s.users()
    user = await resolve(directory, a.user)
    if before is not None:
        before()
    try:
        changed = await call(directory, user)
    except NotFound:
        raise not_found(a.user) from None
    _emit(a, changed, *note)


async def user_update(s, a: argparse.Namespace) -> None:
    from services.client_registry.api import UserUpdate

    update = UserUpdate(username=a.username, email=a.email, display_name=a.display_name, given_name=a.given_name,
                        family_name=a.family_name, email_verified=a.email_verified, locale=a.locale,
                        zoneinfo=a.zoneinfo)
    if all(value is None for value in vars(update).values()):
        raise CliError("nothing to update: give at least one option (see `inboundctl user update -h`)",
                       EXIT_INVALID)
    await _change(s, a, lambda d, u: d.update_user(u.id, update))


async def user_disable(s, a: argparse.Namespace) -> None:
    from services.client_registry.api import UserUpdate

    await _change(s, a, lambda d, u: d.update_user(u.id, UserUpdate(active=False)),
                  "The user cannot sign in until enabled again.", REVOKED_NOTE)


async def user_enable(s, a: argparse.Namespace) -> None:
    from services.client_registry.api import UserUpdate

    await _change(s, a, lambda d, u: d.update_user(u.id, UserUpdate(active=True)))


async def user_unlock(s, a: argparse.Namespace) -> None:
    await _change(s, a, lambda d, u: d.unlock_user(u.id), "Failed sign-ins forgotten: back-off and locks lifted.")


async def user_grant_role(s, a: argparse.Namespace) -> None:
    await _change(s, a, lambda d, u: d.change_user_roles(u.id, add=list(a.roles), remove=[]))


async def user_revoke_role(s, a: argparse.Namespace) -> None:
    await _change(s, a, lambda d, u: d.change_user_roles(u.id, add=[], remove=list(a.roles)))


async def user_set_password(s, a: argparse.Namespace) -> None:
    password: list[str] = []  # read once USER is known: an unknown user is said before a password is asked for
    await _change(s, a, lambda d, u: d.set_user_password(u.id, password[0]), "Password changed.", REVOKED_NOTE,
                  before=lambda: password.append(read_password(a)))


async def user_delete(s, a: argparse.Namespace) -> None:
    from inboundctl import output

    directory = s.users()
    user = await resolve(directory, a.user)
    if not a.yes and not confirm(f"Delete user {output.clean(user.username)} ({user.id})? Every token they hold "
                                 "is revoked. [y/N] "):
        raise CliError("not confirmed: nothing deleted", EXIT_INVALID)
    if not await directory.delete_user(user.id):
        raise not_found(a.user)
    if a.json:
        output.emit_json({"id": user.id, "username": user.username, "deleted": True})
    else:
        print(f"user {output.clean(user.username)} ({user.id}) deleted. {REVOKED_NOTE}")


# --- the command line ---------------------------------------------------------------------------

def _password_source(p: argparse.ArgumentParser, *, create: bool) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input (one line; its newline is dropped) "
                            "instead of asking for it twice on the terminal")
    if create:
        group.add_argument("--no-password", action="store_true",
                           help="create the user without a password (no password sign-in until one is set)")


def _profile(p: argparse.ArgumentParser, *, update: bool) -> None:
    if update:
        p.add_argument("--username", help="a new username (unique, case-insensitively)")
    p.add_argument("--email")
    if update:
        p.add_argument("--email-verified", action=argparse.BooleanOptionalAction, default=None,
                       help="whether the email address was verified")
    else:
        p.add_argument("--email-verified", action="store_true", help="the email address is verified")
    p.add_argument("--display-name", metavar="NAME", help="the name shown for the user (OIDC `name`)")
    p.add_argument("--given-name", metavar="NAME")
    p.add_argument("--family-name", metavar="NAME")
    p.add_argument("--locale", metavar="TAG", help="a BCP 47 language tag, e.g. en-GB")
    p.add_argument("--zoneinfo", metavar="ZONE", help="an IANA time zone, e.g. Europe/Paris")


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_subparsers(areas, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    users = areas.add_parser("user", help="users (client_registry's user directory)")
    commands = users.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str, user: bool = True) -> argparse.ArgumentParser:
        # No abbreviations: `--password` must not be taken as `--password-stdin` (or anything).
        p = commands.add_parser(name, parents=[common], help=help, description=help, allow_abbrev=False)
        p.set_defaults(handler=handler, service=REGISTRY)
        if user:
            p.add_argument("user", metavar="USER", help="the user's id or username")
        return p

    p = command("create", user_create, "create a user; its password is asked for twice (or read from stdin)",
                user=False)
    p.add_argument("username", metavar="USERNAME")
    _profile(p, update=False)
    p.add_argument("--role", action="append", metavar="ROLE",
                   help="a role (repeatable): oauth_admin, mi_admin, admin, or one of your own")
    p.add_argument("--disabled", action="store_true", help="create the user disabled")
    _password_source(p, create=True)

    p = command("list", user_list, "list users, by username", user=False)
    p.add_argument("--query", metavar="TEXT", help="only users whose username, email or display name contains it")
    p.add_argument("--limit", type=_limit, metavar="N", help="at most N users (default: all)")

    command("show", user_show, "show one user")
    p = command("update", user_update, "change a user's profile")
    _profile(p, update=True)
    command("disable", user_disable, "refuse the user's sign-ins and revoke every token they hold")
    command("enable", user_enable, "let a disabled user sign in again")
    command("unlock", user_unlock, "lift a user's sign-in back-off and lock (their failed sign-ins are forgotten)")
    p = command("set-password", user_set_password,
                "set a user's password (asked twice, or read from stdin); revokes every token they hold")
    _password_source(p, create=False)
    p = command("grant-role", user_grant_role, "give a user one or more roles")
    p.add_argument("roles", nargs="+", metavar="ROLE")
    p = command("revoke-role", user_revoke_role, "take one or more roles from a user")
    p.add_argument("roles", nargs="+", metavar="ROLE")
    p = command("delete", user_delete, "delete a user (asks first) and revoke every token they hold")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    return users

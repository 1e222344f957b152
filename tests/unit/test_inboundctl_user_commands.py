"""inboundctl user ...: argument parsing, how passwords are read (prompt or stdin, never
argv or the environment), confirmation, --json shapes and exit codes, against an
in-memory api.UserDirectory (the real one: tests/integration/test_inboundctl_users.py)."""
from __future__ import annotations

import argparse
import io
import json
import uuid
from dataclasses import replace

import pytest

from inboundctl import __main__ as ctl
from inboundctl import output, passwords, user_commands
from services.client_registry.api import AlreadyExists, NotFound, UserPage, UserRecord, UserSpec, UserUpdate

PASSWORD = "correct horse battery staple"


class FakeDirectory:
    """api.UserDirectory in memory; remembers the passwords it was given (to check what the CLI sent)."""

    def __init__(self):
        self.users: dict[str, UserRecord] = {}
        self.passwords: dict[str, str] = {}
        self.calls: list[str] = []

    def _by_name(self, username: str) -> UserRecord | None:
        return next((u for u in self.users.values() if u.username.lower() == username.lower()), None)

    async def create_user(self, spec: UserSpec) -> UserRecord:
        self.calls.append("create_user")
        if self._by_name(spec.username):
            raise AlreadyExists(f"a user named {spec.username!r} exists already")
        user = UserRecord(id=str(uuid.uuid4()), username=spec.username, email=spec.email,
                          display_name=spec.display_name, active=spec.active, roles=tuple(spec.roles),
                          given_name=spec.given_name, family_name=spec.family_name,
                          email_verified=spec.email_verified, locale=spec.locale, zoneinfo=spec.zoneinfo,
                          created_at=1_800_000_000, updated_at=1_800_000_000,
                          password_changed_at=1_800_000_000 if spec.password else 0)
        self.users[user.id] = user
        if spec.password:
            self.passwords[user.id] = spec.password
        return user

    async def get_user(self, *, id: str = "", username: str = "") -> UserRecord | None:
        self.calls.append("get_user")
        return self.users.get(id) if id else self._by_name(username)

    async def list_users(self, after: str = "", limit: int = 1000, query: str = "") -> UserPage:
        self.calls.append(f"list_users {after!r} {limit}")
        ordered = sorted((u for u in self.users.values() if query.lower() in u.username.lower()),
                         key=lambda u: u.username.lower())
        rest = [u for u in ordered if u.username.lower() > after.lower()]
        page = rest[:limit]
        return UserPage(page, page[-1].username if len(rest) > limit else "")

    def _existing(self, user_id: str) -> UserRecord:
        if user_id not in self.users:
            raise NotFound(f"no user {user_id}")
        return self.users[user_id]

    async def update_user(self, user_id: str, update: UserUpdate) -> UserRecord:
        self.calls.append("update_user")
        changes = {k: v for k, v in vars(update).items() if v is not None}
        self.users[user_id] = replace(self._existing(user_id), **changes)
        return self.users[user_id]

    async def delete_user(self, user_id: str) -> bool:
        self.calls.append("delete_user")
        return self.users.pop(user_id, None) is not None

    async def set_user_password(self, user_id: str, password: str) -> UserRecord:
        self.calls.append("set_user_password")
        self.passwords[user_id] = password
        self.users[user_id] = replace(self._existing(user_id), password_changed_at=1_800_000_100)
        return self.users[user_id]

    async def unlock_user(self, user_id: str) -> UserRecord:
        self.calls.append("unlock_user")
        self.users[user_id] = replace(self._existing(user_id), locked_until=0)
        return self.users[user_id]

    async def change_user_roles(self, user_id: str, add: list[str], remove: list[str]) -> UserRecord:
        self.calls.append("change_user_roles")
        user = self._existing(user_id)
        roles = [r for r in user.roles if r not in remove] + [r for r in add if r not in user.roles]
        self.users[user_id] = replace(user, roles=tuple(roles))
        return self.users[user_id]


class Stdin:
    """sys.stdin stand-in: bytes on .buffer, and whether it is a terminal."""

    def __init__(self, data: bytes = b"", tty: bool = False):
        self.buffer = io.BytesIO(data)
        self.buffer.isatty = lambda: tty
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def readline(self) -> str:
        return self.buffer.readline().decode()


@pytest.fixture
def directory(monkeypatch):
    fake = FakeDirectory()
    monkeypatch.setattr(ctl.Session, "users", lambda self: fake)
    monkeypatch.setenv("INBOUND_GRPC_TLS", "plaintext")  # never used: nothing is dialled
    return fake


def run(capsys, monkeypatch, *argv: str, stdin: Stdin | None = None) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", stdin or Stdin())
    code = ctl.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def created(capsys, monkeypatch, username: str = "alice", *extra: str) -> dict:
    code, out, err = run(capsys, monkeypatch, "user", "create", username, "--password-stdin", "--json", *extra,
                         stdin=Stdin(PASSWORD.encode() + b"\n"))
    assert code == 0, err
    return json.loads(out)


# --- parsing: there is no way to give a password on the command line ---------------------------

def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_no_option_of_any_command_takes_a_password_value():
    """Every option whose name says password is a flag (takes no value): the password can come
    from the prompt or stdin only."""
    password_options = [(option, action) for p in _parsers(ctl.build_parser()) for action in p._actions
                        for option in action.option_strings if "password" in option]
    assert {option for option, _ in password_options} >= {"--password-stdin", "--no-password"}
    for option, action in password_options:  # the client's --allow-public-password-grant is a switch too
        assert action.nargs == 0, f"{option} takes a value"


@pytest.mark.parametrize("argv", [
    ["user", "create", "alice", "--password", PASSWORD],
    ["user", "create", "alice", f"--password={PASSWORD}"],
    ["user", "create", "alice", "--pass", PASSWORD],  # no abbreviation of --password-stdin either
    ["user", "set-password", "alice", "--password", PASSWORD],
    ["user", "set-password", "alice", "-p", PASSWORD],
    ["user", "create", "alice", "--password-stdin=" + PASSWORD],
])
def test_a_password_on_the_command_line_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        ctl.parse_args(argv)
    assert exit.value.code == 2


def test_password_sources_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit:
        ctl.parse_args(["user", "create", "alice", "--password-stdin", "--no-password"])
    assert exit.value.code == 2


def test_commands_parse_users_roles_and_profile():
    a = ctl.parse_args(["user", "grant-role", "alice", "admin", "mi_admin", "--json"])
    assert (a.handler, a.user, a.roles, a.json) == (user_commands.user_grant_role, "alice", ["admin", "mi_admin"], True)
    a = ctl.parse_args(["user", "update", "alice", "--no-email-verified", "--display-name", "Alice A."])
    assert (a.email_verified, a.display_name, a.email) == (False, "Alice A.", None)
    a = ctl.parse_args(["user", "create", "bob", "--role", "admin", "--role", "ops", "--disabled", "--no-password"])
    assert (a.username, a.role, a.disabled, a.no_password, a.password_stdin) == ("bob", ["admin", "ops"], True,
                                                                                  True, False)
    a = ctl.parse_args(["user", "delete", "bob", "-y"])
    assert a.yes
    for bad in (["user", "grant-role", "alice"], ["user", "list", "--limit", "0"], ["user", "show"]):
        with pytest.raises(SystemExit):
            ctl.parse_args(bad)


def test_client_flags_for_password_grants_and_absolute_refresh_lifetime():
    a = ctl.parse_args(["client", "create", "--name", "m", "--public", "--allow-public-password-grant",
                        "--refresh-token-absolute-lifetime", "86400"])
    assert (a.allow_public_password_grant, a.refresh_token_absolute_lifetime) == (True, 86400)
    a = ctl.parse_args(["client", "update", "X", "--no-allow-public-password-grant",
                        "--refresh-token-absolute-lifetime", "0"])
    assert (a.allow_public_password_grant, a.refresh_token_absolute_lifetime) == (False, 0)
    a = ctl.parse_args(["client", "update", "X", "--name", "n"])
    assert (a.allow_public_password_grant, a.refresh_token_absolute_lifetime) == (None, None)
    with pytest.raises(SystemExit):
        ctl.parse_args(["client", "update", "X", "--refresh-token-absolute-lifetime", "-1"])


async def test_client_flags_reach_the_spec_and_the_update():
    seen = []

    class Clients:
        async def create_client(self, spec):
            seen.append(spec)
            raise NotFound("stop here")

        async def update_client(self, client_id, update):
            seen.append(update)
            raise NotFound("stop here")

    class S:
        def registry(self):
            return Clients()

    for argv in (["client", "create", "--name", "m", "--allow-public-password-grant",
                  "--refresh-token-absolute-lifetime", "3600"],
                 ["client", "update", "X", "--allow-public-password-grant", "--refresh-token-absolute-lifetime",
                  "3600"]):
        a = ctl.parse_args(argv)
        with pytest.raises(Exception):
            await a.handler(S(), a)
    assert [(x.allow_public_password_grant, x.refresh_token_absolute_lifetime) for x in seen] == [(True, 3600)] * 2


# --- reading the password ---------------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (b"s3cret-pass\n", "s3cret-pass"),
    (b"s3cret-pass\r\n", "s3cret-pass"),
    (b"s3cret-pass", "s3cret-pass"),  # printf without a newline
    (b"  spaces kept  \n", "  spaces kept  "),
    ("pässwörd ünïcode\n".encode(), "pässwörd ünïcode"),
])
def test_stdin_gives_one_line_without_its_newline(data, expected):
    assert passwords.from_stdin(io.BytesIO(data), interactive=False) == expected


@pytest.mark.parametrize("data, message", [
    (b"", "no password"),
    (b"\n", "no password"),
    (b"first\nsecond\n", "more than one line"),
    (b"\xff\xfe\n", "not UTF-8"),
    (b"x" * (passwords.MAX_STDIN_BYTES + 1), "longer than"),
])
def test_stdin_refuses_what_is_not_one_password(data, message):
    with pytest.raises(passwords.PasswordInputError) as error:
        passwords.from_stdin(io.BytesIO(data), interactive=False)
    assert message in str(error.value)
    assert "first" not in str(error.value) and "x" * 20 not in str(error.value)


def test_stdin_from_a_terminal_reads_the_first_line_only():
    stream = io.BytesIO(b"typed\nnot read\n")
    assert passwords.from_stdin(stream, interactive=True) == "typed"
    assert stream.read() == b"not read\n"


def test_prompt_asks_twice_and_the_answers_must_match():
    answers = iter([PASSWORD, PASSWORD])
    prompts = []

    def ask(prompt):
        prompts.append(prompt)
        return next(answers)

    assert passwords.from_prompt(ask, terminal=True) == PASSWORD
    assert len(prompts) == 2
    answers = iter([PASSWORD, PASSWORD + "x"])
    with pytest.raises(passwords.PasswordInputError, match="do not match"):
        passwords.from_prompt(lambda _: next(answers), terminal=True)
    with pytest.raises(passwords.PasswordInputError, match="empty"):
        passwords.from_prompt(lambda _: "", terminal=True)
    with pytest.raises(passwords.PasswordInputError, match="no terminal"):
        passwords.from_prompt(lambda _: PASSWORD, terminal=False)


def test_create_prompts_on_a_terminal_and_sends_what_was_typed(directory, capsys, monkeypatch):
    typed = iter(["typed password", "typed password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(typed))
    code, out, err = run(capsys, monkeypatch, "user", "create", "carol", "--json", stdin=Stdin(tty=True))
    assert code == 0, err
    user = json.loads(out)
    assert directory.passwords[user["id"]] == "typed password"
    assert "typed password" not in out + err


def test_create_without_a_terminal_or_stdin_flag_asks_nothing_and_changes_nothing(directory, capsys, monkeypatch):
    """A password in the environment is not read either: there is no variable for it."""
    monkeypatch.setenv("INBOUND_PASSWORD", PASSWORD)
    monkeypatch.setenv("PASSWORD", PASSWORD)
    code, out, err = run(capsys, monkeypatch, "user", "create", "dave", stdin=Stdin(PASSWORD.encode()))
    assert code == 2 and "--password-stdin" in err and out == ""
    assert directory.users == {} and "create_user" not in directory.calls


def test_mismatched_prompts_change_nothing(directory, capsys, monkeypatch):
    user = created(capsys, monkeypatch)
    typed = iter(["new password 1", "new password 2"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(typed))
    code, _, err = run(capsys, monkeypatch, "user", "set-password", "alice", stdin=Stdin(tty=True))
    assert code == 2 and "do not match" in err
    assert directory.passwords[user["id"]] == PASSWORD


# --- commands against the directory -----------------------------------------------------------------

def test_create_json_is_the_user_record_without_any_password(directory, capsys, monkeypatch):
    user = created(capsys, monkeypatch, "alice", "--email", "alice@example.com", "--role", "admin",
                   "--display-name", "Alice")
    assert set(user) == set(output.USER_FIELDS)
    assert (user["username"], user["email"], user["roles"], user["active"]) == (
        "alice", "alice@example.com", ["admin"], True)
    assert user["password_changed_at"] > 0
    assert directory.passwords[user["id"]] == PASSWORD  # the newline stripped


def test_no_password_creates_a_user_without_one(directory, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "user", "create", "svc", "--no-password", "--json")
    assert code == 0, err
    user = json.loads(out)
    assert user["password_changed_at"] == 0 and user["id"] not in directory.passwords
    assert "set-password" in err  # the hint goes to stderr, JSON stays clean


def test_human_output_shows_the_user(directory, capsys, monkeypatch):
    user = created(capsys, monkeypatch, "alice", "--role", "oauth_admin")
    code, out, _ = run(capsys, monkeypatch, "user", "show", "ALICE")  # usernames are case-insensitive
    assert code == 0
    rows = dict(line.split(":", 1) for line in out.splitlines())
    assert rows["id"].strip() == user["id"] and rows["roles"].strip() == "oauth_admin"
    assert rows["password"].strip().startswith("set ")
    code, out, _ = run(capsys, monkeypatch, "user", "list")
    assert out.splitlines()[0].split() == ["ID", "USERNAME", "EMAIL", "ACTIVE", "ROLES", "PASSWORD", "LOCKED",
                                           "CREATED"]
    assert user["id"] in out


def test_show_by_id_and_by_username(directory, capsys, monkeypatch):
    user = created(capsys, monkeypatch)
    for ref in (user["id"], user["id"].upper(), "alice", "Alice"):
        code, out, _ = run(capsys, monkeypatch, "user", "show", ref, "--json")
        assert code == 0 and json.loads(out) == user


def test_a_username_shaped_like_an_id_is_still_found(directory, capsys, monkeypatch):
    name = str(uuid.uuid4())
    user = created(capsys, monkeypatch, name)
    code, out, _ = run(capsys, monkeypatch, "user", "show", name, "--json")
    assert code == 0 and json.loads(out)["id"] == user["id"]


def test_list_json_pages_through_the_directory(directory, capsys, monkeypatch):
    monkeypatch.setattr(user_commands, "LIST_PAGE", 2)
    for name in ("erin", "bob", "dan", "carol", "alice"):
        created(capsys, monkeypatch, name)
    code, out, _ = run(capsys, monkeypatch, "user", "list", "--json")
    listed = json.loads(out)
    assert [u["username"] for u in listed] == ["alice", "bob", "carol", "dan", "erin"]
    assert all(set(u) == set(output.USER_FIELDS) for u in listed)
    assert sum(call.startswith("list_users") for call in directory.calls) == 3
    code, out, _ = run(capsys, monkeypatch, "user", "list", "--json", "--limit", "3")
    assert [u["username"] for u in json.loads(out)] == ["alice", "bob", "carol"]
    code, out, _ = run(capsys, monkeypatch, "user", "list", "--json", "--query", "ar")
    assert [u["username"] for u in json.loads(out)] == ["carol"]
    directory.users.clear()
    assert run(capsys, monkeypatch, "user", "list", "--json")[1] == "[]\n"
    assert run(capsys, monkeypatch, "user", "list")[1] == "no users\n"


def test_update_disable_enable_roles_unlock(directory, capsys, monkeypatch):
    user = created(capsys, monkeypatch)

    def ok(*argv):
        code, out, err = run(capsys, monkeypatch, *argv, "--json")
        assert code == 0, err
        return json.loads(out), err

    updated, _ = ok("user", "update", "alice", "--email", "a@example.com", "--email-verified", "--locale", "fr-FR")
    assert (updated["email"], updated["email_verified"], updated["locale"]) == ("a@example.com", True, "fr-FR")
    renamed, _ = ok("user", "update", user["id"], "--username", "alice2")
    assert renamed["username"] == "alice2"
    disabled, note = ok("user", "disable", "alice2")
    assert disabled["active"] is False and "revoked" in note
    assert ok("user", "enable", "alice2")[0]["active"] is True
    assert ok("user", "grant-role", "alice2", "admin", "mi_admin")[0]["roles"] == ["admin", "mi_admin"]
    assert ok("user", "revoke-role", "alice2", "admin")[0]["roles"] == ["mi_admin"]
    directory.users[user["id"]] = replace(directory.users[user["id"]], locked_until=4_000_000_000)
    assert ok("user", "unlock", "alice2")[0]["locked_until"] == 0
    code, _, err = run(capsys, monkeypatch, "user", "update", "alice2")
    assert code == 2 and "nothing to update" in err


def test_set_password_from_stdin(directory, capsys, monkeypatch):
    user = created(capsys, monkeypatch)
    code, out, err = run(capsys, monkeypatch, "user", "set-password", "alice", "--password-stdin", "--json",
                         stdin=Stdin(b"another password\n"))
    assert code == 0, err
    assert directory.passwords[user["id"]] == "another password"
    assert json.loads(out)["password_changed_at"] == 1_800_000_100
    assert "another password" not in out + err and "revoked" in err


def test_set_password_of_an_unknown_user_asks_nothing(directory, capsys, monkeypatch):
    monkeypatch.setattr("getpass.getpass", lambda prompt: pytest.fail("asked for a password"))
    code, out, err = run(capsys, monkeypatch, "user", "set-password", "nobody", stdin=Stdin(tty=True))
    assert code == 3 and "no user with id or username 'nobody'" in err and out == ""


@pytest.mark.parametrize("argv", [
    ["show"], ["disable"], ["enable"], ["unlock"], ["delete", "--yes"], ["update", "--email", "x@example.com"],
    ["grant-role", "admin"], ["revoke-role", "admin"],
])
def test_unknown_user_exits_3(directory, capsys, monkeypatch, argv):
    code, out, err = run(capsys, monkeypatch, "user", argv[0], "nobody", *argv[1:])
    assert code == 3, err
    assert "no user with id or username 'nobody'" in err and out == ""
    code, _, err = run(capsys, monkeypatch, "user", argv[0], str(uuid.uuid4()), *argv[1:])
    assert code == 3


def test_user_deleted_after_it_was_resolved_is_unknown(directory, capsys, monkeypatch):
    user = created(capsys, monkeypatch)

    async def vanish(user_id, update):
        directory.users.clear()
        raise NotFound(f"no user {user_id}")

    monkeypatch.setattr(directory, "update_user", vanish)
    code, _, err = run(capsys, monkeypatch, "user", "disable", user["id"])
    assert code == 3 and "no user with id or username" in err


def test_duplicate_username_exits_4(directory, capsys, monkeypatch):
    created(capsys, monkeypatch, "alice")
    code, out, err = run(capsys, monkeypatch, "user", "create", "ALICE", "--no-password")
    assert code == 4 and "exists" in err and out == ""
    assert len(directory.users) == 1


def test_delete_asks_first(directory, capsys, monkeypatch):
    user = created(capsys, monkeypatch)
    # No terminal and no --yes: refused, nothing deleted.
    code, _, err = run(capsys, monkeypatch, "user", "delete", "alice")
    assert code == 2 and "--yes" in err and user["id"] in directory.users
    # On a terminal, anything but yes keeps the user.
    code, _, err = run(capsys, monkeypatch, "user", "delete", "alice", stdin=Stdin(b"n\n", tty=True))
    assert code == 2 and "nothing deleted" in err and "Delete user alice" in err and user["id"] in directory.users
    code, out, _ = run(capsys, monkeypatch, "user", "delete", "alice", stdin=Stdin(b"y\n", tty=True))
    assert code == 0 and "deleted" in out and user["id"] not in directory.users


def test_delete_with_yes_answers_json(directory, capsys, monkeypatch):
    user = created(capsys, monkeypatch)
    code, out, _ = run(capsys, monkeypatch, "user", "delete", "alice", "--yes", "--json")
    assert code == 0
    assert json.loads(out) == {"id": user["id"], "username": "alice", "deleted": True}
    assert directory.users == {}

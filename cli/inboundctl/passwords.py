"""How inboundctl reads a user's new password: from an interactive prompt (asked
twice, must match) or from standard input (`--password-stdin`), never from the
command line or the environment, where other local users (ps, /proc/PID/cmdline,
/proc/PID/environ) and the shell's history would see it.
"""
from __future__ import annotations

import getpass
import sys
from typing import BinaryIO, Callable

# Enough for any password the registry accepts (INBOUND_PASSWORD_MAX_LENGTH, 1024
# characters by default, up to 4 bytes each); what is longer is refused unread.
MAX_STDIN_BYTES = 16 * 1024


class PasswordInputError(Exception):
    """The password could not be read (the message says why; it never holds the password)."""


def from_stdin(stream: BinaryIO | None = None, *, interactive: bool | None = None) -> str:
    """One line of standard input, its trailing newline (\\n or \\r\\n) stripped: what
    `printf '%s\\n' "$PW" | inboundctl ... --password-stdin` or a password manager sends.

    From a pipe or file, the whole input is read and must be that one line (a second
    line would be a mistake: which one is the password?). From a terminal, the first line."""
    stream = stream if stream is not None else sys.stdin.buffer
    if interactive is None:
        interactive = _isatty(stream)
    data = stream.readline(MAX_STDIN_BYTES + 1) if interactive else stream.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise PasswordInputError(f"the password on standard input is longer than {MAX_STDIN_BYTES} bytes")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if b"\n" in data:
        raise PasswordInputError("standard input holds more than one line: give the password alone, on one line")
    try:
        password = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PasswordInputError("the password on standard input is not UTF-8") from None
    if not password:
        raise PasswordInputError("no password on standard input (an empty line, or nothing)")
    return password


def from_prompt(ask: Callable[[str], str] | None = None, *, terminal: bool | None = None) -> str:
    """Asked twice on the terminal without echo (getpass); the two must match and not be empty."""
    ask = ask or getpass.getpass
    if terminal is None:
        terminal = sys.stdin.isatty()
    if not terminal:
        # getpass would fall back to reading stdin with echo: say what to do instead.
        raise PasswordInputError("no terminal to ask for the password on: pipe it in with --password-stdin, "
                                 "or create the user with --no-password")
    first = ask("New password: ")
    if not first:
        raise PasswordInputError("the password is empty")
    if ask("Repeat the password: ") != first:
        raise PasswordInputError("the two passwords do not match; nothing was changed")
    return first


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

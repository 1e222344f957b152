"""inboundctl's exit codes and its one expected-failure exception (in a module of their
own: `python -m inboundctl` runs __main__.py as `__main__`, and the command modules
must raise the same class that main() catches)."""
from __future__ import annotations

EXIT_OK, EXIT_UNAVAILABLE, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_EXISTS = 0, 1, 2, 3, 4


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code

"""Configuration from environment variables, failing fast with a clear message.

Every service reads its settings once at start through these helpers; a bad
value stops the process before it serves anything (exit code 2).
"""
from __future__ import annotations

import base64
import math
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


_ADDR = re.compile(r"^(?:dns:///)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")


class Env:
    """Typed access to a mapping of environment variables (os.environ by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self._env = os.environ if environ is None else environ

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def environ(self) -> Mapping[str, str]:
        return self._env

    def name(self, name: str) -> str:
        """The variable that carries setting `name` (here: the name itself)."""
        return name

    def str(self, name: str, default: str | None = None) -> str:
        name = self.name(name)
        value = self._raw(name)
        if value is None:
            if default is None:
                raise ConfigError(f"{name} is required but not set")
            return default
        return value

    def int(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        name = self.name(name)
        value = self._raw(name)
        if value is None:
            result = default
        else:
            try:
                result = int(value, 10)
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if minimum is not None and result < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {result}")
        if maximum is not None and result > maximum:
            raise ConfigError(f"{name} must be <= {maximum}, got {result}")
        return result

    def float(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        name = self.name(name)
        value = self._raw(name)
        if value is None:
            return default
        try:
            result = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(result) or result < minimum:
            raise ConfigError(f"{name} must be >= {minimum} and finite, got {value!r}")
        return result

    def bool(self, name: str, default: bool) -> bool:
        name = self.name(name)
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str(name, default)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def addr(self, name: str, default: str | None = None) -> str:
        """A gRPC target host:port (optionally dns:///host:port for client-side balancing)."""
        value = self.str(name, default)
        match = _ADDR.match(value)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise ConfigError(f"{name} must be host:port, got {value!r}")
        return value

    def url(self, name: str, default: str | None = None, *, schemes: tuple[str, ...] = ("http", "https")) -> str:
        value = self.str(name, default)
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ConfigError(f"{name} must be a {'/'.join(schemes)} URL, got {value!r}") from None
        if parts.scheme not in schemes or not parts.netloc:
            raise ConfigError(f"{name} must be a {'/'.join(schemes)} URL, got {value!r}")
        return value

    def key32(self, name: str) -> bytes:
        """A required 256-bit key, base64 (standard or URL-safe alphabet)."""
        value = self.str(name)
        try:
            padded = value + "=" * (-len(value) % 4)
            key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except ValueError:
            raise ConfigError(f"{name} must be base64") from None
        if len(key) != 32:
            raise ConfigError(f"{name} must decode to 32 bytes, got {len(key)}")
        return key

    def addr_map(self, name: str, default: str = "") -> dict[str, str]:
        """`key=host:port,key2=host:port` into a dict, each address checked."""
        name = self.name(name)
        value = self._raw(name) or default
        result: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            key, sep, addr = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"{name} must be name=host:port[,name=host:port], got {item!r}")
            if key.strip() in result:
                raise ConfigError(f"{name} names {key.strip()!r} twice")
            try:
                result[key.strip()] = Env({name: addr}).addr(name)
            except ConfigError:
                raise ConfigError(f"{name} must be name=host:port[,name=host:port], got {item!r}") from None
        return result


def scoped_name(scope: str, name: str) -> str:
    """`INBOUND_GRPC_PORT` for service `audit` -> `INBOUND_AUDIT_GRPC_PORT`;
    `DATABASE_URL` -> `INBOUND_AUDIT_DATABASE_URL`."""
    return f"INBOUND_{scope.upper()}_{name.removeprefix('INBOUND_')}"


class ScopedEnv(Env):
    """The settings of one service among several in one process: each name is read
    as `scoped_name(scope, name)` first, then as itself unless it is one of
    `unscoped_fallback_except` (a setting the services must not share)."""

    def __init__(self, env: Env, scope: str, *, unscoped_fallback_except: set[str] | frozenset[str] = frozenset()):
        super().__init__(env.environ())
        self.scope = scope
        self.no_fallback = frozenset(unscoped_fallback_except)

    def name(self, name: str) -> str:
        scoped = scoped_name(self.scope, name)
        if name in self.no_fallback or self._raw(scoped) is not None:
            return scoped
        return name

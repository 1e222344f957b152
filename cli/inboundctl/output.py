"""Rendering for inboundctl: JSON documents, "key: value" listings and tables.

Only the fields named here are ever shown: a client's secret_hash (and any
field added to the record later) stays internal unless it is listed below.
User records never carry a password hash (it stays in the registry).
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from typing import Any, TextIO

from services.client_registry.api import ClientRecord, UserRecord
from services.token_issuer.api import KeyInfo

CLIENT_FIELDS = ("client_id", "name", "public", "active", "grant_types", "scopes", "redirect_uris", "token_format",
                 "access_token_lifetime", "refresh_token_lifetime", "pkce_required", "logo_url", "comments",
                 "created_at", "updated_at", "secret_rotated_at", "allow_public_password_grant",
                 "refresh_token_absolute_lifetime", "post_logout_redirect_uris", "token_endpoint_auth_method",
                 "jwks", "jwks_uri", "token_endpoint_auth_signing_alg", "token_exchange")
USER_FIELDS = ("id", "username", "email", "display_name", "given_name", "family_name", "email_verified", "locale",
               "zoneinfo", "active", "roles", "created_at", "updated_at", "password_changed_at", "locked_until")
KEY_FIELDS = ("kid", "alg", "created_at", "activates_at", "signing")

SECRET_NOTE = "Store this client secret now: it is kept only as a hash and will not be shown again."

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _CurrentStdout:
    """sys.stdout as it is when written to, not as it was at import (a default argument
    of sys.stdout would keep writing to a stream that was since replaced: tests' capture)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


STDOUT: TextIO = _CurrentStdout()  # type: ignore[assignment]


def _record_dict(record: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """The named fields of a record, tuples as JSON lists, nested records as objects."""
    out = {}
    for name in fields:
        value = getattr(record, name)
        if dataclasses.is_dataclass(value):
            value = _record_dict(value, tuple(f.name for f in dataclasses.fields(value)))
        elif isinstance(value, tuple):
            value = [_record_dict(v, tuple(f.name for f in dataclasses.fields(v))) if dataclasses.is_dataclass(v)
                     else v for v in value]
        out[name] = value
    return out


def record_dict(record: Any) -> dict[str, Any]:
    """Every field of a record (one whose every field may be shown: integrations, providers)."""
    return _record_dict(record, tuple(f.name for f in dataclasses.fields(record)))


def client_dict(c: ClientRecord) -> dict[str, Any]:
    return _record_dict(c, CLIENT_FIELDS)


def user_dict(u: UserRecord) -> dict[str, Any]:
    return _record_dict(u, USER_FIELDS)


def key_dict(k: KeyInfo) -> dict[str, Any]:
    return {name: getattr(k, name) for name in KEY_FIELDS}


def emit_json(document: Any, out: TextIO = STDOUT) -> None:
    out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


# --- human output -------------------------------------------------------------------------------

def clean(value: Any) -> str:
    """Text safe for a terminal: control characters (escape sequences) shown escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def when(ts: int, *, never: str = "-", relative: bool = False) -> str:
    if not ts:
        return never
    text = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))
    if relative:
        delta = int(ts - time.time())
        if delta > 0:
            text += f" (in {_duration(delta)})"
    return text


def _duration(seconds: int) -> str:
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def listing(rows: list[tuple[str, Any]], out: TextIO = STDOUT) -> None:
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        out.write(f"{label + ':':<{width}} {clean(value)}".rstrip() + "\n")


def table(headers: tuple[str, ...], rows: list[tuple[Any, ...]], out: TextIO = STDOUT) -> None:
    cells = [tuple(clean(v) for v in row) for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def client_rows(c: ClientRecord) -> list[tuple[str, Any]]:
    return [
        ("client_id", c.client_id),
        ("name", c.name),
        ("type", "public" if c.public else "confidential"),
        ("active", yes_no(c.active)),
        ("grant_types", " ".join(c.grant_types) or "-"),
        ("scopes", " ".join(c.scopes) or "-"),
        ("redirect_uris", " ".join(c.redirect_uris) or "-"),
        ("post_logout_redirect_uris", " ".join(c.post_logout_redirect_uris) or "-"),
        ("token_format", c.token_format),
        ("access_token_lifetime", f"{c.access_token_lifetime} s"),
        ("refresh_token_lifetime", f"{c.refresh_token_lifetime} s"),
        ("refresh_token_absolute_lifetime",
         f"{c.refresh_token_absolute_lifetime} s" if c.refresh_token_absolute_lifetime else "none"),
        ("pkce_required", yes_no(c.pkce_required)),
        ("token_endpoint_auth_method", c.token_endpoint_auth_method),
        ("token_endpoint_auth_signing_alg", c.token_endpoint_auth_signing_alg or "-"),
        ("jwks_uri", c.jwks_uri or "-"),
        ("jwks", f"{len(_jwks_keys(c.jwks))} key(s) inline" if c.jwks else "-"),
        ("token_exchange", _exchange_text(c.token_exchange)),
        ("allow_public_password_grant", yes_no(c.allow_public_password_grant) if c.public else "-"),
        ("logo_url", c.logo_url or "-"),
        ("comments", c.comments or "-"),
        ("created", when(c.created_at)),
        ("updated", when(c.updated_at)),
        ("secret_rotated", "-" if c.public else when(c.secret_rotated_at, never="never")),
    ]


def _jwks_keys(text: str) -> list:
    try:
        return list(json.loads(text).get("keys", []))
    except (ValueError, AttributeError):
        return []


def _exchange_text(policy) -> str:
    """A token-exchange policy in one line ("-": the client may not exchange)."""
    if policy is None:
        return "-"
    parts = [f"types={','.join(t.rsplit(':', 1)[-1] for t in policy.subject_token_types) or 'none'}",
             f"providers={','.join(policy.providers) or 'none'}", f"own_tokens={yes_no(policy.own_tokens)}",
             f"actor_tokens={yes_no(policy.actor_tokens)}"]
    if policy.scopes:
        parts.append(f"scopes={' '.join(policy.scopes)}")
    if policy.audiences:
        parts.append(f"audiences={','.join(policy.audiences)}")
    return " ".join(parts)


def show_client(c: ClientRecord, out: TextIO = STDOUT) -> None:
    listing(client_rows(c), out)


def show_client_with_secret(c: ClientRecord, secret: str, out: TextIO = STDOUT) -> None:
    rows = client_rows(c)
    if secret:
        rows.append(("client_secret", secret))
    listing(rows, out)
    if secret:
        out.write("\n" + SECRET_NOTE + "\n")


def client_table(clients: list[ClientRecord], out: TextIO = STDOUT) -> None:
    if not clients:
        out.write("no clients registered\n")
        return
    table(("CLIENT_ID", "NAME", "TYPE", "ACTIVE", "FORMAT", "GRANT_TYPES", "SCOPES", "CREATED"), [
        (c.client_id, c.name, "public" if c.public else "confidential", yes_no(c.active), c.token_format,
         ",".join(c.grant_types) or "-", " ".join(c.scopes) or "-", when(c.created_at))
        for c in clients], out)


def key_table(keys: list[KeyInfo], out: TextIO = STDOUT) -> None:
    if not keys:
        out.write("no signing keys\n")
        return
    table(("KID", "ALG", "CREATED", "ACTIVATES", "SIGNING"), [
        (k.kid, k.alg, when(k.created_at), when(k.activates_at, relative=True), yes_no(k.signing))
        for k in keys], out)


def show_key(k: KeyInfo, out: TextIO = STDOUT) -> None:
    listing([("kid", k.kid), ("alg", k.alg), ("created", when(k.created_at)),
             ("activates", when(k.activates_at, relative=True)), ("signing", yes_no(k.signing))], out)


# --- users ----------------------------------------------------------------------------------------

def _locked(u: UserRecord, now: float | None = None) -> str:
    now = time.time() if now is None else now
    return f"until {when(u.locked_until)}" if u.locked_until > now else "no"


def user_rows(u: UserRecord) -> list[tuple[str, Any]]:
    return [
        ("id", u.id),
        ("username", u.username),
        ("email", (u.email + (" (verified)" if u.email_verified else "")) if u.email else "-"),
        ("display_name", u.display_name or "-"),
        ("given_name", u.given_name or "-"),
        ("family_name", u.family_name or "-"),
        ("locale", u.locale or "-"),
        ("zoneinfo", u.zoneinfo or "-"),
        ("active", yes_no(u.active)),
        ("roles", " ".join(u.roles) or "-"),
        ("password", f"set {when(u.password_changed_at)}" if u.password_changed_at else "none"),
        ("locked", _locked(u)),
        ("created", when(u.created_at)),
        ("updated", when(u.updated_at)),
    ]


def show_user(u: UserRecord, out: TextIO = STDOUT) -> None:
    listing(user_rows(u), out)


def user_table(users: list[UserRecord], out: TextIO = STDOUT) -> None:
    if not users:
        out.write("no users\n")
        return
    table(("ID", "USERNAME", "EMAIL", "ACTIVE", "ROLES", "PASSWORD", "LOCKED", "CREATED"), [
        (u.id, u.username, u.email or "-", yes_no(u.active), ",".join(u.roles) or "-",
         yes_no(bool(u.password_changed_at)), _locked(u), when(u.created_at))
        for u in users], out)

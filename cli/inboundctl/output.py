"""Rendering for inboundctl: JSON documents, "key: value" listings and tables.

Only the fields named here are ever shown: a client's secret_hash (and any
field added to the record later) stays internal unless it is listed below.
"""
from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, TextIO

from services.client_registry.api import ClientRecord
from services.token_issuer.api import KeyInfo

CLIENT_FIELDS = ("client_id", "name", "public", "active", "grant_types", "scopes", "redirect_uris", "token_format",
                 "access_token_lifetime", "refresh_token_lifetime", "pkce_required", "logo_url", "comments",
                 "created_at", "updated_at", "secret_rotated_at")
KEY_FIELDS = ("kid", "alg", "created_at", "activates_at", "signing")

SECRET_NOTE = "Store this client secret now: it is kept only as a hash and will not be shown again."

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def client_dict(c: ClientRecord) -> dict[str, Any]:
    out = {}
    for name in CLIENT_FIELDS:
        value = getattr(c, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def key_dict(k: KeyInfo) -> dict[str, Any]:
    return {name: getattr(k, name) for name in KEY_FIELDS}


def emit_json(document: Any, out: TextIO = sys.stdout) -> None:
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


def listing(rows: list[tuple[str, Any]], out: TextIO = sys.stdout) -> None:
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        out.write(f"{label + ':':<{width}} {clean(value)}".rstrip() + "\n")


def table(headers: tuple[str, ...], rows: list[tuple[Any, ...]], out: TextIO = sys.stdout) -> None:
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
        ("token_format", c.token_format),
        ("access_token_lifetime", f"{c.access_token_lifetime} s"),
        ("refresh_token_lifetime", f"{c.refresh_token_lifetime} s"),
        ("pkce_required", yes_no(c.pkce_required)),
        ("logo_url", c.logo_url or "-"),
        ("comments", c.comments or "-"),
        ("created", when(c.created_at)),
        ("updated", when(c.updated_at)),
        ("secret_rotated", "-" if c.public else when(c.secret_rotated_at, never="never")),
    ]


def show_client(c: ClientRecord, out: TextIO = sys.stdout) -> None:
    listing(client_rows(c), out)


def show_client_with_secret(c: ClientRecord, secret: str, out: TextIO = sys.stdout) -> None:
    rows = client_rows(c)
    if secret:
        rows.append(("client_secret", secret))
    listing(rows, out)
    if secret:
        out.write("\n" + SECRET_NOTE + "\n")


def client_table(clients: list[ClientRecord], out: TextIO = sys.stdout) -> None:
    if not clients:
        out.write("no clients registered\n")
        return
    table(("CLIENT_ID", "NAME", "TYPE", "ACTIVE", "FORMAT", "GRANT_TYPES", "SCOPES", "CREATED"), [
        (c.client_id, c.name, "public" if c.public else "confidential", yes_no(c.active), c.token_format,
         ",".join(c.grant_types) or "-", " ".join(c.scopes) or "-", when(c.created_at))
        for c in clients], out)


def key_table(keys: list[KeyInfo], out: TextIO = sys.stdout) -> None:
    if not keys:
        out.write("no signing keys\n")
        return
    table(("KID", "ALG", "CREATED", "ACTIVATES", "SIGNING"), [
        (k.kid, k.alg, when(k.created_at), when(k.activates_at, relative=True), yes_no(k.signing))
        for k in keys], out)


def show_key(k: KeyInfo, out: TextIO = sys.stdout) -> None:
    listing([("kid", k.kid), ("alg", k.alg), ("created", when(k.created_at)),
             ("activates", when(k.activates_at, relative=True)), ("signing", yes_no(k.signing))], out)

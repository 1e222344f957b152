"""inboundctl audit: read the audit log (the audit service, over gRPC).

    inboundctl audit tail [-n N] [--follow]
    inboundctl audit search [--client ID] [--since 1h|30m|2026-11-28T10:00:00Z] [--until ...]
                            [--type token_issued] [--actor operator:alice] [--limit N]

Both take --json (tail --follow then writes one JSON object a line) and
--audit-addr HOST:PORT (env INBOUND_AUDIT_ADDR, default 127.0.0.1:50070).
Records are shown oldest first. Exit codes as the rest of inboundctl: 0 done,
1 the audit service could not be reached or failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

DEFAULT_AUDIT_ADDR = "127.0.0.1:50070"
EXIT_OK, EXIT_UNAVAILABLE, EXIT_INVALID = 0, 1, 2
MAX_LIMIT = 1000  # services.audit.api.MAX_LIMIT
FOLLOW_INTERVAL = 1.0
# `tail --follow` re-reads this many sequence numbers behind its cursor: with several audit
# replicas, a batch can commit after a later-numbered one, and must not be skipped.
FOLLOW_OVERLAP = 256

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class UsageError(Exception):
    pass


def parse_time(text: str, *, now: float | None = None) -> int:
    """`1h`, `30m`, `45s`, `2d`, `1w` ago, or an ISO 8601 time (UTC unless it says otherwise), as Unix ms."""
    value = text.strip()
    match = _DURATION.match(value.lower())
    if match:
        now = time.time() if now is None else now
        return int((now - int(match.group(1)) * _UNITS[match.group(2)]) * 1000)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise UsageError(f"not a time: {text!r} (use e.g. 30m, 1h, 2d, or 2026-11-28T10:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    ms = int(moment.timestamp() * 1000)
    if ms < 0:
        raise UsageError(f"time before 1970: {text!r}")
    return ms


def _time_arg(text: str) -> int:
    try:
        return parse_time(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_LIMIT}")
    return value


def _event_types() -> tuple[str, ...]:
    from services.audit.api import EVENT_TYPES

    return EVENT_TYPES


def add_subparsers(subparsers) -> argparse.ArgumentParser:
    """Add `audit tail` and `audit search` to inboundctl's area subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable JSON output")
    common.add_argument("--audit-addr", default=argparse.SUPPRESS, metavar="HOST:PORT",
                        help=f"audit gRPC address (env INBOUND_AUDIT_ADDR, default {DEFAULT_AUDIT_ADDR})")

    audit = subparsers.add_parser("audit", help="the audit log (audit service)",
                                  description="Read the append-only audit log.")
    commands = audit.add_subparsers(dest="command", required=True)
    tail = commands.add_parser("tail", parents=[common], help="the latest records",
                               description="The latest records, oldest first; --follow keeps printing new ones.")
    tail.add_argument("-n", "--lines", type=_limit_arg, default=20, metavar="N", help="how many (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing records as they are stored")
    tail.set_defaults(handler=_handler, service="audit", audit_command=tail_command)

    search = commands.add_parser(
        "search", parents=[common], help="records by client, time and type",
        description="The newest records matching every filter given, shown oldest first.")
    search.add_argument("--client", metavar="ID", default="", help="client id")
    search.add_argument("--since", type=_time_arg, default=0, metavar="WHEN",
                        help="occurred at or after: 30m, 1h, 2d (ago) or 2026-11-28T10:00:00Z")
    search.add_argument("--until", type=_time_arg, default=0, metavar="WHEN", help="occurred before (same forms)")
    search.add_argument("--type", default="", metavar="TYPE",
                        help="event type, e.g. token_issued, token_denied, token_revoked, registry_changed, "
                             "keys_rotated, revoked_token_introspected")
    search.add_argument("--actor", default="", metavar="KIND[:ID]",
                        help="who caused it: service, operator, client or user, optionally :ID "
                             "(e.g. operator:alice, client:abc123)")
    search.add_argument("--limit", type=_limit_arg, default=100, metavar="N", help="at most N records (default 100)")
    search.set_defaults(handler=_handler, service="audit", audit_command=search_command)
    return audit


# --- output -----------------------------------------------------------------------------------------

def _clean(value: Any) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _iso(ms: int) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def record_dict(r) -> dict[str, Any]:
    try:
        detail = json.loads(r.detail_json) if r.detail_json else {}
    except ValueError:
        detail = r.detail_json
    return {"event_id": r.event_id, "occurred_at": _iso(r.occurred_at_unix_ms),
            "occurred_at_unix_ms": r.occurred_at_unix_ms, "type": r.type, "source": r.source,
            "request_id": r.request_id, "client_id": r.client_id, "detail": detail,
            "stored_at": _iso(r.stored_at_unix_ms), "seq": r.seq,
            "actor": {"kind": r.actor_kind, "id": r.actor_id} if r.actor_kind else None}


def _value(v: Any) -> str:
    """A detail value for key=value output: quoted when it would be ambiguous."""
    if isinstance(v, str) and v and not re.search(r'[\s="]', v):
        return v
    return json.dumps(v, ensure_ascii=False)


def record_line(r) -> str:
    try:
        detail = json.loads(r.detail_json) if r.detail_json else {}
    except ValueError:
        detail = {"detail": r.detail_json}
    if not isinstance(detail, dict):
        detail = {"detail": detail}
    parts = [_iso(r.occurred_at_unix_ms), f"{r.type:<26}", f"client={r.client_id or '-'}"]
    parts += [f"{k}={_value(v)}" for k, v in detail.items()
              if k not in ("client_id", "actor") and v not in ("", None, 0, False, [], {})]
    parts.append(f"actor={r.actor_kind}:{r.actor_id}" if r.actor_kind else "actor=-")
    parts.append(f"source={r.source or '-'}")
    if r.request_id:
        parts.append(f"request_id={r.request_id}")
    parts.append(f"event_id={r.event_id}")
    return _clean("  ".join(parts[:3]) + "  " + " ".join(parts[3:]))


def _emit(records, *, as_json: bool, lines: bool = False) -> None:
    if as_json and not lines:
        sys.stdout.write(json.dumps([record_dict(r) for r in records], indent=2, ensure_ascii=False) + "\n")
        return
    for r in records:
        if as_json:
            sys.stdout.write(json.dumps(record_dict(r), ensure_ascii=False, separators=(",", ":")) + "\n")
        else:
            sys.stdout.write(record_line(r) + "\n")
    sys.stdout.flush()


# --- commands ---------------------------------------------------------------------------------------

async def tail_command(audit, args: argparse.Namespace) -> None:
    page = await audit.tail(args.lines)
    as_json = getattr(args, "json", False)
    if not args.follow:
        _emit(page.records, as_json=as_json)
        if not page.records and not as_json:
            print("(the audit log is empty)", file=sys.stderr)
        return
    _emit(page.records, as_json=as_json, lines=True)
    cursor = max((r.seq for r in page.records), default=0)
    seen = {r.seq for r in page.records}
    if cursor:  # what is already stored just behind the cursor counts as seen (not shown)
        behind = await audit.tail(MAX_LIMIT, after_seq=max(0, cursor - FOLLOW_OVERLAP))
        seen |= {r.seq for r in behind.records if r.seq <= cursor}
    while True:
        page = await audit.tail(MAX_LIMIT, after_seq=max(0, cursor - FOLLOW_OVERLAP))
        fresh = [r for r in page.records if r.seq not in seen]
        _emit(fresh, as_json=as_json, lines=True)
        for r in fresh:
            seen.add(r.seq)
            cursor = max(cursor, r.seq)
        seen = {s for s in seen if s > cursor - FOLLOW_OVERLAP}
        if not page.truncated:
            await asyncio.sleep(FOLLOW_INTERVAL)


async def search_command(audit, args: argparse.Namespace) -> None:
    from services.audit.api import SearchQuery

    if args.since and args.until and args.since >= args.until:
        raise UsageError("--since must be before --until")
    if args.type and args.type not in _event_types():
        raise UsageError(f"unknown event type {args.type!r}; known: {', '.join(_event_types())}")
    page = await audit.search(SearchQuery(client_id=args.client, since_unix_ms=args.since,
                                          until_unix_ms=args.until, type=args.type, limit=args.limit,
                                          actor=args.actor))
    _emit(page.records, as_json=getattr(args, "json", False))
    if page.truncated:
        print(f"(showing the newest {len(page.records)} matches; narrow with --since/--until or raise --limit)",
              file=sys.stderr)
    elif not page.records and not getattr(args, "json", False):
        print("(no matching records)", file=sys.stderr)


def _address(args: argparse.Namespace) -> str:
    return getattr(args, "audit_addr", None) or os.environ.get("INBOUND_AUDIT_ADDR") or DEFAULT_AUDIT_ADDR


async def run(args: argparse.Namespace) -> int:
    """Run a parsed `inboundctl audit ...` command; returns the exit code (errors go to stderr)."""
    import grpc

    from inboundctl import tls_config
    from inboundlib import grpcx
    from inboundlib.config import ConfigError
    from services.audit.api import InvalidArgument
    from services.audit.client import AuditClient

    addr = _address(args)
    try:
        channel = grpcx.channel(addr, tls_config(), server_name="audit")
    except ConfigError as exc:
        print(f"inboundctl: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        await args.audit_command(AuditClient(channel), args)
        return EXIT_OK
    except (UsageError, InvalidArgument) as exc:
        print(f"inboundctl: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            message = f"cannot reach audit at {addr} ({exc.details()})"
        elif exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = f"audit at {addr} did not answer in time"
        else:
            message = f"audit at {addr} failed: {exc.code().name}: {exc.details()}"
        print(f"inboundctl: error: {message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        await channel.close()


def main(args: argparse.Namespace) -> int:
    """Synchronous entry for inboundctl's main(): runs `run`, handling Ctrl-C and a closed pipe."""
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return EXIT_OK if getattr(args, "follow", False) else 130
    except BrokenPipeError:  # `inboundctl audit tail -f | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


async def _handler(session, args: argparse.Namespace) -> None:
    """For inboundctl's generic dispatch (handler(session, args)): a failure exits with its code."""
    code = await run(args)
    if code:
        raise SystemExit(code)

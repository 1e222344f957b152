"""JSON logs, one object a line, with the request id of the work in progress.

The request id is set by the edge for each HTTP request and carried in every
gRPC hop (per item in batched calls, as metadata otherwise), so one grep
follows a request through all services.
"""
from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

from inboundlib.config import ConfigError, Env

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in entry and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


LEVELS = ("debug", "info", "warning", "error", "critical")


def level_from_env(env: Env) -> str:
    """INBOUND_LOG_LEVEL, any case; anything else is a ConfigError (exit 2), not a traceback."""
    level = env.str("INBOUND_LOG_LEVEL", "info").lower()
    if level not in LEVELS:
        raise ConfigError(f"INBOUND_LOG_LEVEL must be one of {', '.join(LEVELS)}, got {level!r}")
    return level


def configure(service: str, level: str | None = None) -> None:
    """Route all logging to stdout as JSON; called once by each process entry point."""
    level = level or level_from_env(Env())
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log request lines or payloads at INFO stay quiet.
    for noisy in ("uvicorn.access", "asyncio", "nats"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

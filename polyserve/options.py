"""Shared pieces of the component commands: option errors as the user typed the flags."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any, NoReturn

import typer
from pydantic import ValidationError


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit status 2 (a usage error), never a stack trace."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def invalid_options(exc: ValidationError) -> NoReturn:
    """Fail with one line per invalid option, named as its flag (``max_body_bytes`` -> ``--max-body-bytes``)."""
    lines = []
    for e in exc.errors():
        name = "--" + "-".join(str(p) for p in e["loc"]).replace("_", "-")
        lines.append(f"{name}: {e['msg']}" if e["loc"] else str(e["msg"]))
    fail("invalid options:\n  " + "\n  ".join(lines))


class FieldsFormatter(logging.Formatter):
    """Log records with structured ``extra={"fields": {...}}``: appended as ``key=value`` in text,
    or merged into one JSON object per line with ``as_json``."""

    def __init__(self, as_json: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        if self.as_json:
            out: dict[str, Any] = {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
                **fields,
            }
            if record.exc_info:
                out["exc"] = self.formatException(record.exc_info)
            return json.dumps(out, default=str)
        text = super().format(record)
        return text + "".join(f" {k}={v}" for k, v in fields.items())


def setup_logging(log_level: str, as_json: bool = False) -> None:
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level: unknown level {log_level!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(FieldsFormatter(as_json))
    logging.basicConfig(level=level, handlers=[handler])


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets (call it inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop

"""Shared pieces of the component commands: option errors as the user typed the flags."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

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


def setup_logging(log_level: str) -> None:
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level: unknown level {log_level!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

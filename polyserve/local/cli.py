"""``polyserve up`` and ``polyserve demo``."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from polyserve.local.config import LocalConfig, load_local_config
from polyserve.local.up import READY_PREFIX, run_up
from polyserve.options import fail, setup_logging, stop_on_signals
from polyserve.router.settings import ConfigError

ENGINE_HELP = (
    "stock: the engines run stock vLLM's flags, derived per tier; polyserve: plus PolyServe's "
    "dynamic chunking (an engine extension). Default: the fleet file's (stock)."
)


def up(
    config: Annotated[
        Path | None, typer.Option(help="Local fleet file (YAML/JSON; default: three tiers).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Router port (overrides the file; 0: a free port).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "warning",
    engine: Annotated[str | None, typer.Option(help=ENGINE_HELP)] = None,
) -> None:
    """Run the whole system on this machine: mock engines per tier behind the router. Ctrl-C stops it."""
    setup_logging(log_level)
    try:
        cfg = load_local_config(config)
        overrides = {"port": port, "engine": engine}
        cfg = LocalConfig.model_validate(
            {**cfg.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except ConfigError as e:
        fail(str(e))
    except ValidationError as e:
        fail(f"polyserve up: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}")

    async def main() -> None:
        stop = stop_on_signals()
        await run_up(cfg, stop, announce=lambda line: print(line, flush=True))

    try:
        asyncio.run(main())  # the router needs no precise timers (the engines have their own)
    except (OSError, ValueError) as e:
        fail(str(e))


def demo(
    duration: Annotated[float, typer.Option(help="Seconds of arrivals.")] = 120.0,
    requests: Annotated[int, typer.Option(help="Requests to send.")] = 1800,
    out: Annotated[Path, typer.Option(help="Report directory.")] = Path("out/demo"),
    engine: Annotated[str, typer.Option(help=ENGINE_HELP)] = "stock",
) -> None:
    """Start the local fleet, replay the Azure conversation trace against it, report, stop."""
    from polyserve.loadgen.cli import load

    cpu0 = time.process_time()
    wall0 = time.monotonic()
    cmd = [sys.executable, "-m", "polyserve", "up", "--port", "0", "--engine", engine]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        url = _wait_ready(proc)
        threading.Thread(target=_echo, args=(proc,), daemon=True).start()  # never fill the pipe
        load(url=url, requests=requests, duration=duration, max_output=256, grace=60.0, out=out)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu0 + children.ru_utime + children.ru_stime
    wall = time.monotonic() - wall0
    print(
        f"demo: {wall:.0f} s wall, {cpu:.0f} CPU-s in all ({cpu / wall:.0%} of one core on average)"
    )


def _echo(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line.rstrip(), flush=True)


def _wait_ready(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            fail(f"polyserve up exited ({proc.wait()}) before it was ready")
        print(line.rstrip(), flush=True)
        if line.startswith(READY_PREFIX):
            return line[len(READY_PREFIX) :].split()[0]
    fail(f"polyserve up was not ready in {timeout_s:.0f} s")

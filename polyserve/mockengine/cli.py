"""``polyserve mock-engine``: serve vLLM-compatible mock engines on the wall clock."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from pydantic import ValidationError

from polyserve import precise_loop
from polyserve.mockengine.settings import MockEngineSettings
from polyserve.options import fail, invalid_options, setup_logging, stop_on_signals
from polyserve.profile import DEFAULT_PROFILE

_FAULTS = "Fault injection (tests)"


def mock_engine(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the first engine (0: free ports).")] = 8000,
    replicas: Annotated[int, typer.Option(help="Engines in this process, on port..port+N-1.")] = 1,
    profile: Annotated[
        str, typer.Option(help="Shipped profile name or profile file.")
    ] = DEFAULT_PROFILE,
    served_model_name: Annotated[
        str | None, typer.Option(help="Model name in the API (default: the profile's model).")
    ] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context length.")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Running-request cap.")] = None,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option(help="Per-step token budget.")
    ] = None,
    long_prefill_token_threshold: Annotated[
        int | None, typer.Option(help="Cap on one request's prefill chunk (0: off).")
    ] = None,
    scheduling_policy: Annotated[str, typer.Option(help="fcfs or priority.")] = "fcfs",
    kv_cache_tokens: Annotated[
        int | None, typer.Option(help="KV-cache capacity in tokens (overrides the profile).")
    ] = None,
    chunk_budget_ms: Annotated[
        float,
        typer.Option(
            help="PolyServe's dynamic chunking: cut prefill chunks so a step with decodes stays within MS (0: off, as stock vLLM)."
        ),
    ] = 0.0,
    startup_delay: Annotated[
        float, typer.Option(help="Seconds of 503 before ready.", rich_help_panel=_FAULTS)
    ] = 0.0,
    crash_after_requests: Annotated[
        int | None,
        typer.Option(
            help="Serve N generation requests; the next kills the engine.", rich_help_panel=_FAULTS
        ),
    ] = None,
    crash_at: Annotated[
        float | None, typer.Option(help="Kill the engine after SECONDS.", rich_help_panel=_FAULTS)
    ] = None,
    slowdown: Annotated[
        float, typer.Option(help="Multiply every step time by FACTOR.", rich_help_panel=_FAULTS)
    ] = 1.0,
    refuse_connections: Annotated[
        bool, typer.Option(help="Never open the listening socket.", rich_help_panel=_FAULTS)
    ] = False,
    metrics_garbage: Annotated[
        bool,
        typer.Option(help="Answer /metrics with non-Prometheus bytes.", rich_help_panel=_FAULTS),
    ] = False,
    metrics_hang: Annotated[
        bool,
        typer.Option(help="Start the /metrics answer, never finish it.", rich_help_panel=_FAULTS),
    ] = False,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """A vLLM-compatible CPU mock engine: vLLM's API and metrics, timed by the engine model."""
    try:
        settings = MockEngineSettings(
            host=host,
            port=port,
            replicas=replicas,
            profile=profile,
            served_model_name=served_model_name,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            long_prefill_token_threshold=long_prefill_token_threshold,
            scheduling_policy=scheduling_policy,
            kv_cache_tokens=kv_cache_tokens,
            chunk_budget_ms=chunk_budget_ms,
            startup_delay=startup_delay,
            crash_after_requests=crash_after_requests,
            crash_at=crash_at,
            slowdown=slowdown,
            refuse_connections=refuse_connections,
            metrics_garbage=metrics_garbage,
            metrics_hang=metrics_hang,
        )
    except ValidationError as exc:
        invalid_options(exc)
    setup_logging(log_level)
    from polyserve.profile import ProfileError

    try:
        code = precise_loop.run(_main(settings))
    except (ProfileError, ValueError, OSError) as exc:
        fail(str(exc))
    raise typer.Exit(code)


async def _main(settings: MockEngineSettings) -> int:
    from polyserve.mockengine.server import serve  # aiohttp only when serving

    stop = stop_on_signals()
    code = await serve(settings, stop=stop)
    if code:
        logging.getLogger("polyserve.mockengine").error("every engine has crashed")
    return code

"""``polyserve mock-engine``: serve vLLM-compatible mock engines on the wall clock."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from polyserve import precise_loop
from polyserve.mockengine.settings import MockEngineSettings
from polyserve.options import fail, invalid_options, setup_logging, stop_on_signals
from polyserve.profile import DEFAULT_PROFILE
from polyserve.vllm import ENV_PROFILE, SCHEDULER_CLS
from polyserve.vllm.budget import PluginConfigError, chunk_settings_from_env

_FAULTS = "Fault injection (tests)"


def mock_engine(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the first engine (0: free ports).")] = 8000,
    replicas: Annotated[int, typer.Option(help="Engines in this process, on port..port+N-1.")] = 1,
    data_parallel_size: Annotated[
        int, typer.Option(help="vLLM's DP: N engines behind each server, one engine label each.")
    ] = 1,
    enable_request_id_headers: Annotated[
        bool, typer.Option(help="Answer X-Request-Id headers (vLLM's flag; off as in vLLM).")
    ] = False,
    profile: Annotated[
        str,
        typer.Option(
            envvar=ENV_PROFILE, show_envvar=True, help="Shipped profile name or profile file."
        ),
    ] = DEFAULT_PROFILE,
    model: Annotated[
        str | None,
        typer.Option(
            help="vLLM's --model: names the served model when --served-model-name is absent (no weights: the timing is --profile's)."
        ),
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option(help="Model name in the API (default: --model, else the profile's model)."),
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
    enable_chunked_prefill: Annotated[
        bool,
        typer.Option(
            "--enable-chunked-prefill/--no-enable-chunked-prefill",
            help="vLLM's flag; vLLM V1 and the engine model always chunk (only on is accepted).",
        ),
    ] = True,
    chunk_budget_ms: Annotated[
        float,
        typer.Option(
            help="PolyServe's dynamic chunking: cut prefill chunks so a step with decodes stays within MS (0: off, as stock vLLM)."
        ),
    ] = 0.0,
    scheduler_cls: Annotated[
        str | None,
        typer.Option(
            help=f"vLLM's flag; only PolyServe's plugin ({SCHEDULER_CLS}, or its Sync twin) is modelled: dynamic chunking from POLYSERVE_CHUNK_BUDGET_MS and POLYSERVE_SLACK_SHARE, timed and cut with --profile."
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="VLLM_API_KEY",
            show_envvar=True,
            help="As vLLM: /v1/* requires Authorization: Bearer KEY (401 without).",
        ),
    ] = None,
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
    options = dict(locals())  # every parameter above: the settings' fields, and log_level
    try:
        settings = settings_from_options(options)
    except ValidationError as exc:
        invalid_options(exc)
    except PluginConfigError as exc:
        fail(str(exc))
    setup_logging(log_level)
    from polyserve.profile import ProfileError

    try:
        code = precise_loop.run(_main(settings))
    except (ProfileError, ValueError, OSError) as exc:
        fail(str(exc))
    raise typer.Exit(code)


def settings_from_options(
    options: dict[str, Any], env: Mapping[str, str] | None = None
) -> MockEngineSettings:
    """The settings from the command's options (all of them but ``log_level``); with
    ``--scheduler-cls``, the chunk budget and slack share come from the scheduler plugin's
    variables in ``env`` (default: this process's), as in vLLM with the plugin."""
    fields = {k: v for k, v in options.items() if k != "log_level"}
    if fields.get("scheduler_cls") is not None:
        if fields.get("chunk_budget_ms"):
            raise PluginConfigError(
                "--chunk-budget-ms and --scheduler-cls both set the chunk budget: give one "
                "(with --scheduler-cls, POLYSERVE_CHUNK_BUDGET_MS)"
            )
        budget, share = chunk_settings_from_env(os.environ if env is None else env)
        fields |= {"chunk_budget_ms": budget, "slack_share": share}
    return MockEngineSettings(**fields)


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> MockEngineSettings:
    """The settings ``polyserve mock-engine ARGV`` runs with, parsed as the command line is
    (raises click's UsageError for an unknown flag, ValidationError for a refused value,
    PluginConfigError for a bad scheduler-plugin variable in ``env``)."""
    app = typer.Typer()
    app.command()(mock_engine)
    ctx = typer.main.get_command(app).make_context("mock-engine", list(argv))
    return settings_from_options(ctx.params, env)


async def _main(settings: MockEngineSettings) -> int:
    from polyserve.mockengine.server import serve  # aiohttp only when serving

    stop = stop_on_signals()
    code = await serve(settings, stop=stop)
    if code:
        logging.getLogger("polyserve.mockengine").error("every engine has crashed")
    return code

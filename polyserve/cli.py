"""The one ``polyserve`` command. Subcommands stay thin: they parse, call the package, and print."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from polyserve.profile import (
    ProfileError,
    available_profiles,
    fit_iteration_model,
    load_profile,
    read_step_csv,
)
from polyserve.slo import PAPER_TIERS, SLOError

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="PolyServe: multi-SLO LLM serving."
)
profile_app = typer.Typer(no_args_is_help=True, help="Iteration-time profiles.")
app.add_typer(profile_app, name="profile")

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

#: Errors that are the user's input, not a bug: printed as one clear line, exit status 2.
USER_ERRORS: tuple[type[Exception], ...] = (ProfileError, SLOError, ValueError, OSError)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            err_console.print(f"[red]error:[/red] {err}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


SHOW_BATCHES = (1, 8, 16, 32, 64, 128, 256)
SHOW_CONTEXTS = (512, 1024, 2048, 4096, 8192)


@profile_app.command("list")
def profile_list() -> None:
    """List the shipped profiles."""
    for name in available_profiles():
        console.print(name)


@profile_app.command("show")
@user_errors
def profile_show(
    name: Annotated[str, typer.Argument(help="A shipped profile name or a profile file.")],
) -> None:
    """Predicted step times and the largest decode batch that meets each TPOT tier."""
    prof = load_profile(name)
    console.print(
        f"[bold]{prof.name}[/bold]: {prof.model} on {prof.gpu}, TP{prof.tensor_parallel}; "
        f"KV cache {prof.kv_cache_tokens:,} tokens (block {prof.block_size}), "
        f"max_num_seqs {prof.max_num_seqs}, max_num_batched_tokens {prof.max_num_batched_tokens}, "
        f"max_model_len {prof.max_model_len:,}",
        highlight=False,
    )
    steps = Table(title="Predicted decode step (ms) by batch and context per request")
    steps.add_column("context")
    for b in SHOW_BATCHES:
        steps.add_column(f"b={b}", justify="right")
    for ctx in SHOW_CONTEXTS:
        steps.add_row(f"{ctx}", *(f"{prof.step_ms(b, b * ctx):.1f}" for b in SHOW_BATCHES))
    console.print(steps)
    prefill = Table(title="Prefill alone (one first chunk)")
    prefill.add_column("prompt tokens")
    prefill.add_column("step ms", justify="right")
    prefill.add_column("ms/token", justify="right")
    for n in (128, 512, 1024, 2048, 4096):
        if n <= prof.max_num_batched_tokens:
            ms = prof.step_ms(0, 0, n, n * n)
            prefill.add_row(str(n), f"{ms:.1f}", f"{ms / n:.3f}")
    console.print(prefill)
    cap = Table(title="Per-tier capacity: largest decode batch within the tier's TPOT")
    cap.add_column("context")
    for tier in PAPER_TIERS.tiers:
        cap.add_column(f"{tier.name} ({tier.tpot_ms:g} ms)", justify="right")
    for ctx in SHOW_CONTEXTS:
        cap.add_row(
            f"{ctx}", *(str(prof.max_decode_batch(t.tpot_ms, ctx)) for t in PAPER_TIERS.tiers)
        )
    console.print(cap)
    if prof.provenance:
        console.print(f"[dim]{prof.provenance.strip().splitlines()[0]}[/dim]", highlight=False)


@profile_app.command("fit")
@user_errors
def profile_fit(
    measurements: Annotated[
        Path,
        typer.Argument(help="CSV: decode_batch, decode_context_tokens, prefill_tokens, step_ms"),
    ],
) -> None:
    """Fit the iteration-time model to measured steps by least squares and report the fit error."""
    samples = read_step_csv(measurements)
    model, err = fit_iteration_model(samples)
    console.print(f"fitted on {err}", highlight=False)
    console.print("iteration:")
    for key, value in model.model_dump().items():
        console.print(f"  {key}: {value:.6g}", highlight=False)


# Component subcommands register here, one line each (their modules keep their own options).
app.command("mock-engine")(__import__("polyserve.mockengine.cli", fromlist=["cli"]).mock_engine)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

"""The one ``polyserve`` command. Subcommands stay thin: they parse, call the package, and print."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from polyserve.autoscale.cli import autoscale_app
from polyserve.loadgen.cli import load
from polyserve.local.cli import demo, up
from polyserve.mockengine.cli import mock_engine
from polyserve.operator.cli import operator_app
from polyserve.profile import (
    DEFAULT_PROFILE,
    ProfileError,
    available_profiles,
    fit_iteration_model,
    load_profile,
    read_step_csv,
)
from polyserve.router.cli import router
from polyserve.slo import PAPER_TIERS, SLOError
from polyserve.tier_engine import derive_tier_engine

if TYPE_CHECKING:
    from polyserve.profile import Profile
    from polyserve.sim.study import EngineMode
    from polyserve.sim.workload import Arrival

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
    tpot: Annotated[
        list[float] | None,
        typer.Option(min=1.0, help="A tier's TPOT in ms (repeat; default: the paper's tiers)."),
    ] = None,
    ttft: Annotated[
        float | None,
        typer.Option(min=1.0, help="The tiers' TTFT in ms (default: the paper's tiers')."),
    ] = None,
    shared: Annotated[
        bool, typer.Option(help="Tiers share servers (priority scheduling), as the operator's.")
    ] = True,
) -> None:
    """Predicted step times, the largest decode batch that meets each TPOT tier, and the engine
    flags derived for each tier (``polyserve.tier_engine``) with the reasons."""
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
    paper_ttft = {t.tpot_ms: t.ttft_ms for t in PAPER_TIERS.tiers}
    for tpot_ms in tpot or list(paper_ttft):
        ttft_ms = (
            ttft if ttft is not None else paper_ttft.get(tpot_ms, PAPER_TIERS.tiers[0].ttft_ms)
        )
        derived = derive_tier_engine(prof, tpot_ms, ttft_ms, shared=shared)
        console.print(
            f"[bold]TPOT {tpot_ms:g} ms, TTFT {ttft_ms:g} ms:[/bold] {' '.join(derived.vllm_args())}",
            highlight=False,
        )
        for flag, why in derived.reasons.items():
            console.print(f"  {flag} {why}", highlight=False, soft_wrap=True)
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


QUICK_POLICIES = ("polyserve", "pack-load", "static-partition", "least-outstanding", "co-chunk")


@app.command("simulate")
@user_errors
def simulate(
    workload: Annotated[
        str, typer.Option(help="azure-conv, azure-code, sharegpt (Poisson), or a CSV/JSONL file.")
    ] = "azure-conv",
    requests: Annotated[int, typer.Option(min=100, help="Requests to replay.")] = 8000,
    servers: Annotated[int, typer.Option(min=1, help="Engines in the fleet.")] = 20,
    profile: Annotated[str, typer.Option(help="Profile name or file.")] = DEFAULT_PROFILE,
    policies: Annotated[str, typer.Option(help="Comma-separated policy names.")] = ",".join(
        QUICK_POLICIES
    ),
    threshold: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="Attainment that defines goodput.")
    ] = 0.9,
    seed: Annotated[int, typer.Option(help="Seed for SLO assignment and Poisson arrivals.")] = 1,
    quick: Annotated[
        bool, typer.Option("--quick", help="A fast comparison: 3,000 requests on 6 servers.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Folder for the PNG plots.")] = Path("out/simulate"),
    engine: Annotated[
        str,
        typer.Option(
            help="stock (vLLM as shipped, each tier's derived flags), polyserve (our engine "
            "extensions: dynamic and slack-aware chunking) or both (one table each)."
        ),
    ] = "both",
) -> None:
    """Goodput of each policy on a workload (bisection on the rate for the attainment threshold)."""
    from polyserve.policy import POLICY_NAMES, check_policy_name
    from polyserve.sim.study import ENGINE_MODES
    from polyserve.sim.workload import SLOAssigner, shapes_for

    if quick:  # few servers keep the rate low, so the short run still reaches a steady state
        requests, servers = 3000, 6
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names:
        raise ValueError(f"no policy given; choose from {', '.join(POLICY_NAMES)}")
    for name in names:
        check_policy_name(name)
    modes = [m for m in ENGINE_MODES if engine in (m, "both")]
    if not modes:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINE_MODES)}, both")
    prof = load_profile(profile)
    base = SLOAssigner(PAPER_TIERS, prof).assign(shapes_for(workload, requests, seed), seed=seed)
    for mode in modes:
        _goodput_table(prof, base, workload, servers, names, threshold, mode, out / mode)


def _goodput_table(
    prof: Profile,
    base: list[Arrival],
    workload: str,
    servers: int,
    names: list[str],
    threshold: float,
    engine: EngineMode,
    out: Path,
) -> None:
    """One goodput study on one engine, printed as a table, with its plots under ``out``."""
    from rich.progress import Progress

    from polyserve.sim.plots import write_all
    from polyserve.sim.study import goodput_study

    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("goodput search", total=len(names) * 10)

        def on_point(name: str, point: object) -> None:
            bar.update(task, advance=1, description=f"{engine} engine, {name}: {point}")

        results, bound = goodput_study(
            prof, PAPER_TIERS, base, servers, names, threshold, on_point=on_point, engine=engine
        )
    optimum = bound.goodput(servers)
    best_baseline = max(
        (r.goodput.rate for r in results if not r.name.startswith("polyserve")), default=0.0
    )
    wide = Console(width=max(console.width, 150))
    on = "stock vLLM" if engine == "stock" else "PolyServe's engine extensions"
    table = Table(
        title=f"Goodput at {threshold:.0%} attainment on {on}: {workload}, {len(base)} requests, "
        f"{servers} x {prof.name}"
    )
    for col in ("policy", "goodput req/s", "vs best baseline", "% of optimal"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for tier in PAPER_TIERS.tiers:
        table.add_column(f"{tier.name} p99 TTFT/TPOT ms", justify="right")
    for r in results:
        ratio = f"{r.goodput.rate / best_baseline:.2f}x" if best_baseline else "-"
        cells = []
        for tier in PAPER_TIERS.tiers:
            ts = r.at_goodput.summary.per_tier.get(tier.name) if r.at_goodput else None
            cells.append(
                f"{ts.ttft_ms['p99']:.0f}/{ts.tpot_ms['p99']:.1f}" if ts and ts.requests else "-"
            )
        table.add_row(
            r.name,
            f"{r.goodput.rate:.1f}",
            ratio,
            f"{r.goodput.rate / optimum:.1%}",
            *cells,
        )
    wide.print(table)
    caps = ", ".join(
        f"{t.name} {c:.2f}"
        for t, c in zip(PAPER_TIERS.tiers, bound.per_server_capacity, strict=True)
    )
    wide.print(
        f"optimal (fluid bound at {threshold:.0%}): {optimum:.1f} req/s; per-server req/s by tier: {caps}",
        highlight=False,
    )
    for path in write_all(results, PAPER_TIERS, optimum, threshold, out):
        wide.print(f"wrote {path}", highlight=False)


# Component subcommands register here, one line each (their modules keep their own options).
app.command("mock-engine")(mock_engine)
app.add_typer(operator_app, name="operator")
app.command("router")(router)
app.command("load")(load)
app.add_typer(autoscale_app, name="autoscale")
app.command("up")(up)
app.command("demo")(demo)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

"""``polyserve autoscale replay``: a trace through the simulator under the autoscaler."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from polyserve.profile import DEFAULT_PROFILE

autoscale_app = typer.Typer(no_args_is_help=True, help="Per-tier autoscaling.")
console = Console()


@autoscale_app.command("replay")
def replay(
    workload: Annotated[str, typer.Option(help="azure-conv or azure-code.")] = "azure-conv",
    copies: Annotated[
        int, typer.Option(min=1, help="Overlaid copies of the trace (load multiplier).")
    ] = 8,
    minutes: Annotated[
        float | None, typer.Option(min=0.5, help="Replay only the first minutes.")
    ] = None,
    startup: Annotated[float, typer.Option(min=0.0, help="Engine start-up delay, s.")] = 60.0,
    settings_file: Annotated[
        Path | None,
        typer.Option("--settings", help="YAML/JSON AutoscaleSettings (camelCase or snake_case)."),
    ] = None,
    profile: Annotated[str, typer.Option(help="Profile name or file.")] = DEFAULT_PROFILE,
    static: Annotated[
        int, typer.Option(min=0, help="Also replay a fixed fleet of this many servers.")
    ] = 0,
    out: Annotated[Path, typer.Option(help="Folder for the plot.")] = Path("out/autoscale"),
    seed: Annotated[int, typer.Option(help="Seed for the SLO assignment and the jitter.")] = 1,
) -> None:
    """Replicas per tier, attainment and GPU-seconds per request of the autoscaler on a trace."""
    import yaml

    from polyserve.autoscale.plots import replicas_over_time
    from polyserve.autoscale.replay import Replay, ReplayResult, run_autoscaler, run_static
    from polyserve.autoscale.settings import AutoscaleSettings
    from polyserve.profile import load_profile
    from polyserve.sim.workload import TRACES, SLOAssigner, read_azure, superpose
    from polyserve.slo import PAPER_TIERS

    if workload not in ("azure-conv", "azure-code"):
        raise typer.BadParameter(
            f"azure-conv or azure-code, not {workload!r}", param_hint="--workload"
        )
    try:
        raw = yaml.safe_load(settings_file.read_text()) if settings_file else {}
        settings = AutoscaleSettings.model_validate({"startupS": startup, **(raw or {})})
    except (OSError, yaml.YAMLError, ValidationError, TypeError) as err:
        Console(stderr=True).print(f"[red]error:[/red] settings: {err}", highlight=False)
        raise typer.Exit(2) from None
    prof = load_profile(profile)
    shapes = read_azure(TRACES[workload])
    if minutes is not None:
        shapes = [s for s in shapes if s.time < minutes * 60]
    shapes = superpose(shapes, copies, 5.0, seed)
    arrivals = SLOAssigner(PAPER_TIERS, prof).assign(shapes, seed=seed)
    rp = Replay(prof, PAPER_TIERS, arrivals, settings.startup_s)
    runs: list[ReplayResult] = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("autoscaler", total=len(arrivals) * (2 if static else 1))
        runs.append(run_autoscaler(rp, settings, progress=lambda n: bar.advance(task, n)))
        if static:
            bar.update(task, description="static")
            runs.append(run_static(rp, static, progress=lambda n: bar.advance(task, n)))
    table = Table(title=f"{workload}: {len(arrivals):,} requests, start-up {startup:g} s")
    for col in ("strategy", "attainment", *(t.name for t in PAPER_TIERS.tiers), "GPU-s/req"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in runs:
        table.add_row(
            f"{r.name} {r.knob}".strip(),
            f"{r.attainment:.4f}",
            *(f"{r.tier_attainment(t.name):.4f}" for t in PAPER_TIERS.tiers),
            f"{r.gpu_s_per_request:.4f}",
        )
    console.print(table)
    reasons = runs[0].reasons or Counter()
    console.print(
        "decisions: " + ", ".join(f"{t}/{r} {n}" for (t, r), n in sorted(reasons.items()) if n),
        highlight=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    path = replicas_over_time(
        runs[0],
        runs[1:],
        PAPER_TIERS,
        f"{workload}: replicas per tier vs load",
        out / "replicas.png",
    )
    console.print(f"wrote {path}", highlight=False)

"""``polyserve load``: replay a trace against an OpenAI-compatible endpoint and write a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from polyserve import precise_loop
from polyserve.loadgen.client import LoadClient, Result, Run, Sample, fetch_tiers
from polyserve.loadgen.plan import TierInfo, plan
from polyserve.loadgen.report import HEADER, markdown, row_cells, tier_rows, write_plots
from polyserve.options import fail
from polyserve.sim.workload import WorkloadError

console = Console(width=max(Console().width, 120))


def summary_table(results: list[Result], title: str) -> Table:
    table = Table(title=title)
    for col in HEADER:
        table.add_column(col, justify="left" if col == "tier" else "right")
    for row in tier_rows(results):
        table.add_row(*row_cells(row))
    return table


def _live_view(results: list[Result], samples: list[Sample], elapsed: float) -> Table:
    sent = sum(r.sent > 0 for r in results)
    finished = sum(r.outcome != "pending" for r in results)
    title = f"{elapsed:5.0f} s  sent {sent}/{len(results)}  finished {finished}  in flight {sent - finished}"
    if samples:
        s = samples[-1]
        title += "  pending " + " ".join(f"{t}:{n}" for t, n in s.pending.items())
        title += "  replicas " + " ".join(f"{t}:{n}" for t, n in s.backends.items())
    return summary_table([r for r in results if r.outcome != "pending"], title)


def load(
    url: Annotated[
        str, typer.Option(help="Endpoint base URL (a PolyServe router).")
    ] = "http://127.0.0.1:8080",
    workload: Annotated[
        str, typer.Option(help="azure-conv, azure-code, sharegpt (Poisson), or a CSV/JSONL file.")
    ] = "azure-conv",
    requests: Annotated[int, typer.Option(help="Requests to send.")] = 600,
    duration: Annotated[
        float, typer.Option(help="Seconds the arrivals are compressed into.")
    ] = 120.0,
    mix: Annotated[
        str | None,
        typer.Option(help="Tier weights, tightest first, e.g. 0.2,0.3,0.5 (default: the paper's)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model (default: the endpoint's first).")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="POLYSERVE_API_KEY", help="API key.")
    ] = None,
    max_output: Annotated[int, typer.Option(help="Cap on each request's output tokens.")] = 512,
    max_prompt: Annotated[int, typer.Option(help="Cap on each request's prompt tokens.")] = 4096,
    grace: Annotated[
        float, typer.Option(help="Seconds after the last arrival before the run ends.")
    ] = 120.0,
    seed: Annotated[int, typer.Option(help="Random seed (tiers).")] = 0,
    out: Annotated[Path, typer.Option(help="Report directory.")] = Path("out/load"),
) -> None:
    """Replay a trace with mixed SLO tiers, time every token, and report attainment per tier."""
    try:
        weights = [float(w) for w in mix.split(",")] if mix else None
    except ValueError:
        fail(f"--mix {mix!r}: expected comma-separated numbers")
    try:
        run = precise_loop.run(
            _run(
                url,
                workload,
                requests,
                duration,
                weights,
                model,
                api_key,
                max_output,
                max_prompt,
                grace,
                seed,
            )
        )
    except (WorkloadError, ConnectionError, OSError) as e:
        fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(run, out)
    (out / "report.md").write_text(markdown(run, f"Load run: {workload} against {url}", plots))
    console.print(
        summary_table(run.results, f"{workload}: {len(run.results)} requests in {run.wall_s:.0f} s")
    )
    console.print(f"report: {out / 'report.md'} (plots: {', '.join(plots)})")


async def _run(
    url: str,
    workload: str,
    requests: int,
    duration: float,
    weights: list[float] | None,
    model: str | None,
    api_key: str | None,
    max_output: int,
    max_prompt: int,
    grace: float,
    seed: int,
) -> Run:
    model_id, tiers = await fetch_tiers(url, api_key, model)
    if not tiers:
        raise ConnectionError(f"{url} lists no tiers for {model_id} (is it a PolyServe router?)")
    infos = [TierInfo(t["name"], float(t["tpot_ms"]), float(t["ttft_ms"])) for t in tiers]
    planned = plan(workload, infos, requests, duration, weights, max_prompt, max_output, seed)
    client = LoadClient(url, model_id, api_key, request_timeout_s=grace)
    with Live(console=console, refresh_per_second=2, transient=True) as live:

        def update(results: list[Result], samples: list[Sample], elapsed: float) -> None:
            live.update(_live_view(results, samples, elapsed))

        return await client.run(planned, deadline_s=planned[-1].time + grace, on_update=update)

"""The load run's report: a per-tier summary table, Markdown, and PNG plots."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polyserve.loadgen.client import Result, Run


@dataclass(frozen=True)
class TierRow:
    tier: str
    tpot_ms: float
    ttft_ms: float
    requests: int
    ok: int
    rejected: int
    errors: int  # errors and timeouts
    attained: int
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float

    @property
    def attainment(self) -> float:
        return self.attained / self.requests if self.requests else math.nan


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def tier_rows(results: list[Result]) -> list[TierRow]:
    """One row per tier (tightest first), plus ``all``. Attainment counts every request sent: a
    rejected, failed or unfinished request did not attain its SLO."""
    tiers = sorted({r.planned.tier for r in results}, key=lambda t: t.tpot_ms)
    rows = []
    for tier, group in [(t, [r for r in results if r.planned.tier == t]) for t in tiers] + [
        (None, results)
    ]:
        ttfts = [v for r in group if (v := r.ttft_ms) is not None]
        tpots = [v for r in group if (v := r.tpot_ms) is not None]
        rows.append(
            TierRow(
                tier=tier.name if tier else "all",
                tpot_ms=tier.tpot_ms if tier else math.nan,
                ttft_ms=tier.ttft_ms if tier else math.nan,
                requests=len(group),
                ok=sum(r.outcome == "ok" for r in group),
                rejected=sum(r.outcome == "rejected" for r in group),
                errors=sum(r.outcome in ("error", "timeout") for r in group),
                attained=sum(r.attained for r in group),
                ttft_p50=_pct(ttfts, 50),
                ttft_p99=_pct(ttfts, 99),
                tpot_p50=_pct(tpots, 50),
                tpot_p99=_pct(tpots, 99),
            )
        )
    return rows


HEADER = (
    "tier",
    "SLO TPOT/TTFT ms",
    "requests",
    "ok",
    "429",
    "errors",
    "attainment",
    "TTFT p50/p99 ms",
    "TPOT p50/p99 ms",
)


def row_cells(row: TierRow) -> list[str]:
    slo = "" if math.isnan(row.tpot_ms) else f"{row.tpot_ms:g}/{row.ttft_ms:g}"
    return [
        row.tier,
        slo,
        str(row.requests),
        str(row.ok),
        str(row.rejected),
        str(row.errors),
        f"{row.attainment:.1%}",
        f"{row.ttft_p50:.0f}/{row.ttft_p99:.0f}",
        f"{row.tpot_p50:.1f}/{row.tpot_p99:.1f}",
    ]


def markdown(run: Run, title: str, plots: list[str]) -> str:
    rows = tier_rows(run.results)
    lines = [f"# {title}", "", f"{len(run.results)} requests in {run.wall_s:.0f} s.", ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    errors = Counter(r.error for r in run.results if r.error)
    if errors:
        lines += ["", "Errors (most common first):", ""]
        lines += [f"- {n} x {msg}" for msg, n in errors.most_common(10)]
    per_backend = Counter(r.backend for r in run.results if r.backend)
    if per_backend:
        lines += [
            "",
            "Requests per backend: "
            + ", ".join(f"{b} {n}" for b, n in sorted(per_backend.items())),
        ]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_plots(run: Run, out: Path) -> list[str]:
    """Latency CDFs against each tier's SLO, replicas per tier vs the arrival rate, requests per
    backend (the load gradient). Returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    tiers = sorted({r.planned.tier for r in run.results}, key=lambda t: t.tpot_ms)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for tier in tiers:
        group = [r for r in run.results if r.planned.tier == tier]
        for ax, values, slo in (
            (axes[0], [v for r in group if (v := r.ttft_ms) is not None], tier.ttft_ms),
            (axes[1], [v for r in group if (v := r.tpot_ms) is not None], tier.tpot_ms),
        ):
            if not values:
                continue
            xs = np.sort(values)
            line = ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=tier.name)[0]
            ax.axvline(slo, color=line.get_color(), linestyle=":", linewidth=1)
    axes[0].set(
        xlabel="TTFT ms (dotted: the tier's SLO)", ylabel="fraction of requests", xscale="log"
    )
    axes[1].set(xlabel="TPOT ms (dotted: the tier's SLO)", xscale="log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "latency_vs_slo.png", dpi=110)
    plt.close(fig)
    written.append("latency_vs_slo.png")

    if run.samples:
        fig, ax = plt.subplots(figsize=(11, 4))
        ts = [s.time for s in run.samples]
        for tier in tiers:
            ax.step(
                ts,
                [s.backends.get(tier.name, 0) for s in run.samples],
                where="post",
                label=f"{tier.name} replicas",
            )
        ax.set(xlabel="seconds", ylabel="replicas")
        sent = sorted(r.sent for r in run.results if r.sent)
        if sent:
            edges = np.arange(0, max(sent) + 5, 5.0)
            counts, _ = np.histogram(sent, edges)
            ax2 = ax.twinx()
            ax2.plot(edges[:-1] + 2.5, counts / 5.0, color="grey", alpha=0.6, label="arrivals/s")
            ax2.set_ylabel("arrivals per second")
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(out / "replicas_vs_load.png", dpi=110)
        plt.close(fig)
        written.append("replicas_vs_load.png")

    per_backend = Counter(r.backend for r in run.results if r.backend)
    if per_backend:
        fig, ax = plt.subplots(figsize=(11, 4))
        names = [b for b, _ in per_backend.most_common()]
        ax.bar(range(len(names)), [per_backend[b] for b in names])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set(
            ylabel="requests served",
            title="Requests per backend, most loaded first (the load gradient)",
        )
        fig.tight_layout()
        fig.savefig(out / "requests_per_backend.png", dpi=110)
        plt.close(fig)
        written.append("requests_per_backend.png")
    return written

"""PNG plots of a goodput study: attainment vs load, per-tier attainment, requests per server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from polyserve.sim.study import PolicyGoodput
from polyserve.slo import TierSet


def _save(fig: Figure, ax: Axes, title: str, path: Path, grid: bool = True) -> Path:
    if grid:
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def attainment_vs_load(
    results: Sequence[PolicyGoodput], optimum: float, threshold: float, path: Path
) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        pts = sorted(r.goodput.points, key=lambda p: p.rate)
        ax.plot(
            [p.rate / optimum for p in pts],
            [p.attainment for p in pts],
            marker="o",
            label=f"{r.name} ({r.goodput.rate:.0f}/s)",
        )
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("arrival rate / fluid optimum at the threshold")
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(0, 1.02)
    return _save(fig, ax, "Attainment vs load (points tried by the goodput search)", path)


def per_tier_attainment(results: Sequence[PolicyGoodput], tiers: TierSet, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        if r.at_goodput is None:
            continue
        per = r.at_goodput.summary.per_tier
        vals = [per[t.name].attainment if t.name in per else 0.0 for t in tiers.tiers]
        ax.bar([k + i * width for k in range(len(tiers))], vals, width, label=r.name)
    ax.set_xticks(
        [k + 0.4 - width / 2 for k in range(len(tiers))],
        [f"{t.name} ({t.tpot_ms:g} ms)" for t in tiers.tiers],
    )
    ax.set_ylabel("attainment at the policy's goodput")
    ax.set_ylim(0, 1.05)
    return _save(fig, ax, "Per-tier attainment", path, grid=False)


def load_per_server(results: Sequence[PolicyGoodput], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if r.at_goodput is None:
            continue
        served = sorted(r.at_goodput.served_per_server, reverse=True)
        ax.plot(range(1, len(served) + 1), served, marker=".", label=r.name)
    ax.set_xlabel("server (most loaded first)")
    ax.set_ylabel("requests served")
    return _save(fig, ax, "Load per server: the gradient PolyServe creates", path)


def write_all(
    results: Sequence[PolicyGoodput], tiers: TierSet, optimum: float, threshold: float, out: Path
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [
        attainment_vs_load(results, optimum, threshold, out / "attainment_vs_load.png"),
        per_tier_attainment(results, tiers, out / "per_tier_attainment.png"),
        load_per_server(results, out / "load_per_server.png"),
    ]

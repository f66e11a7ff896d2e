"""PNG plots of a scaling replay: replicas per tier over time against the load."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import itertools

import matplotlib.pyplot as plt

from polyserve.autoscale.replay import ReplayResult
from polyserve.sim.plots import _save
from polyserve.slo import TierSet


def replicas_over_time(
    main: ReplayResult, others: Sequence[ReplayResult], tiers: TierSet, title: str, path: Path
) -> Path:
    """Stacked replicas per tier of ``main`` (one area for a pool), total replicas of ``others``,
    and the arrival rate."""
    fig, ax = plt.subplots(figsize=(10, 5))
    hist = main.history
    times = [s.time / 60 for s in hist]
    per_tier = list(zip(*(s.replicas for s in hist), strict=True)) if hist else []
    labels = (
        [f"{main.name} ({main.knob or 'defaults'})"]
        if main.pool
        else [f"{t.name} ({t.tpot_ms:g} ms)" for t in tiers.tiers][: len(per_tier)]
    )
    ax.stackplot(times, *per_tier, labels=labels, step="post", alpha=0.6)
    for r in others:
        ax.step(
            [s.time / 60 for s in r.history],
            [sum(s.replicas) for s in r.history],
            where="post",
            linewidth=1.2,
            label=f"{r.name}, {r.knob}",
        )
    ax.set_xlabel("time (min)")
    ax.set_ylabel("replicas (starting included)")
    rate_ax = ax.twinx()
    if len(hist) > 1:
        rates = [sum(b.arrivals) - sum(a.arrivals) for a, b in itertools.pairwise(hist)]
        spans = [b.time - a.time for a, b in itertools.pairwise(hist)]
        rate_ax.plot(
            times[1:],
            [r / s if s > 0 else 0.0 for r, s in zip(rates, spans, strict=True)],
            color="black",
            linewidth=0.6,
            alpha=0.6,
        )
    rate_ax.set_ylabel("arrivals / s (black)")
    rate_ax.set_ylim(bottom=0)
    return _save(fig, ax, title, path)

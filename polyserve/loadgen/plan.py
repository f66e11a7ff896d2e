"""What a load run sends: a trace's arrivals and lengths, time-compressed, with a tier each.

The tiers are the endpoint's own (from ``GET /v1/models`` of a PolyServe router, or given), and
each request is judged against its tier's TTFT and TPOT, the SLO the router promises.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from polyserve.sim.workload import Shape, WorkloadError, rescale, shapes_for


@dataclass(frozen=True, slots=True)
class TierInfo:
    name: str
    tpot_ms: float
    ttft_ms: float


@dataclass(frozen=True, slots=True)
class Planned:
    index: int
    time: float  # seconds from the start of the run
    prompt_tokens: int
    output_tokens: int
    tier: TierInfo


PAPER_MIX = (0.1, 0.2, 0.3, 0.4)


def default_mix(n_tiers: int) -> tuple[float, ...]:
    """The paper's 10/20/30/40 % over four tiers (tightest first), else equal shares."""
    return PAPER_MIX if n_tiers == len(PAPER_MIX) else tuple([1.0 / n_tiers] * n_tiers)


def plan(
    workload: str,
    tiers: Sequence[TierInfo],
    requests: int,
    duration_s: float,
    mix: Sequence[float] | None = None,
    max_prompt: int = 4096,
    max_output: int = 512,
    seed: int = 0,
) -> list[Planned]:
    """``requests`` requests of ``workload`` (a trace name or file) compressed into ``duration_s``.

    Lengths are capped (``max_prompt``, ``max_output``) so a short run is not one long request; the
    trace's arrival pattern (bursts, lulls) is kept, only its time axis is scaled.
    """
    if requests < 1 or duration_s <= 0:
        raise WorkloadError("a load run needs at least one request and a positive duration")
    if not tiers:
        raise WorkloadError("the endpoint lists no tiers")
    ordered = sorted(tiers, key=lambda t: t.tpot_ms)
    weights = list(mix) if mix is not None else list(default_mix(len(ordered)))
    if len(weights) != len(ordered) or any(w < 0 for w in weights) or sum(weights) <= 0:
        names = ", ".join(t.name for t in ordered)
        raise WorkloadError(
            f"--mix needs {len(ordered)} non-negative weights (tiers {names}), got {weights}"
        )
    shapes: list[Shape] = shapes_for(workload, requests, seed)
    rate = (len(shapes) - 1) / duration_s if len(shapes) > 1 else 1.0
    shapes = rescale(shapes, rate)
    rng = random.Random(seed)
    return [
        Planned(
            index=i,
            time=s.time,
            prompt_tokens=max(1, min(s.prompt_tokens, max_prompt)),
            output_tokens=max(1, min(s.output_tokens, max_output)),
            tier=rng.choices(ordered, weights=weights)[0],
        )
        for i, s in enumerate(shapes)
    ]


def prompt_text(tokens: int, index: int) -> str:
    """A prompt of ``tokens`` tokens for the mock tokenizer (BOS plus one short word each); real
    tokenizers count it within a few percent."""
    words = ("alpha", "beta", "gamma", "delta")
    return " ".join(f"{words[(index + k) % 4][:4]}" for k in range(max(0, tokens - 1)))

"""One server's capacity at a tier's TPOT for the live autoscalers (operator, local fleet).

The live system does not know its future requests, so the fluid capacity
(``profile.tier_capacity``) is taken over a typical mix of lengths: the Azure conversation
trace's. The simulator's study uses the replayed workload's own lengths instead.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from polyserve.profile import Profile, tier_capacity
from polyserve.sim.workload import shapes_for


@cache
def typical_lengths() -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths of the typical mix (the Azure conversation trace)."""
    shapes = shapes_for("azure-conv", None, 0)
    return (
        np.array([s.prompt_tokens for s in shapes]),
        np.array([s.output_tokens for s in shapes]),
    )


_CAPACITY: dict[tuple[str, float], float] = {}


def typical_capacity_rps(profile: Profile, tpot_ms: float) -> float:
    """Requests/s one server sustains at the TPOT, computed once per profile and TPOT."""
    key = (profile.name, tpot_ms)
    if key not in _CAPACITY:
        prompts, outputs = typical_lengths()
        _CAPACITY[key] = tier_capacity(profile, tpot_ms, prompts, outputs)
    return _CAPACITY[key]

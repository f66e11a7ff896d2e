"""One shared pool instead of a deployment per tier: the tiers' signals as one observation (pure).

PolyServe's idle pool (the paper's autoscaling) lets any empty server join any tier; the router
supports it (a ``BackendSpec`` with no tier). The pool is then scaled as one group by the same
decision core: each tier's rates are turned into servers of demand with its own per-server capacity
(``rate_t / capacity_t``) and summed, so the pool's :class:`~polyserve.autoscale.decide.TierTarget`
has a capacity of exactly 1 (one server carries one server of demand).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from polyserve.autoscale.signals import Observation, ServerObservation

#: The group name of the pool (its TierTarget, its actuator group).
POOL = "pool"


def pool_observation(
    observations: Sequence[Observation],
    capacities: Mapping[str, float],
    servers: Sequence[ServerObservation],
) -> Observation:
    """The tiers' observations as one, in servers of demand; ``servers`` are the pool's."""

    def demand(rate_of: str) -> float:
        total = 0.0
        for o in observations:
            cap = capacities.get(o.tier, math.nan)
            total += getattr(o, rate_of) / cap if cap > 0 else math.nan
        return total

    return Observation(
        tier=POOL,
        observed_at=min((o.observed_at for o in observations), default=math.nan),
        pending=sum(o.pending for o in observations),
        oldest_wait_s=max((o.oldest_wait_s for o in observations), default=0.0),
        arrival_rate=demand("arrival_rate"),
        arrival_rate_prev=demand("arrival_rate_prev"),
        shed_rate=demand("shed_rate"),
        servers=tuple(servers),
    )

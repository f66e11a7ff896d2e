"""The router's state for the autoscaler and the operator (``GET /polyserve/v1/state``).

The JSON is exactly :class:`polyserve.autoscale.signals.RouterState`, the autoscaler's contract:
per tier the queue and its counters, per backend its readiness, load and idle time.
"""

from __future__ import annotations

from collections.abc import Iterable

from polyserve.autoscale.signals import BackendState, RouterState, TierState
from polyserve.router.pool import ModelPool


def router_state(pools: Iterable[ModelPool], now: float, wall: float) -> RouterState:
    tiers: list[TierState] = []
    backends: list[BackendState] = []
    for pool in pools:
        lengths = pool.queues.lengths()
        for i, spec in enumerate(pool.tier_specs):
            tiers.append(
                TierState(
                    name=spec.name,
                    pending=lengths[i],
                    oldest_wait_s=pool.oldest_wait_s(i, now),
                    arrivals_total=pool.arrivals_total.get(spec.name, 0),
                    shed_total=pool.shed_total.get(spec.name, 0),
                    measured_total=pool.measured_total.get(spec.name, 0),
                    attained_total=pool.attained_total.get(spec.name, 0),
                )
            )
        for b in pool.backends.values():
            backends.append(
                BackendState(
                    name=b.name,
                    tier=b.spec.tier,
                    ready=b.healthy and not b.removed,
                    draining=b.view.draining,
                    requests=b.view.residents,
                    idle_s=pool.idle_s(b, now),
                )
            )
    return RouterState(time=wall, tiers=tiers, backends=backends)

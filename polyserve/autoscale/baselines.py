"""The scaling approaches users run today, as simulator scalers to compare the autoscaler with.

Both follow the Kubernetes HorizontalPodAutoscaler's algorithm (KEDA feeds an HPA too):
``desired = ceil(sum of the ready pods' metric / target)`` (starting pods count 0), no change
within a 10% tolerance of the target, scale-up at most max(2x, +4 pods) per sync, and
scale-down to the highest recommendation of the last ``stabilization_s`` (300 s by default).

- :class:`HPAScaler` with ``metric="kv"``: average utilisation, here vLLM's
  ``vllm:kv_cache_usage_perc`` (GPU utilisation reads ~100% whenever a batch runs);
- ``metric="waiting"``: KEDA's Prometheus scaler on ``vllm:num_requests_waiting`` as an
  AverageValue per pod (requests queued in the engines plus, behind a queueing router, there);
- ``metric="running"``: ``vllm:num_requests_running`` as an AverageValue per pod, the signal
  AIBrix's KPA and vLLM's production stack scale on (requests in the engines' batches);

one HPA for one shared pool, or one per tier on a static partition (``per_tier``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from polyserve.autoscale.pool import POOL
from polyserve.autoscale.virtual import FleetSample, VirtualActuator, sample
from polyserve.sim.fleet import FleetSim

Metric = Literal["kv", "waiting", "running"]


@dataclass(frozen=True, slots=True)
class HPABehavior:
    interval_s: float = 15.0  # the HPA controller's sync period
    tolerance: float = 0.1
    stabilization_s: float = 300.0
    min_replicas: int = 1
    max_replicas: int = 1000


def hpa_recommendation(current: int, metric_sum: float, target: float, b: HPABehavior) -> int:
    """One HPA recommendation (before stabilization): the replicas for ``metric_sum / target``."""
    if current == 0:
        return max(b.min_replicas, 1 if metric_sum > 0 else 0)
    ratio = metric_sum / (target * current)
    if abs(ratio - 1.0) <= b.tolerance:
        return current
    want = math.ceil(metric_sum / target - 1e-9)
    up_limit = max(2 * current, current + 4)
    return max(b.min_replicas, min(want, up_limit, b.max_replicas))


@dataclass
class _Group:
    name: str
    recent: deque[tuple[float, int]] = field(default_factory=deque)


@dataclass
class HPAScaler:
    """HPA (or KEDA) scalers over the simulator, one per group (the pool, or each tier)."""

    actuator: VirtualActuator
    metric: Metric
    target: float
    behavior: HPABehavior = field(default_factory=HPABehavior)
    history: list[FleetSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise ValueError(f"an HPA target must be > 0, got {self.target}")
        tiers = self.actuator.sim.cfg.tiers
        names = [POOL] if self.actuator.pool else [t.name for t in tiers]
        self._groups = [_Group(n) for n in names]

    @property
    def interval_s(self) -> float:
        return self.behavior.interval_s

    def _metric_sum(self, sim: FleetSim, group: str) -> float:
        tiers = sim.cfg.tiers
        total = 0.0
        for view, ready, _ in sim.live_servers():
            if view.draining or not ready:
                continue
            if not self.actuator.pool and (view.tier is None or tiers[view.tier].name != group):
                continue
            engine = sim.engine_of(view)
            if self.metric == "kv":
                total += engine.kv_usage
            elif self.metric == "running":
                total += engine.num_running
            else:
                total += engine.num_waiting
        if self.metric == "waiting":
            lengths = sim.queues.lengths()
            total += sum(lengths) if self.actuator.pool else lengths[tiers.index(group)]
        return total

    def tick(self, now: float, sim: FleetSim) -> None:
        b = self.behavior
        for g in self._groups:
            current = self.actuator.replicas(g.name)
            rec = hpa_recommendation(current, self._metric_sum(sim, g.name), self.target, b)
            g.recent.append((now, rec))
            while g.recent and g.recent[0][0] < now - b.stabilization_s:
                g.recent.popleft()
            desired = rec if rec >= current else min(current, max(r for _, r in g.recent))
            if desired != current:
                self.actuator.scale(g.name, desired, (), now)
        self.history.append(sample(sim, now, self.actuator.pool))


@dataclass
class StaticScaler:
    """A fixed fleet that still runs through scaling mode (so its servers cost from time 0)."""

    actuator: VirtualActuator
    interval_s: float = 60.0
    history: list[FleetSample] = field(default_factory=list)

    def tick(self, now: float, sim: FleetSim) -> None:
        self.history.append(sample(sim, now, self.actuator.pool))

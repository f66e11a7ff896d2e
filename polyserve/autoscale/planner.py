"""A planner in the style of NVIDIA Dynamo's SLA planner (its throughput-based mode), as a
simulator scaler for the autoscaling study.

Every ``interval_s`` it reads how many requests of each tier arrived in the interval that just
ended (Dynamo reads the request count from the frontend's metrics), predicts the next interval's
rate with a load predictor, and sizes each tier from the profile's capacity at the tier's SLO:

    replicas_t = ceil(margin x predicted_rate_t / capacity_t)

Predictors (pure, :func:`predict`): ``constant`` (the last interval, Dynamo's constant
predictor) and ``linear`` (a least-squares trend over the last ``window`` intervals, one interval
ahead; a simple stand-in for Dynamo's ARIMA and Kalman predictors, which are not reproduced).
Dynamo also scales its profiled throughput by measured over expected TTFT and ITL (correction
factors); here the capacity is the fluid model's, the one the simulator's engines are sized by,
so the factor is 1 and left out. It does not look at queues, sheds or KV: a planner, not a
feedback loop. Per tier (a Deployment per tier, PolyServe routing) or, with ``pool``, the tiers'
summed servers in one pool.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from polyserve.autoscale.pool import POOL
from polyserve.autoscale.virtual import FleetSample, VirtualActuator, sample
from polyserve.sim.fleet import FleetSim

Predictor = Literal["constant", "linear"]
PREDICTORS: tuple[Predictor, ...] = ("constant", "linear")


def predict(rates: Sequence[float], predictor: Predictor) -> float:
    """The next interval's rate from the past intervals' (oldest first); never below 0."""
    if not rates:
        return 0.0
    if predictor == "constant" or len(rates) < 2:
        return max(0.0, rates[-1])
    n = len(rates)
    mean_x = (n - 1) / 2.0
    mean_y = sum(rates) / n
    sxx = sum((x - mean_x) ** 2 for x in range(n))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(rates)) / sxx
    return max(0.0, mean_y + slope * (n - mean_x))


def planned_replicas(servers: float, margin: float, floor: int) -> int:
    """Whole servers for ``margin`` x ``servers`` of fluid demand, at least ``floor``."""
    return max(floor, math.ceil(margin * servers - 1e-9))


@dataclass
class PlannerScaler:
    """Dynamo-style planning over the simulator: per tier, or the summed servers in one pool."""

    actuator: VirtualActuator
    capacities: Sequence[float]  # per tier, req/s of one server at its SLO
    margin: float = 1.0
    predictor: Predictor = "constant"
    interval_s: float = 60.0
    window: int = 5  # past intervals the linear predictor fits
    min_replicas: int = 1
    history: list[FleetSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (self.margin > 0 and math.isfinite(self.margin)):
            raise ValueError(f"a planner margin must be a number > 0, got {self.margin}")
        if self.predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}")
        if not (self.interval_s > 0 and self.window >= 1):
            raise ValueError("a planner needs an interval > 0 and a window >= 1")
        n = len(self.capacities)
        self._rates: list[deque[float]] = [deque(maxlen=self.window) for _ in range(n)]
        self._seen = [0] * n
        self._last: float | None = None  # the previous tick (the first only sets the baseline)

    def demand(self, arrived: Sequence[int], elapsed_s: float) -> list[float]:
        """Record the arrivals of the last ``elapsed_s`` (``arrived``: cumulative per tier); the
        fluid servers each tier's predicted rate needs next."""
        out = []
        for t, total in enumerate(arrived):
            self._rates[t].append((total - self._seen[t]) / elapsed_s)
            self._seen[t] = total
            cap = self.capacities[t]
            out.append(predict(self._rates[t], self.predictor) / cap if cap > 0 else 0.0)
        return out

    def tick(self, now: float, sim: FleetSim) -> None:
        last, self._last = self._last, now
        if last is None or now <= last:  # no interval observed yet: keep the provisioned fleet
            self._seen = list(sim.arrivals_by_tier)
            self.history.append(sample(sim, now, self.actuator.pool))
            return
        need = self.demand(sim.arrivals_by_tier, now - last)
        if self.actuator.pool:
            groups = [(POOL, sum(need))]
        else:
            groups = [(t.name, d) for t, d in zip(sim.cfg.tiers, need, strict=True)]
        for name, servers in groups:
            desired = planned_replicas(servers, self.margin, self.min_replicas)
            if desired != self.actuator.replicas(name):
                self.actuator.scale(name, desired, (), now)
        self.history.append(sample(sim, now, self.actuator.pool))

    @property
    def peak_replicas(self) -> int:
        return max((sum(s.replicas) for s in self.history), default=0)

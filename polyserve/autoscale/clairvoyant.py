"""A clairvoyant reference for the autoscaling study: what minute-scale tracking could do at best.

Not a scaler anyone can run: every ``interval_s`` it sizes the shared pool for the fluid demand of
the *coming* window (it reads the trace ahead), times a margin, and its servers start with no
delay. It shows what following the load at that time scale with one margin could save at best:
an autoscaler must guess the coming window from the past ones and ask a start-up time ahead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from polyserve.autoscale.pool import POOL
from polyserve.autoscale.virtual import FleetSample, VirtualActuator, sample
from polyserve.sim.fleet import FleetSim
from polyserve.sim.workload import Arrival


@dataclass(frozen=True)
class FluidDemand:
    """Servers of fluid demand over any window, from the arrivals binned once (``bin_s`` wide)."""

    bins: tuple[float, ...]  # per bin: sum over its arrivals of 1 / capacity of their tier, in s
    bin_s: float

    @classmethod
    def of(
        cls, arrivals: Sequence[Arrival], capacities: Sequence[float], bin_s: float = 10.0
    ) -> FluidDemand:
        if not (bin_s > 0 and math.isfinite(bin_s)):
            raise ValueError(f"bin width must be a number > 0, got {bin_s}")
        end = max((a.time for a in arrivals), default=0.0)
        bins = [0.0] * (int(end // bin_s) + 1)
        for a in arrivals:
            cap = capacities[a.tier]
            if cap > 0:
                bins[int(a.time // bin_s)] += 1.0 / cap
        return cls(tuple(bins), bin_s)

    def servers(self, t0: float, window_s: float) -> float:
        """Fluid servers the arrivals of ``[t0, t0 + window_s)`` need (whole bins)."""
        first = max(0, int(t0 // self.bin_s))
        n = max(1, round(window_s / self.bin_s))
        return sum(self.bins[first : first + n]) / (n * self.bin_s)


@dataclass
class ClairvoyantScaler:
    """The pool sized for ``margin`` x the fluid demand of the next ``window_s`` (no start-up)."""

    actuator: VirtualActuator
    demand: FluidDemand
    margin: float
    window_s: float = 60.0
    interval_s: float = 10.0
    history: list[FleetSample] = field(default_factory=list)

    def target(self, now: float) -> int:
        return max(1, math.ceil(self.margin * self.demand.servers(now, self.window_s) - 1e-9))

    def tick(self, now: float, sim: FleetSim) -> None:
        want = self.target(now)
        if want != self.actuator.replicas(POOL):
            self.actuator.scale(POOL, want, (), now)
        self.history.append(sample(sim, now, self.actuator.pool))

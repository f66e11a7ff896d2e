"""The autoscaler's simulator body: the virtual actuator and the loop that drives it.

``router_state`` reads a running :class:`~polyserve.sim.fleet.FleetSim` into the same
:class:`~polyserve.autoscale.signals.RouterState` the router serves, so the decisions in the
simulator go through exactly the signal path of the live system (counters, trend, observation).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from polyserve.autoscale.actuators import apply
from polyserve.autoscale.decide import Autoscaler, Decision
from polyserve.autoscale.pool import POOL, pool_observation
from polyserve.autoscale.signals import BackendState, RouterState, ServerObservation, TierState
from polyserve.autoscale.trend import StateReader
from polyserve.policy.base import ServerView
from polyserve.sim.fleet import FleetSim
from polyserve.slo import TierSet


def router_state(sim: FleetSim, now: float) -> RouterState:
    """What the router would answer at ``GET /polyserve/v1/state`` for the simulated fleet."""
    tiers = sim.cfg.tiers
    lengths = sim.queues.lengths()
    tier_states = []
    for t, tier in enumerate(tiers):
        oldest = sim.queues.oldest_arrival(t)
        tier_states.append(
            TierState(
                name=tier.name,
                pending=lengths[t],
                oldest_wait_s=max(0.0, now - oldest) if oldest is not None else 0.0,
                arrivals_total=sim.arrivals_by_tier[t],
                shed_total=sim.shed_by_tier[t],
            )
        )
    backends = [
        BackendState(
            name=view.name,
            tier=tiers[view.tier].name if view.tier is not None else None,
            ready=ready,
            draining=view.draining,
            requests=view.n_requests,
            idle_s=max(0.0, now - idle_since) if ready and view.n_requests == 0 else 0.0,
        )
        for view, ready, idle_since in sim.live_servers()
    ]
    return RouterState(time=now, tiers=tier_states, backends=backends)


class VirtualActuator:
    """Starts and stops the simulator's servers: pinned to tiers, or (``pool``) floating."""

    def __init__(self, sim: FleetSim, startup_s: float, pool: bool = False) -> None:
        if not (startup_s >= 0 and math.isfinite(startup_s)):
            raise ValueError(f"start-up delay must be a number >= 0, got {startup_s}")
        self.sim = sim
        self.startup_s = startup_s
        self.pool = pool
        self._tiers = sim.cfg.tiers

    def _group(self, tier: str) -> list[ServerView]:
        """The group's servers that are not on their way out, in start order."""
        if self.pool:
            return [v for v, _, _ in self.sim.live_servers() if not v.draining]
        t = self._tiers.index(tier)
        return [v for v, _, _ in self.sim.live_servers() if v.tier == t and not v.draining]

    def replicas(self, tier: str) -> int:
        return len(self._group(tier))

    def provision(self, tier: str, count: int) -> None:
        """Servers that run before the trace starts (ready at time 0)."""
        for _ in range(count):
            self._start(tier, 0.0, 0.0)

    def _start(self, tier: str, now: float, startup_s: float) -> None:
        if self.pool:
            self.sim.start_server(now, startup_s, tier=None, pinned=False)
        else:
            self.sim.start_server(now, startup_s, tier=self._tiers.index(tier), pinned=True)

    def scale(self, tier: str, desired: int, drain: Sequence[str], now: float) -> None:
        group = self._group(tier)
        if desired > len(group):
            for _ in range(desired - len(group)):
                self._start(tier, now, self.startup_s)
            return
        surplus = len(group) - desired
        named = {v.name: v for v in group}
        chosen = [named[n] for n in drain if n in named][:surplus]
        # then servers still starting (newest first), then the least loaded
        rest = [v for v in group if v not in chosen]
        starting = [v for v in reversed(rest) if not v.healthy]
        ready = sorted((v for v in rest if v.healthy), key=lambda v: (v.residents, -v.index))
        chosen += (starting + ready)[: surplus - len(chosen)]
        for v in chosen:
            self.sim.stop_server(v.index, now)


@dataclass(frozen=True, slots=True)
class FleetSample:
    """One tick of a scaling run, for plots: per-tier counts and the arrivals seen so far."""

    time: float
    replicas: tuple[int, ...]  # per tier (or one entry: the pool)
    ready: tuple[int, ...]
    arrivals: tuple[int, ...]  # cumulative, per tier


def sample(sim: FleetSim, now: float, pool: bool) -> FleetSample:
    n = len(sim.cfg.tiers)
    groups = 1 if pool else n
    reps, ready = [0] * groups, [0] * groups
    for view, is_ready, _ in sim.live_servers():
        if view.draining:
            continue
        g = 0 if pool or view.tier is None else view.tier
        reps[g] += 1
        ready[g] += is_ready
    return FleetSample(now, tuple(reps), tuple(ready), tuple(sim.arrivals_by_tier))


@dataclass
class SimAutoscaler:
    """PolyServe's autoscaler in the simulator: a :class:`~polyserve.sim.fleet.Scaler`."""

    autoscaler: Autoscaler
    actuator: VirtualActuator
    interval_s: float
    window_s: float
    history: list[FleetSample] = field(default_factory=list)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    decisions: list[Decision] = field(default_factory=list)
    keep_decisions: bool = False
    #: per-tier capacities: scale one shared pool of floating servers (``pool.py``)
    pool_capacities: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        self._reader = StateReader(self.window_s)

    @property
    def tiers(self) -> TierSet:
        return self.actuator.sim.cfg.tiers

    def decide(self, now: float, state: RouterState) -> list[Decision]:
        """The decisions on one router snapshot (what ``tick`` carries out)."""
        observations = {o.tier: o for o in self._reader.read(state)}
        if self.pool_capacities is not None:
            servers = [ServerObservation.of(b) for b in state.backends]
            pooled = pool_observation(list(observations.values()), self.pool_capacities, servers)
            observations = {POOL: pooled}
        replicas = {t.name: self.actuator.replicas(t.name) for t in self.autoscaler.targets}
        return self.autoscaler.step(now, observations, replicas)

    def tick(self, now: float, sim: FleetSim) -> None:
        decisions = self.decide(now, router_state(sim, now))
        for d in decisions:
            self.reasons[d.tier, d.reason.value] += 1
        if self.keep_decisions:
            self.decisions.extend(decisions)
        apply(self.actuator, decisions, now)
        self.history.append(sample(sim, now, self.actuator.pool))

"""Offline replay: a trace through the simulator under a scaling strategy, with its cost.

Every strategy runs in the fleet's scaling mode, so each server costs from its start request to its
stop (a fixed fleet from time 0 to the end). Attainment counts every request of the trace (a shed
request misses).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from polyserve.autoscale.baselines import HPABehavior, HPAScaler, Metric, StaticScaler
from polyserve.autoscale.clairvoyant import ClairvoyantScaler, FluidDemand
from polyserve.autoscale.decide import Autoscaler, TierTarget
from polyserve.autoscale.planner import PlannerScaler, Predictor
from polyserve.autoscale.pool import POOL
from polyserve.autoscale.settings import AutoscaleSettings
from polyserve.autoscale.virtual import FleetSample, SimAutoscaler, VirtualActuator
from polyserve.policy import make_policy
from polyserve.profile import Profile
from polyserve.sim.fleet import FleetSim, Scaler, SimResult
from polyserve.sim.optimal import fluid_bound
from polyserve.sim.study import EngineMode, sim_config
from polyserve.sim.workload import Arrival
from polyserve.slo import TierSet

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Replay:
    """A workload and the fleet it runs on."""

    profile: Profile
    tiers: TierSet
    arrivals: Sequence[Arrival]
    startup_s: float = 60.0
    #: the engines: PolyServe's extensions, or stock vLLM with each tier's derived flags (a
    #: server started for a tier runs its tier's; a pool server the tightest tier's)
    engine: EngineMode = "polyserve"

    def capacities(self) -> tuple[float, ...]:
        """Per-server req/s of each tier at its TPOT (fluid, from the workload's lengths)."""
        return fluid_bound(self.profile, self.tiers, self.arrivals).per_server_capacity

    def rate_at(self, t0: float, window_s: float) -> list[float]:
        """Per-tier arrival rate over ``[t0, t0 + window_s)``."""
        counts = [0] * len(self.tiers)
        for a in self.arrivals:
            if t0 <= a.time < t0 + window_s:
                counts[a.tier] += 1
        return [c / window_s for c in counts]

    def initial_servers(self, headroom: float, window_s: float = 120.0) -> list[int]:
        """Per tier: the servers the first window's load needs (the fleet before the trace)."""
        return [
            max(1, math.ceil(r * headroom / c)) if c > 0 else 1
            for r, c in zip(self.rate_at(0.0, window_s), self.capacities(), strict=True)
        ]

    def peak_servers(self, window_s: float = 60.0) -> float:
        """Fluid servers the busiest window needs (the static fleet's starting point)."""
        demand = FluidDemand.of(self.arrivals, self.capacities())
        windows = math.ceil(len(demand.bins) * demand.bin_s / window_s)
        return max(demand.servers(k * window_s, window_s) for k in range(windows))


@dataclass
class ReplayResult:
    name: str
    result: SimResult
    history: list[FleetSample]
    pool: bool
    reasons: Counter[tuple[str, str]] | None = None
    knob: str = ""  # the setting this run used (target, fleet size)

    @property
    def gpu_s_per_request(self) -> float:
        return self.result.summary.cost_per_request

    @property
    def attainment(self) -> float:
        return self.result.summary.attainment

    def tier_attainment(self, tier: str) -> float:
        ts = self.result.summary.per_tier.get(tier)
        return ts.attainment if ts else math.nan

    @property
    def peak_replicas(self) -> int:
        return max((sum(s.replicas) for s in self.history), default=0)


def _run(
    replay: Replay,
    policy_name: str,
    scaler_of: Callable[[FleetSim], tuple[Scaler, VirtualActuator]],
    progress: Progress | None,
) -> tuple[SimResult, Scaler]:
    cfg = sim_config(replay.profile, replay.tiers, 0, policy_name, replay.engine)
    sim = FleetSim(cfg, make_policy(policy_name, shares=[1.0] * len(replay.tiers)))
    scaler, _ = scaler_of(sim)
    sim.scaler = scaler
    return sim.run(replay.arrivals, progress), scaler


def run_autoscaler(
    replay: Replay,
    settings: AutoscaleSettings,
    max_per_tier: int = 200,
    min_per_tier: int = 1,
    progress: Progress | None = None,
) -> ReplayResult:
    """PolyServe routing on per-tier servers, grown and drained by the decision core."""
    caps = replay.capacities()
    targets = [
        TierTarget(t.name, min_per_tier, max_per_tier, c)
        for t, c in zip(replay.tiers, caps, strict=True)
    ]
    init = replay.initial_servers(settings.headroom)

    def build(sim: FleetSim) -> tuple[Scaler, VirtualActuator]:
        act = VirtualActuator(sim, settings.startup_s)
        for t, k in zip(replay.tiers, init, strict=True):
            act.provision(t.name, max(k, min_per_tier))
        scaler = SimAutoscaler(
            Autoscaler(targets, default_settings=settings),
            act,
            settings.decision_interval_s,
            settings.trend_window_s,
        )
        return scaler, act

    res, scaler = _run(replay, "polyserve", build, progress)
    assert isinstance(scaler, SimAutoscaler)
    return ReplayResult("polyserve + autoscaler", res, scaler.history, False, scaler.reasons)


def run_autoscaler_pool(
    replay: Replay,
    settings: AutoscaleSettings,
    max_servers: int = 200,
    min_servers: int = 1,
    progress: Progress | None = None,
) -> ReplayResult:
    """PolyServe routing on one pool of floating servers (the idle pool), scaled by the decision
    core on the tiers' summed demand (``pool.py``)."""
    caps = dict(zip((t.name for t in replay.tiers), replay.capacities(), strict=True))
    init = sum(replay.initial_servers(settings.headroom))

    def build(sim: FleetSim) -> tuple[Scaler, VirtualActuator]:
        act = VirtualActuator(sim, settings.startup_s, pool=True)
        act.provision(POOL, max(init, min_servers))
        scaler = SimAutoscaler(
            Autoscaler(
                [TierTarget(POOL, min_servers, max_servers, 1.0)], default_settings=settings
            ),
            act,
            settings.decision_interval_s,
            settings.trend_window_s,
            pool_capacities=caps,
        )
        return scaler, act

    res, scaler = _run(replay, "polyserve", build, progress)
    assert isinstance(scaler, SimAutoscaler)
    return ReplayResult(
        "polyserve + autoscaler, one pool", res, scaler.history, True, scaler.reasons
    )


def run_static(
    replay: Replay, servers: int, policy: str = "polyserve", progress: Progress | None = None
) -> ReplayResult:
    """A fixed fleet of ``servers`` floating servers (PolyServe's idle pool re-bins them)."""

    def build(sim: FleetSim) -> tuple[Scaler, VirtualActuator]:
        act = VirtualActuator(sim, replay.startup_s, pool=True)
        act.provision(POOL, servers)
        return StaticScaler(act), act

    res, scaler = _run(replay, policy, build, progress)
    assert isinstance(scaler, StaticScaler)
    return ReplayResult("static for the peak", res, scaler.history, True, knob=f"{servers} servers")


def run_hpa(
    replay: Replay,
    metric: Metric,
    target: float,
    per_tier: bool,
    policy: str | None = None,
    max_replicas: int = 1000,
    progress: Progress | None = None,
) -> ReplayResult:
    """An HPA (``kv``) or KEDA (``waiting``) target on one pool, or per tier on a partition."""
    policy = policy or ("static-partition" if per_tier else "least-outstanding")
    init = replay.initial_servers(1.2)

    def build(sim: FleetSim) -> tuple[Scaler, VirtualActuator]:
        act = VirtualActuator(sim, replay.startup_s, pool=not per_tier)
        if per_tier:
            for t, k in zip(replay.tiers, init, strict=True):
                act.provision(t.name, k)
        else:
            act.provision(POOL, sum(init))
        behavior = HPABehavior(max_replicas=max_replicas)
        return HPAScaler(act, metric, target, behavior), act

    res, scaler = _run(replay, policy, build, progress)
    assert isinstance(scaler, HPAScaler)
    kind = {
        "waiting": "KEDA waiting",
        "running": "HPA running requests",
        "kv": "HPA KV utilisation",
    }[metric]
    name = f"{'per-tier ' if per_tier else ''}{kind} ({policy})"
    return ReplayResult(name, res, scaler.history, not per_tier, knob=f"target {target:g}")


def run_clairvoyant(
    replay: Replay, margin: float, window_s: float = 60.0, progress: Progress | None = None
) -> ReplayResult:
    """The clairvoyant reference (``clairvoyant.py``): not a baseline, a bound on tracking."""
    demand = FluidDemand.of(replay.arrivals, replay.capacities())

    def build(sim: FleetSim) -> tuple[Scaler, VirtualActuator]:
        act = VirtualActuator(sim, 0.0, pool=True)
        scaler = ClairvoyantScaler(act, demand, margin, window_s)
        act.provision(POOL, scaler.target(0.0))
        return scaler, act

    res, scaler = _run(replay, "polyserve", build, progress)
    assert isinstance(scaler, ClairvoyantScaler)
    name = "clairvoyant tracker (reference)"
    return ReplayResult(name, res, scaler.history, True, knob=f"margin {margin:g}")


def run_planner(
    replay: Replay,
    margin: float,
    predictor: Predictor = "constant",
    interval_s: float = 60.0,
    pool: bool = False,
    progress: Progress | None = None,
) -> ReplayResult:
    """A Dynamo-style planner (``planner.py``): each tier sized every interval from the predicted
    rate and the profile's capacity, per tier (PolyServe routing) or summed into one pool."""
    init = replay.initial_servers(margin)

    def build(sim: FleetSim) -> tuple[Scaler, VirtualActuator]:
        act = VirtualActuator(sim, replay.startup_s, pool=pool)
        if pool:
            act.provision(POOL, sum(init))
        else:
            for t, k in zip(replay.tiers, init, strict=True):
                act.provision(t.name, k)
        planner = PlannerScaler(act, replay.capacities(), margin, predictor, interval_s)
        return planner, act

    res, scaler = _run(replay, "polyserve", build, progress)
    assert isinstance(scaler, PlannerScaler)
    name = f"Dynamo-style planner{', one pool' if pool else ''}"
    knob = f"margin {margin:g}, {predictor}, every {interval_s:g} s"
    return ReplayResult(name, res, scaler.history, pool, knob=knob)

"""The autoscaler in the simulator: a step change in load, the signal path, the actuators."""

from __future__ import annotations

import random

import pytest

from polyserve.autoscale.baselines import HPABehavior, hpa_recommendation
from polyserve.autoscale.clairvoyant import FluidDemand
from polyserve.autoscale.decide import Reason
from polyserve.autoscale.planner import planned_replicas, predict
from polyserve.autoscale.replay import (
    Replay,
    run_autoscaler,
    run_clairvoyant,
    run_hpa,
    run_planner,
    run_static,
)
from polyserve.autoscale.settings import AutoscaleSettings
from polyserve.autoscale.signals import RouterState, TierState
from polyserve.autoscale.trend import ArrivalTrend, StateReader
from polyserve.autoscale.virtual import VirtualActuator, router_state
from polyserve.policy import make_policy
from polyserve.profile import load_profile
from polyserve.sim.fleet import FleetSim, SimConfig
from polyserve.sim.workload import Arrival
from polyserve.slo import Tier, TierSet

TIERS = TierSet([Tier("fast", 50.0, 1000.0), Tier("slow", 100.0, 1000.0)])
PROF = load_profile("llama-3.1-8b-h100")


def step_load(
    low: float, high: float, t_up: float, t_down: float, t_end: float, seed: int = 1
) -> list[Arrival]:
    """Poisson arrivals at ``low`` req/s, ``high`` from ``t_up`` to ``t_down``, then ``low`` again
    until ``t_end``; short chats in two tiers."""
    rng = random.Random(seed)
    out: list[Arrival] = []
    t = 0.0
    while True:
        t += rng.expovariate(high if t_up <= t < t_down else low)
        if t >= t_end:
            return out
        tier = rng.randrange(2)
        out.append(Arrival(len(out), t, 800, 150, tier, 1000.0, TIERS[tier].tpot_ms))


SETTINGS = AutoscaleSettings(
    startup_s=10.0,
    decision_interval_s=2.0,
    trend_window_s=10.0,
    stale_after_s=4.0,
    drain_after_s=4.0,
    scale_down_cooldown_s=4.0,
)


def test_step_change_scales_up_in_time_then_drains_to_min() -> None:
    arrivals = step_load(low=4.0, high=80.0, t_up=30.0, t_down=70.0, t_end=130.0)
    replay = Replay(PROF, TIERS, arrivals, startup_s=SETTINGS.startup_s)
    res = run_autoscaler(replay, SETTINGS, max_per_tier=20, min_per_tier=1)
    hist = res.history
    before = max(sum(s.replicas) for s in hist if s.time < 30.0)
    peak = max(sum(s.replicas) for s in hist)
    assert peak > before + 2  # it grew with the load
    # time to scale: more servers asked for within two decisions (plus the trend's lag)
    first_up = min(s.time for s in hist if sum(s.replicas) > before)
    assert first_up - 30.0 <= 2 * SETTINGS.decision_interval_s + SETTINGS.trend_window_s / 2
    # ... and ready one start-up time later
    first_ready = min(s.time for s in hist if sum(s.ready) > before)
    assert first_ready - first_up <= SETTINGS.startup_s + SETTINGS.decision_interval_s
    # once the load falls back the idle servers are released down to what the trickle needs
    assert sum(hist[-1].replicas) <= before
    assert res.reasons is not None
    assert (
        res.reasons["fast", Reason.SCALE_UP_PREDICTED.value]
        + res.reasons["fast", Reason.SCALE_UP_PENDING.value]
        >= 1
    )
    assert sum(n for (_, r), n in res.reasons.items() if r.startswith("scale_down")) >= 1
    # attainment once the new servers serve (the start-up gap itself may shed)
    late = [o for o in res.result.outcomes if o.arrival >= first_ready + 5.0]
    assert late and sum(o.attained for o in late) / len(late) >= 0.97
    # cost: cheaper than holding the peak for the whole run
    static = run_static(replay, peak)
    assert res.result.instance_seconds < static.result.instance_seconds


def test_the_fixed_fleet_pays_from_time_zero_and_a_started_server_from_its_request() -> None:
    sim = FleetSim(SimConfig(PROF, TIERS, 0), make_policy("polyserve"))

    class Once:
        interval_s = 5.0
        started = False

        def tick(self, now: float, s: FleetSim) -> None:
            if not self.started:
                act = VirtualActuator(s, startup_s=3.0)
                act.provision("fast", 1)
                act.scale("slow", 1, (), now)  # ready at 3 s
                self.started = True
                assert act.replicas("slow") == 1
                assert [b.ready for b in router_state(s, now).backends] == [True, False]

    sim.scaler = Once()
    arrivals = [
        Arrival(0, 1.0, 100, 10, 1, 1000.0, 100.0),
        Arrival(1, 4.0, 100, 10, 1, 1000.0, 100.0),
    ]
    res = sim.run(arrivals)
    by_id = {o.request_id: o for o in res.outcomes}
    assert by_id["0"].server == "s0"  # promoted to the ready fast server: the slow one starts
    assert by_id["1"].server == "s1"
    assert res.instance_seconds == pytest.approx(2 * res.makespan)


def test_virtual_actuator_releases_named_then_starting_then_least_loaded() -> None:
    sim = FleetSim(SimConfig(PROF, TIERS, 0), make_policy("polyserve"))
    act = VirtualActuator(sim, startup_s=30.0)
    act.provision("fast", 3)
    act.scale("fast", 5, (), 0.0)  # two starting
    assert act.replicas("fast") == 5
    act.scale("fast", 2, ("s1",), 1.0)
    alive = [v.name for v, _, _ in sim.live_servers() if not v.draining]
    assert alive == ["s0", "s2"]  # s1 by name, then the two starting ones
    with pytest.raises(ValueError):
        VirtualActuator(sim, startup_s=-1.0)


def test_trend_rates_resets_and_a_short_history() -> None:
    trend = ArrivalTrend(10.0)
    assert trend.rates() == (0.0, 0.0)
    trend.add(0.0, 0)
    trend.add(5.0, 20)
    assert trend.rates() == (4.0, 4.0)  # too short to show a trend: the mean so far
    for t in range(10, 31, 5):  # 2/s until 20 s, then 6/s
        trend.add(float(t), 2 * t if t <= 20 else 40 + 6 * (t - 20))
    assert trend.rates() == pytest.approx((6.0, 2.0))
    trend.add(35.0, 3)  # the router restarted: its counter began again
    assert trend.rates()[0] > 0


def test_state_reader_turns_counters_into_rates() -> None:
    reader = StateReader(window_s=10.0)

    def state(t: float, total: int) -> RouterState:
        tier = TierState(
            name="fast", pending=2, oldest_wait_s=0.5, arrivals_total=total, shed_total=0
        )
        return RouterState(time=t, tiers=[tier], backends=[])

    reader.read(state(0.0, 0))
    (obs,) = reader.read(state(10.0, 50))
    assert obs.arrival_rate == pytest.approx(5.0) and obs.pending == 2 and obs.observed_at == 10.0


def test_hpa_recommendation_follows_the_kubernetes_rules() -> None:
    b = HPABehavior(min_replicas=1, max_replicas=10)
    assert hpa_recommendation(4, 4 * 0.52, 0.5, b) == 4  # within the 10% tolerance
    assert hpa_recommendation(4, 4 * 0.9, 0.5, b) == 8
    assert hpa_recommendation(2, 100.0, 0.5, b) == 6  # at most +4 (or x2) per sync
    assert hpa_recommendation(4, 0.0, 0.5, b) == 1
    assert hpa_recommendation(8, 100.0, 0.5, b) == 10


def test_pool_observation_sums_the_tiers_in_servers_of_demand() -> None:
    from polyserve.autoscale.pool import POOL, pool_observation
    from polyserve.autoscale.signals import Observation, ServerObservation

    obs = [
        Observation(tier="fast", observed_at=10.0, pending=2, oldest_wait_s=0.3, arrival_rate=20.0),
        Observation(tier="slow", observed_at=9.0, pending=1, oldest_wait_s=0.9, arrival_rate=30.0),
    ]
    srv = [ServerObservation(name="s0", ready=True)]
    p = pool_observation(obs, {"fast": 10.0, "slow": 30.0}, srv)
    assert p.tier == POOL and p.arrival_rate == pytest.approx(3.0)  # 2 + 1 servers of demand
    assert (p.pending, p.oldest_wait_s, p.observed_at, p.servers) == (3, 0.9, 9.0, tuple(srv))


def test_pool_mode_grows_and_shrinks_one_floating_fleet() -> None:
    from polyserve.autoscale.replay import run_autoscaler_pool

    arrivals = step_load(low=4.0, high=80.0, t_up=30.0, t_down=70.0, t_end=130.0)
    replay = Replay(PROF, TIERS, arrivals, startup_s=SETTINGS.startup_s)
    res = run_autoscaler_pool(replay, SETTINGS, max_servers=20, min_servers=1)
    counts = [s.replicas[0] for s in res.history]
    assert max(counts) > counts[0] + 1 and counts[-1] < max(counts)
    assert res.attainment > 0.9


def test_fluid_demand_bins_the_arrivals_by_their_tier_capacity() -> None:
    arrivals = [
        Arrival(0, 1.0, 800, 150, 0, 1000.0, 50.0),
        Arrival(1, 5.0, 800, 150, 1, 1000.0, 100.0),
        Arrival(2, 15.0, 800, 150, 0, 1000.0, 50.0),
    ]
    demand = FluidDemand.of(arrivals, [2.0, 4.0])
    # one request at 2 req/s per server is half a server-second, at 4 req/s a quarter
    assert demand.bins == (0.75, 0.5)
    assert demand.servers(0.0, 10.0) == pytest.approx(0.075)
    assert demand.servers(0.0, 20.0) == pytest.approx(1.25 / 20)
    assert demand.servers(30.0, 10.0) == 0.0  # past the trace
    with pytest.raises(ValueError, match="bin width"):
        FluidDemand.of(arrivals, [2.0, 4.0], bin_s=0.0)


def test_the_clairvoyant_reference_is_sized_before_the_step_and_shrinks_after() -> None:
    arrivals = step_load(low=4.0, high=80.0, t_up=90.0, t_down=150.0, t_end=240.0)
    replay = Replay(PROF, TIERS, arrivals, startup_s=60.0)
    res = run_clairvoyant(replay, margin=1.2)
    low = [sum(s.replicas) for s in res.history if s.time < 30.0]
    high = [sum(s.ready) for s in res.history if 90.0 <= s.time < 100.0]
    after = [sum(s.replicas) for s in res.history if s.time >= 160.0]
    assert high and min(high) > max(low)  # ready when the step arrives: it read the trace ahead
    assert max(after) < min(high)
    assert res.pool and res.knob == "margin 1.2"


def test_planner_predictors() -> None:
    assert predict([], "constant") == 0.0
    assert predict([3.0, 5.0], "constant") == 5.0
    assert predict([1.0, 2.0, 3.0], "linear") == pytest.approx(4.0)  # the trend, one ahead
    assert predict([3.0, 2.0, 1.0], "linear") == pytest.approx(0.0)
    assert predict([3.0, 1.0, 0.0], "linear") == 0.0  # never below zero
    assert predict([7.0], "linear") == 7.0
    assert planned_replicas(2.0, 1.25, 1) == 3 and planned_replicas(0.0, 1.25, 1) == 1
    assert planned_replicas(2.0, 1.0, 0) == 2  # exactly 2 servers of demand: no spare


def test_the_planner_follows_the_last_interval_per_tier_and_in_one_pool() -> None:
    arrivals = step_load(low=4.0, high=80.0, t_up=60.0, t_down=180.0, t_end=300.0)
    replay = Replay(PROF, TIERS, arrivals, startup_s=10.0)
    caps = replay.capacities()
    for pool in (False, True):
        res = run_planner(replay, margin=1.2, interval_s=30.0, pool=pool)
        at = {round(s.time): s for s in res.history}
        assert sum(at[0].replicas) == sum(replay.initial_servers(1.2))  # the first tick: kept
        # 30 s into the step the planner has seen one interval of it and sized for it
        high = [
            sum(1 for a in arrivals if 60 <= a.time < 90 and a.tier == t) / 30.0 for t in range(2)
        ]
        want = (
            [planned_replicas(r / c, 1.2, 1) for r, c in zip(high, caps, strict=True)]
            if not pool
            else [planned_replicas(sum(r / c for r, c in zip(high, caps, strict=True)), 1.2, 1)]
        )
        assert list(at[90].replicas) == want
        assert sum(at[90].replicas) > sum(at[30].replicas)
        assert sum(res.history[-1].replicas) < sum(at[90].replicas)  # and back down after it
        assert res.pool == pool and "margin 1.2, constant" in res.knob
    with pytest.raises(ValueError, match="margin"):
        run_planner(replay, margin=0.0)


def test_hpa_on_running_requests_scales_on_the_batches() -> None:
    arrivals = step_load(low=4.0, high=80.0, t_up=30.0, t_down=120.0, t_end=180.0)
    replay = Replay(PROF, TIERS, arrivals, startup_s=10.0)
    res = run_hpa(replay, "running", 8.0, per_tier=False)
    assert res.name == "HPA running requests (least-outstanding)"
    assert max(sum(s.replicas) for s in res.history) > sum(res.history[0].replicas)

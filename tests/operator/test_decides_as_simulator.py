"""The operator decides as the simulator does: one multi-tier step per model, with borrowing.

The same two router snapshots go to the operator's autoscaler (one pass per SLOTier, in any order)
and to the simulator's scaler (``SimAutoscaler`` over a simulated fleet of the same counts); both
ask for the same replicas, with the same reasons and drain order. The scenario is one where the
cross-tier step matters: chat's own servers would run too hot after a release, but voice's spare
capacity covers the difference (lazy promotion), so chat releases a server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from polyserve.autoscale.capacity import typical_capacity_rps
from polyserve.autoscale.decide import Autoscaler, Reason, TierTarget, decide
from polyserve.autoscale.settings import AutoscaleSettings
from polyserve.autoscale.signals import BackendState, Observation, RouterState, TierState
from polyserve.autoscale.trend import StateReader
from polyserve.autoscale.virtual import SimAutoscaler, VirtualActuator
from polyserve.operator.autoscaling import RouterAutoscaler
from polyserve.operator.views import ScalingDecision, TierObservation
from polyserve.policy import make_policy
from polyserve.profile import load_profile
from polyserve.sim.fleet import FleetSim, SimConfig
from polyserve.slo import Tier, TierSet
from tests.operator.test_reconcile import spec

PROFILE = load_profile("llama-3.1-8b-h100")
TPOT = {"voice": 20.0, "chat": 50.0, "batch": 100.0}
TTFT = {"voice": 300.0, "chat": 1000.0, "batch": 5000.0}
SERVERS = 2  # per tier
SETTINGS = AutoscaleSettings()  # what an SLOTier with `autoscaling: {enabled: true}` gets
T0 = 1_000_000.0  # the first snapshot is stale (every tier holds), the second one decides
T1 = T0 + SETTINGS.decision_interval_s
SNAPSHOT_0 = T0 - SETTINGS.stale_after_s - 1


def capacity(tier: str) -> float:
    return typical_capacity_rps(PROFILE, TPOT[tier])


def rates() -> dict[str, float]:
    """Requests/s per tier (in units of capacity x headroom x consolidation utilisation)."""
    u, h = SETTINGS.consolidation_utilization, SETTINGS.headroom
    return {
        "voice": 1.2 * u * capacity("voice") / h,  # needs both its servers, spare 0.8 of one
        "chat": (u + 0.4 * u * capacity("voice") / capacity("chat")) * capacity("chat") / h,
        "batch": 1.5 * u * capacity("batch") / h,  # needs both its servers
    }


def snapshot(t: float, counts: dict[str, int]) -> RouterState:
    backends = []
    for tier in TPOT:
        for i in range(SERVERS):
            idle = tier == "chat" and i == 1  # chat's last server is drained by the gradient
            backends.append(
                BackendState(
                    name=f"{tier}-{i}",
                    tier=tier,
                    ready=True,
                    draining=False,
                    requests=0 if idle else 6,
                    idle_s=2 * SETTINGS.drain_after_s if idle else 0.0,
                )
            )
    tiers = [
        TierState(name=n, pending=0, oldest_wait_s=0.0, arrivals_total=c, shed_total=0)
        for n, c in counts.items()
    ]
    return RouterState(time=t, tiers=tiers, backends=backends)


def snapshots() -> dict[float, RouterState]:
    span = T1 - SNAPSHOT_0
    later = {n: round(r * span) + 1000 for n, r in rates().items()}
    return {
        T0: snapshot(SNAPSHOT_0, dict.fromkeys(TPOT, 1000)),
        T1: snapshot(T1, later),
    }


class AtClock:
    """The router as the operator reads it: the snapshot of the (test's) current time."""

    def __init__(self, states: dict[float, RouterState], clock: list[float]) -> None:
        self.states, self.clock = states, clock
        self.reader = StateReader(SETTINGS.trend_window_s)

    async def observe(self) -> list[Observation]:
        return self.reader.read(self.states[self.clock[0]])


def tier_observation(name: str, now: float) -> TierObservation:
    s: Any = spec(
        tpotMs=TPOT[name],
        ttftMs=TTFT[name],
        replicas={"min": 1, "max": 8, "fixed": None},
        autoscaling={"enabled": True},
    )
    return TierObservation(
        namespace="ns",
        name=name,
        spec=s,
        profile=PROFILE,
        replicas=SERVERS,
        ready_replicas=SERVERS,
        desired=SERVERS,
        pods=(),
        last_scaling=None,
        now=now,
    )


def operator_decisions(order: list[str], gone: str | None = None) -> dict[str, ScalingDecision]:
    """Two rounds of passes, one per tier in ``order``; ``gone`` is deleted between them."""
    clock = [T0]
    states = snapshots()
    scaler = RouterAutoscaler(
        lambda w: AtClock(states, clock), refresh_s=0.0, clock=lambda: clock[0]
    )
    got: dict[str, ScalingDecision] = {}
    for now in (T0, T1):
        clock[0] = now
        if now == T1 and gone is not None:
            scaler.forget("ns", gone)
            order = [n for n in order if n != gone]
        for name in order:
            d = asyncio.run(scaler.decide(tier_observation(name, now)))
            assert d is not None
            got[name] = d
    return got


def simulator_scaler() -> SimAutoscaler:
    tiers = TierSet(Tier(n, TPOT[n], TTFT[n]) for n in TPOT)
    sim = FleetSim(SimConfig(PROFILE, tiers, 0), make_policy("polyserve"))
    actuator = VirtualActuator(sim, SETTINGS.startup_s)
    for t in tiers:
        actuator.provision(t.name, SERVERS)
    targets = [TierTarget(t.name, 1, 8, capacity(t.name)) for t in tiers]
    core = Autoscaler(targets, default_settings=SETTINGS)
    return SimAutoscaler(core, actuator, SETTINGS.decision_interval_s, SETTINGS.trend_window_s)


def test_operator_and_simulator_ask_for_the_same_replicas_for_the_same_reasons() -> None:
    states = snapshots()
    sim = simulator_scaler()
    first = sim.decide(T0, states[T0])
    assert {d.reason for d in first} == {Reason.HOLD_STALE_METRICS}
    expected = {d.tier: (d.desired, d.reason, d.drain) for d in sim.decide(T1, states[T1])}

    for order in (["batch", "chat", "voice"], ["voice", "chat", "batch"]):
        got = operator_decisions(order)
        assert {n: (d.replicas, d.reason, d.drain_first) for n, d in got.items()} == expected
    # the scenario is one where the step across tiers decides: chat borrows voice's spare
    assert expected["chat"] == (1, Reason.SCALE_DOWN_DRAINED, ("chat-1",))
    assert expected["voice"][:2] == (2, Reason.HOLD_CONSOLIDATION)


def test_chat_deciding_alone_would_keep_the_server_it_releases() -> None:
    states = snapshots()
    reader = StateReader(SETTINGS.trend_window_s)
    reader.read(states[T0])
    chat = next(o for o in reader.read(states[T1]) if o.tier == "chat")
    alone = decide(TierTarget("chat", 1, 8, capacity("chat")), chat, SERVERS, None, SETTINGS, T1)
    assert (alone.desired, alone.reason) == (SERVERS, Reason.HOLD_CONSOLIDATION)
    # and so it does on the operator once voice's SLOTier is deleted: nothing left to borrow
    without_voice = operator_decisions(["voice", "chat", "batch"], gone="voice")["chat"]
    assert (without_voice.replicas, without_voice.reason) == (SERVERS, Reason.HOLD_CONSOLIDATION)

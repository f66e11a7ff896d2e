"""The operator's autoscaler: the decision core over the router's state, one decision per pass."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from polyserve.autoscale.decide import Reason
from polyserve.autoscale.signals import BackendState, Observation, RouterState, TierState
from polyserve.autoscale.sources import SignalError
from polyserve.autoscale.trend import StateReader
from polyserve.operator.autoscaling import RouterAutoscaler
from polyserve.operator.views import TierObservation
from polyserve.profile import load_profile
from tests.operator.test_reconcile import spec


def observation(desired: int, interval_s: float = 10.0) -> TierObservation:
    s = spec(
        replicas={"min": 1, "max": 4, "fixed": None},
        autoscaling={"enabled": True, "decisionIntervalS": interval_s},
    )
    return TierObservation(
        namespace="ns",
        name="chat",
        spec=s,
        profile=load_profile("llama-3.1-8b-h100"),
        replicas=desired,
        ready_replicas=desired,
        desired=desired,
        pods=(),
        last_scaling=None,
        now=time.time(),
    )


def state(pending: int, oldest: float) -> RouterState:
    return RouterState(
        time=time.time(),
        tiers=[
            TierState(
                name="chat", pending=pending, oldest_wait_s=oldest, arrivals_total=100, shed_total=0
            )
        ],
        backends=[
            BackendState(
                name="chat-0", tier="chat", ready=True, draining=False, requests=8, idle_s=0.0
            )
        ],
    )


def test_pending_requests_at_the_router_scale_the_tier_up() -> None:
    scaler = RouterAutoscaler(lambda w: Fixed(state(pending=12, oldest=5.0)))
    d = asyncio.run(scaler.decide(observation(1)))
    assert d is not None and d.replicas > 1 and d.reason is Reason.SCALE_UP_PENDING


def test_an_unreachable_router_holds_the_tier() -> None:
    scaler = RouterAutoscaler(lambda w: Fixed(None))
    d = asyncio.run(scaler.decide(observation(2)))
    assert d is not None and d.replicas == 2 and d.reason is Reason.HOLD_STALE_METRICS


class Fixed:
    """A signal source that always reads the same router state (None: the router is down)."""

    def __init__(self, state: RouterState | None) -> None:
        self.state = state
        self.reader = StateReader(60.0)

    async def observe(self) -> list[Observation]:
        if self.state is None:
            raise SignalError("connection refused")
        return self.reader.read(self.state)


class Snapshots:
    """A signal source that reads the given router states one after the other."""

    def __init__(self, *states: RouterState) -> None:
        self.states = list(states)
        self.reader = StateReader(60.0)

    async def observe(self) -> list[Observation]:
        return self.reader.read(self.states.pop(0))


def counters(t: float, measured: int, attained: int, shed: int) -> RouterState:
    tier = TierState(
        name="chat",
        pending=0,
        oldest_wait_s=0.0,
        arrivals_total=measured + shed,
        shed_total=shed,
        measured_total=measured,
        attained_total=attained,
    )
    return RouterState(time=t, tiers=[tier], backends=[])


def test_the_decision_carries_the_routers_attainment_over_the_window() -> None:
    """status.attainment: attained over judged + shed requests, from the counters' increase."""
    now = time.time()
    source = Snapshots(counters(now - 10, 100, 50, 0), counters(now, 130, 77, 2))
    scaler = RouterAutoscaler(lambda w: source, refresh_s=0.0)
    first = asyncio.run(scaler.decide(observation(1, interval_s=1e-6)))
    assert first is not None and first.attainment is None  # one sample: no window yet
    second = asyncio.run(scaler.decide(observation(1, interval_s=1e-6)))
    assert second is not None and second.attainment is not None
    assert abs(second.attainment - 27 / 32) < 1e-9


def test_no_judged_request_is_no_attainment() -> None:
    from polyserve.autoscale.signals import window_attainment

    assert window_attainment(0.0, 0.0, 0.0) is None
    assert window_attainment(float("nan"), 1.0) is None
    assert window_attainment(0.0, 0.0, 2.0) == 0.0  # everything shed
    assert window_attainment(4.0, 4.0) == 1.0


def test_each_tier_reads_its_rates_over_its_own_trend_window() -> None:
    asked: list[float] = []

    def sources(window_s: float) -> Fixed:
        asked.append(window_s)
        return Fixed(state(pending=0, oldest=0.0))

    scaler = RouterAutoscaler(sources, refresh_s=60.0)
    short = observation(1)
    short = replace(
        short,
        name="chat-short",  # another tier (one tier decides once per interval)
        spec=short.spec.model_copy(
            update={"autoscaling": short.spec.autoscaling.model_copy(update={"trend_window_s": 20})}
        ),
    )
    for obs in (observation(1), short, observation(1), short):
        asyncio.run(scaler.decide(obs))
    assert asked == [observation(1).spec.autoscaling.trend_window_s, 20.0]  # one source each


def test_close_releases_the_router_sources_sessions() -> None:
    from polyserve.operator.autoscaling import router_sources

    async def run() -> list[bool]:
        a = RouterAutoscaler(router_sources("http://127.0.0.1:9"), refresh_s=0.0)
        await a._refresh(30.0)  # nothing listens there: no signals, but a session is open
        await a._refresh(60.0)
        sessions = [s._source.session for s in a._sources.values()]  # type: ignore[attr-defined]
        assert not any(s.closed for s in sessions)
        await a.close()
        return [s.closed for s in sessions]

    assert asyncio.run(run()) == [True, True]


def test_a_tier_decides_once_per_decision_interval() -> None:
    """Operator passes come at every pod event; between decisions the last one stands, unless the
    count is not what it asked for."""
    source = Snapshots(state(pending=12, oldest=5.0), state(pending=0, oldest=0.0))
    scaler = RouterAutoscaler(lambda w: source, refresh_s=0.0)
    up = asyncio.run(scaler.decide(observation(1, interval_s=25.0)))
    assert up is not None and up.reason is Reason.SCALE_UP_PENDING
    again = asyncio.run(scaler.decide(observation(up.replicas, interval_s=25.0)))
    assert again is up  # within the interval: the same decision, the router not even asked
    changed = asyncio.run(scaler.decide(observation(4, interval_s=25.0)))
    assert (
        changed is not None and changed is not up and changed.reason is Reason.HOLD_EXTERNAL_CHANGE
    )

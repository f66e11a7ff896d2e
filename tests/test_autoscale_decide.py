"""The decision core: one test per reason, then the invariants as properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from polyserve.autoscale.decide import (
    Autoscaler,
    Decision,
    Reason,
    TierMemory,
    TierTarget,
    decide,
    predicted_rate,
)
from polyserve.autoscale.settings import AutoscaleSettings
from polyserve.autoscale.signals import Observation, ServerObservation

NOW = 1000.0
CFG = AutoscaleSettings(scale_down_cooldown_s=60, drain_after_s=30, startup_s=60)
TARGET = TierTarget("chat", min_replicas=1, max_replicas=10, capacity_rps=10.0)


def servers(*loads: int, idle: float = 0.0, ready: bool = True) -> tuple[ServerObservation, ...]:
    return tuple(
        ServerObservation(name=f"s{i}", ready=ready, requests=n, idle_s=idle if n == 0 else 0.0)
        for i, n in enumerate(loads)
    )


def obs(**kw: object) -> Observation:
    base: dict[str, object] = {"tier": "chat", "observed_at": NOW}
    base.update(kw)
    return Observation.model_validate(base)


def run(
    o: Observation | None,
    replicas: int,
    memory: TierMemory | None = None,
    cfg: AutoscaleSettings = CFG,
    target: TierTarget = TARGET,
) -> Decision:
    return decide(target, o, replicas, memory, cfg, NOW)


# ------------------------------------------------------------------ one test per reason


def test_scale_up_pending_adds_a_server() -> None:
    d = run(obs(pending=12, oldest_wait_s=0.5, arrival_rate=5, servers=servers(4, 4)), 2)
    assert d.reason is Reason.SCALE_UP_PENDING
    assert d.desired == 3


def test_scale_up_predicted_from_a_rising_trend() -> None:
    # 20 req/s now, 10 a window ago: in a start-up time the tier needs more than its 3 servers
    o = obs(arrival_rate=20, arrival_rate_prev=10, servers=servers(5, 5, 5))
    d = run(o, 3)
    assert d.reason is Reason.SCALE_UP_PREDICTED
    expected = math.ceil(predicted_rate(o, CFG) * CFG.headroom / TARGET.capacity_rps)
    assert d.desired == expected > 3
    assert predicted_rate(o, CFG) > 20


def test_the_reason_names_the_target_that_sets_the_step() -> None:
    # requests wait and 40 req/s x 1.2 needs 5 servers: the demand sets the step
    o = obs(pending=3, oldest_wait_s=1.0, arrival_rate=40, arrival_rate_prev=40)
    assert run(o, 3).reason is Reason.SCALE_UP_PREDICTED
    # capped at one more server (max 4), the pending requests alone explain it
    capped = run(o, 3, target=TierTarget("chat", 1, 4, 10.0))
    assert capped.reason is Reason.SCALE_UP_PENDING and capped.desired == 4


def test_scale_ahead_off_ignores_the_trend() -> None:
    cfg = CFG.model_copy(update={"scale_ahead": False})
    d = run(obs(arrival_rate=20, arrival_rate_prev=10, servers=servers(5, 5, 5)), 3, cfg=cfg)
    # 20 req/s x 1.2 = 2.4 servers: the three stay (with the trend it would be more)
    assert d.reason is Reason.HOLD_CONSOLIDATION and d.desired == 3


def test_scale_ahead_off_still_follows_the_current_rate() -> None:
    cfg = CFG.model_copy(update={"scale_ahead": False})
    # 40 req/s x 1.2 = 4.8 servers now (flat trend): up to 5 with nothing pending
    d = run(obs(arrival_rate=40, arrival_rate_prev=40, servers=servers(5, 5, 5)), 3, cfg=cfg)
    assert d.reason is Reason.SCALE_UP_PREDICTED and d.desired == 5


def test_scale_up_to_min_and_down_to_max() -> None:
    target = TierTarget("chat", 2, 3, 10.0)
    assert run(obs(servers=servers()), 0, target=target).reason is Reason.SCALE_UP_MIN_REPLICAS
    d = run(obs(servers=servers(3, 0, 1, 0, idle=5)), 4, target=target)
    assert d.reason is Reason.SCALE_DOWN_MAX_REPLICAS and d.desired == 3
    assert d.drain == ("s3",)  # least loaded, last name among equals


def test_scale_down_drained_releases_the_longest_idle_server() -> None:
    srv = (
        ServerObservation(name="s0", ready=True, requests=3),
        ServerObservation(name="s1", ready=True, requests=0, idle_s=40),
        ServerObservation(name="s2", ready=True, requests=0, idle_s=90),
    )
    d = run(obs(arrival_rate=5, arrival_rate_prev=5, servers=srv), 3)
    assert d.reason is Reason.SCALE_DOWN_DRAINED
    assert d.desired == 2 and d.drain == ("s2",)


def test_scale_down_consolidated_drains_the_least_loaded_busy_server() -> None:
    # 5 req/s x 1.2 headroom = 0.6 servers of demand, no server idle: the least loaded goes
    o = obs(arrival_rate=5, arrival_rate_prev=5, servers=servers(6, 1, 4))
    d = run(o, 3)
    assert d.reason is Reason.SCALE_DOWN_CONSOLIDATED
    assert d.desired == 2 and d.drain == ("s1",)
    off = run(o, 3, cfg=CFG.model_copy(update={"consolidate_busy": False}))
    assert off.reason is Reason.HOLD_STEADY and off.desired == 3


def test_scale_down_consolidated_releases_up_to_the_step_and_keeps_each_tier() -> None:
    o = obs(
        arrival_rate=5,
        arrival_rate_prev=5,
        servers=(
            ServerObservation(name="a0", tier="t20", ready=True, requests=1),
            ServerObservation(name="b0", tier="t50", ready=True, requests=2),
            ServerObservation(name="b1", tier="t50", ready=True, requests=3),
            ServerObservation(name="b2", tier="t50", ready=True, requests=9),
        ),
    )
    cfg = CFG.model_copy(update={"max_scale_down_step": 3})
    d = run(o, 4, cfg=cfg)
    # a0 is t20's only server; t50 keeps its busiest: b0 and b1 go, least loaded first
    assert d.reason is Reason.SCALE_DOWN_CONSOLIDATED
    assert d.drain == ("b0", "b1") and d.desired == 2
    assert run(o, 4).drain == ("b0",)  # the default step is one


def test_no_traffic_scales_to_min_zero_at_once() -> None:
    target = TierTarget("chat", 0, 10, 10.0)
    d = run(obs(servers=servers(0, 0, 0, idle=100)), 3, target=target)
    assert d.reason is Reason.SCALE_DOWN_NO_TRAFFIC
    assert d.desired == 0 and len(d.drain) == 3


def test_hold_min_replicas() -> None:
    d = run(obs(servers=servers(0, idle=100)), 1)
    assert d.reason is Reason.HOLD_MIN_REPLICAS and d.desired == 1


def test_hold_max_replicas() -> None:
    target = TierTarget("chat", 1, 2, 10.0)
    d = run(obs(pending=5, oldest_wait_s=1, servers=servers(4, 4)), 2, target=target)
    assert d.reason is Reason.HOLD_MAX_REPLICAS and d.desired == 2


def test_hold_cooldown_after_a_recent_change() -> None:
    mem = TierMemory(desired=3, last_change_at=NOW - 10)
    d = run(obs(arrival_rate=1, arrival_rate_prev=1, servers=servers(1, 0, 0, idle=100)), 3, mem)
    assert d.reason is Reason.HOLD_COOLDOWN and d.desired == 3


def test_hold_consolidation_when_the_rest_would_be_too_full() -> None:
    # 25 req/s x 1.2 headroom = 3 servers of demand; 3 servers at 80% carry only 2.4
    o = obs(arrival_rate=25, arrival_rate_prev=25, servers=servers(9, 9, 9, 0, idle=100))
    d = run(o, 4)
    assert d.reason is Reason.HOLD_CONSOLIDATION and d.desired == 4


def test_hold_pending_blocks_a_drain() -> None:
    # one request waits, not yet long enough to grow the tier, but long enough to keep it
    cfg = CFG.model_copy(update={"scale_up_wait_s": 5.0})
    o = obs(pending=1, oldest_wait_s=1.0, servers=servers(3, 0, idle=100))
    d = run(o, 2, cfg=cfg)
    assert d.reason is Reason.HOLD_PENDING and d.desired == 2


def test_shed_requests_count_as_waiting() -> None:
    o = obs(shed_rate=0.1, servers=servers(3, 0, idle=100))
    assert run(o, 2).reason is Reason.SCALE_UP_PENDING
    # a shed below the tolerance is noise: neither growth nor a block on the release
    quiet = obs(
        shed_rate=0.01, arrival_rate=5, arrival_rate_prev=5, servers=servers(3, 0, idle=100)
    )
    assert run(quiet, 2).reason is Reason.SCALE_DOWN_DRAINED
    # a server is already starting: it will take them
    d = run(o, 3, memory=TierMemory(3, NOW - 5, NOW - 5))
    assert d.reason is Reason.HOLD_STARTING and d.desired == 3


def test_hold_pending_when_the_queue_waits_for_starting_servers() -> None:
    # one server is starting (3 replicas, 2 ready): it will take the queue; no drain meanwhile
    mem = TierMemory(desired=3, last_up_at=NOW - 200, last_change_at=NOW - 200)
    cfg = CFG.model_copy(update={"startup_s": 300.0})
    d = run(obs(pending=2, oldest_wait_s=1, servers=servers(0, 2, idle=100)), 3, mem, cfg)
    assert d.reason is Reason.HOLD_STARTING
    d = run(obs(pending=2, oldest_wait_s=1, servers=servers(0, 2, 2, idle=100)), 3, mem, cfg)
    assert d.reason is Reason.SCALE_UP_PENDING  # nothing starting: the queue needs a server


def test_hold_stale_missing_and_invalid_metrics() -> None:
    assert run(None, 3).reason is Reason.HOLD_STALE_METRICS
    old = obs(observed_at=NOW - CFG.stale_after_s - 1, pending=50, oldest_wait_s=9)
    assert run(old, 3).reason is Reason.HOLD_STALE_METRICS
    for bad in (
        {"arrival_rate": math.nan},
        {"oldest_wait_s": -1.0},
        {"shed_rate": math.inf},
        {"servers": (ServerObservation(name="x", ready=True, idle_s=math.nan),)},
    ):
        d = run(obs(pending=50, **bad), 3)
        assert d.reason is Reason.HOLD_INVALID_METRICS and d.desired == 3, bad
    zero_cap = TierTarget("chat", 1, 10, 0.0)
    assert run(obs(), 3, target=zero_cap).reason is Reason.HOLD_INVALID_METRICS


def test_external_change_is_adopted_not_fought() -> None:
    mem = TierMemory(desired=3, last_change_at=NOW - 1000)
    d = run(obs(servers=servers(0, 0, 0, 0, 0, idle=500)), 5, mem)
    assert d.reason is Reason.HOLD_EXTERNAL_CHANGE and d.desired == 5
    assert d.memory.desired == 5 and d.memory.last_change_at == NOW
    # the next decision treats 5 as its own, and the change restarted the scale-down cooldown
    later = decide(TARGET, obs(servers=servers(0, 0, 0, 0, 0, idle=500)), 5, d.memory, CFG, NOW + 1)
    assert later.reason is Reason.HOLD_COOLDOWN


def test_disabled_holds_and_forgets() -> None:
    cfg = CFG.model_copy(update={"enabled": False})
    d = run(obs(pending=100, oldest_wait_s=5), 2, TierMemory(desired=4), cfg)
    assert d.reason is Reason.HOLD_DISABLED and d.desired == 2 and d.memory.desired is None


def test_autoscaler_keeps_memory_per_tier() -> None:
    a = Autoscaler([TARGET, TierTarget("batch", 0, 4, 20.0)])
    first = a.step(NOW, {"chat": obs(pending=4, oldest_wait_s=1)}, {"chat": 1, "batch": 0})
    assert [d.reason for d in first] == [Reason.SCALE_UP_PENDING, Reason.HOLD_STALE_METRICS]
    assert a.memory["chat"].desired == first[0].desired


# ------------------------------------------------------------------ settings


def test_settings_refuse_bad_values_with_clear_messages() -> None:
    with pytest.raises(ValidationError, match="staleAfterS"):
        AutoscaleSettings(stale_after_s=5, decision_interval_s=10)
    with pytest.raises(ValidationError, match="scaleDownCooldownS"):
        AutoscaleSettings(scale_up_cooldown_s=100, scale_down_cooldown_s=10)
    with pytest.raises(ValidationError, match="trendWindowS"):
        AutoscaleSettings(trend_window_s=15, decision_interval_s=10)
    with pytest.raises(ValidationError, match="extra"):
        AutoscaleSettings.model_validate({"drainAfter": 3})
    with pytest.raises(ValidationError):
        AutoscaleSettings(headroom=0.5)
    with pytest.raises(ValidationError):
        AutoscaleSettings(startup_s=math.nan)
    s = AutoscaleSettings.model_validate({"drainAfterS": 5, "scaleAhead": False})
    assert s.drain_after_s == 5 and not s.scale_ahead
    schema = AutoscaleSettings.model_json_schema(by_alias=True)
    assert schema["additionalProperties"] is False
    assert all("description" in p for p in schema["properties"].values())


# ------------------------------------------------------------------ invariants


finite = st.floats(min_value=0, max_value=500, allow_nan=False)
server_st = st.builds(
    ServerObservation,
    name=st.sampled_from([f"s{i}" for i in range(12)]),
    ready=st.booleans(),
    draining=st.booleans(),
    requests=st.integers(0, 50),
    idle_s=st.one_of(finite, st.just(math.nan), st.just(-1.0)),
)
obs_st = st.builds(
    Observation,
    tier=st.just("chat"),
    observed_at=st.one_of(st.just(NOW), st.floats(NOW - 100, NOW + 5), st.just(math.nan)),
    pending=st.integers(0, 100),
    oldest_wait_s=st.one_of(finite, st.just(math.nan)),
    arrival_rate=st.one_of(finite, st.just(math.nan), st.just(-1.0)),
    arrival_rate_prev=finite,
    shed_rate=st.one_of(st.just(0.0), finite),
    servers=st.lists(server_st, max_size=12, unique_by=lambda s: s.name).map(tuple),
)
target_st = st.builds(
    lambda lo, span, cap: TierTarget("chat", lo, lo + span, cap),
    st.integers(0, 5),
    st.integers(0, 10),
    st.one_of(st.floats(0.1, 50), st.just(0.0)),
)
settings_st = st.builds(
    AutoscaleSettings,
    drain_after_s=finite,
    scale_ahead=st.booleans(),
    max_scale_down_step=st.integers(1, 5),
    max_scale_up_step=st.integers(1, 5),
    headroom=st.floats(1.0, 2.0),
)
memory_st = st.builds(
    TierMemory,
    desired=st.one_of(st.none(), st.integers(0, 20)),
    last_up_at=st.floats(NOW - 500, NOW),
    last_change_at=st.floats(NOW - 500, NOW),
)


@settings(max_examples=300, deadline=None)
@given(target_st, st.one_of(st.none(), obs_st), st.integers(0, 20), memory_st, settings_st)
def test_invariants(
    target: TierTarget,
    o: Observation | None,
    replicas: int,
    mem: TierMemory,
    cfg: AutoscaleSettings,
) -> None:
    d = decide(target, o, replicas, mem, cfg, NOW)
    # never outside the bounds
    assert target.min_replicas <= d.desired <= target.max_replicas
    assert d.memory.desired == (d.desired if cfg.enabled else None)
    if replicas > target.max_replicas:
        return  # the bound is brought back at once, whatever waits
    # every drain names a server of the tier, and drains match the drop
    if d.reason in (
        Reason.SCALE_DOWN_DRAINED,
        Reason.SCALE_DOWN_NO_TRAFFIC,
        Reason.SCALE_DOWN_CONSOLIDATED,
    ):
        assert len(d.drain) == replicas - d.desired > 0
    if d.desired < replicas:
        assert o is not None
        # never scale down a tier with pending requests
        assert o.pending == 0 and o.shed_rate <= cfg.shed_tolerance * o.arrival_rate
        by_name = {s.name: s for s in o.servers}
        if d.reason is Reason.SCALE_DOWN_CONSOLIDATED:
            # servers with requests only when none is idle: the least loaded, up to the step,
            # and only if the rest carry the demand (each is released once its requests are done)
            ready = [s for s in o.servers if s.ready and not s.draining]
            busy = [s for s in ready if s.requests > 0]
            drained = [by_name[n] for n in d.drain]
            assert 1 <= len(drained) <= cfg.max_scale_down_step
            assert all(s in busy for s in drained)
            kept = [s for s in ready if s not in drained]
            for tier in {s.tier for s in drained}:
                assert any(s.tier == tier for s in kept)  # a tier's last server stays
            # least loaded first: a busier one went only where a lighter one had to stay
            for s in drained:
                for x in busy:
                    if x not in drained and x.requests < s.requests:
                        assert not any(k.tier == x.tier and k is not x for k in kept)
            assert d.demand_servers <= d.desired * cfg.consolidation_utilization
        elif replicas <= target.max_replicas:
            # an idle drain never names a server with requests
            assert all(by_name[n].requests == 0 for n in d.drain)
    # stale or unusable metrics always hold (inside the bounds)
    stale = o is None or not (abs(NOW - o.observed_at) <= cfg.stale_after_s)
    if (stale or d.reason is Reason.HOLD_INVALID_METRICS) and replicas >= target.min_replicas:
        assert d.desired == replicas


@settings(max_examples=150, deadline=None)
@given(target_st, obs_st, st.integers(0, 20), settings_st)
def test_a_constant_signal_never_flaps(
    target: TierTarget, o: Observation, replicas: int, cfg: AutoscaleSettings
) -> None:
    """Replaying one signal for many intervals: the count moves one way only, then settles."""
    mem: TierMemory | None = None
    counts = [replicas]
    now = NOW
    for _ in range(40):
        now += cfg.decision_interval_s
        d = decide(target, o.model_copy(update={"observed_at": now}), counts[-1], mem, cfg, now)
        mem = d.memory
        counts.append(d.desired)
    ups = any(b > a for a, b in itertools.pairwise(counts[1:]))
    downs = any(b < a for a, b in itertools.pairwise(counts[1:]))
    assert not (ups and downs), counts

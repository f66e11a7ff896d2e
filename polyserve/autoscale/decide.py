"""The per-tier scaling decision (pure: no I/O, no clock, deterministic).

One call decides one tier: given its signals (:class:`~polyserve.autoscale.signals.Observation`),
the replica count the actuator holds now, the tier's bounds and per-server capacity, and what this
autoscaler decided last time (:class:`TierMemory`), it returns the desired replica count, the
servers to drain first, and a machine-readable :class:`Reason`. The rules, in order:

1. **disabled**: hold, whatever the signals say;
2. **bounds**: a count below ``min`` or above ``max`` is brought inside at once (the bounds belong to
   the SLOTier, and hold with or without signals);
3. **someone else changed the count** (it differs from what this autoscaler last asked for): adopt
   it and hold; the change restarts the scale-down cooldown (reconcile, never fight);
4. **signals missing, stale or not numbers**: hold;
5. **scale up** to the larger of two targets:

   - *pending*: requests of the tier wait (the oldest at least ``scale_up_wait_s``) or were shed
     in the last window (more than ``shed_tolerance`` of its arrivals), so there is nowhere to put
     them: add a server, unless servers already starting will take them (they are given
     ``startup_s`` + the up cooldown); the size of a surge is the demand target's business;
   - *demand*: the arrival rate times ``headroom``, divided by the profile's per-server capacity
     at the tier's TPOT; with ``scale_ahead`` the rate is first extrapolated one start-up time
     (plus a decision interval and half a trend window) ahead along its trend, since the servers
     must be asked for now to be ready then.

6. **scale down**: a server that has held no request for ``drain_after_s`` is a drain candidate
   (the load gradient empties the last servers of a tier); it is released only when nothing waits,
   the scale-down cooldown is over, the count stays at or above ``min``, and the remaining servers
   carry the demand at no more than ``consolidation_utilization`` of their capacity. Longest idle
   first; ``max_scale_down_step`` at a time, except with no traffic at all (every idle server goes).
   With ``consolidate_busy``, when no server is idle the least loaded ones are the candidates
   (each tier keeps one), under the same conditions (``scale_down_consolidated``): on a bursty
   trace the gradient rarely leaves a server idle for ``drain_after_s``, because each burst spills
   onto the last servers. A drained server takes no new requests and every actuator releases it
   only once its requests are done (the simulator and the local fleet when it is empty, the
   operator when its pod has no streams), so nothing is cut.

Lazy promotion: a looser tier's requests may run on a tighter tier's servers when their own are
full. ``borrowable_rps`` is the spare capacity (req/s at ``consolidation_utilization``) that the
tighter tiers leave after their own demand; a tier's demand is first covered by it, and the
decision passes what is left, plus its own spare, on in ``spare_rps`` (:class:`Autoscaler` walks
the tiers tightest first). Small tiers then do not each round up to whole servers.

Hysteresis: the up target is ``ceil(demand)`` servers, while a release needs ``demand <= (n - k)
x utilization``; since utilization <= 1 the count after a release is still >= the up target, so a
constant signal never moves the count up after it moved down (or down after up).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from polyserve.autoscale.settings import AutoscaleSettings
from polyserve.autoscale.signals import Observation, ServerObservation

#: The predicted rate is never extrapolated beyond this multiple of the current rate.
MAX_EXTRAPOLATION = 3.0


class Reason(StrEnum):
    """Why a tier's count is what it is after a decision (exported as a metric label)."""

    SCALE_UP_PENDING = "scale_up_pending"
    SCALE_UP_PREDICTED = "scale_up_predicted"
    SCALE_UP_MIN_REPLICAS = "scale_up_min_replicas"
    SCALE_DOWN_DRAINED = "scale_down_drained"
    SCALE_DOWN_CONSOLIDATED = "scale_down_consolidated"
    SCALE_DOWN_NO_TRAFFIC = "scale_down_no_traffic"
    SCALE_DOWN_MAX_REPLICAS = "scale_down_max_replicas"
    HOLD_STEADY = "hold_steady"
    HOLD_STARTING = "hold_starting"
    HOLD_PENDING = "hold_pending"
    HOLD_COOLDOWN = "hold_cooldown"
    HOLD_MIN_REPLICAS = "hold_min_replicas"
    HOLD_MAX_REPLICAS = "hold_max_replicas"
    HOLD_CONSOLIDATION = "hold_consolidation"
    HOLD_STALE_METRICS = "hold_stale_metrics"
    HOLD_INVALID_METRICS = "hold_invalid_metrics"
    HOLD_EXTERNAL_CHANGE = "hold_external_change"
    HOLD_DISABLED = "hold_disabled"

    @property
    def camel(self) -> str:
        """As Kubernetes writes reasons (status.lastScaling, Events): ``ScaleUpPending``."""
        return "".join(word.capitalize() for word in self.value.split("_"))


@dataclass(frozen=True, slots=True)
class TierTarget:
    """A tier's fixed inputs: its replica range and one server's capacity at its TPOT (req/s)."""

    name: str
    min_replicas: int
    max_replicas: int
    capacity_rps: float

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"tier {self.name!r}: need 0 <= min ({self.min_replicas}) <= max "
                f"({self.max_replicas}) replicas"
            )


@dataclass(frozen=True, slots=True)
class TierMemory:
    """What a decision leaves for the next one of the same tier."""

    desired: int | None = None  # the count last asked for (None: never, or disabled)
    last_up_at: float = -math.inf
    last_change_at: float = -math.inf


@dataclass(frozen=True, slots=True)
class Decision:
    tier: str
    replicas: int  # the count the actuator held when deciding
    desired: int
    reason: Reason
    memory: TierMemory
    drain: tuple[str, ...] = ()  # servers to release, first first (len == replicas - desired)
    detail: str = ""
    demand_servers: float = math.nan  # servers the (predicted) demand needs, with headroom
    spare_rps: float = 0.0  # capacity left for looser tiers (lazy promotion), req/s

    @property
    def delta(self) -> int:
        return self.desired - self.replicas


def _finite_nonneg(*values: float) -> bool:
    return all(math.isfinite(v) and v >= 0 for v in values)


def _usable(obs: Observation, capacity: float) -> str | None:
    """Why the observation cannot be used, or None."""
    if not (math.isfinite(capacity) and capacity > 0):
        return f"per-server capacity is {capacity}"
    if obs.pending < 0 or not _finite_nonneg(
        obs.oldest_wait_s, obs.arrival_rate, obs.arrival_rate_prev, obs.shed_rate
    ):
        return (
            f"pending={obs.pending} oldest_wait_s={obs.oldest_wait_s} rate={obs.arrival_rate} "
            f"prev={obs.arrival_rate_prev} shed={obs.shed_rate}"
        )
    bad = [s.name for s in obs.servers if s.requests < 0 or not _finite_nonneg(s.idle_s)]
    return f"servers with unusable load: {bad}" if bad else None


def predicted_rate(obs: Observation, settings: AutoscaleSettings) -> float:
    """The tier's arrival rate one start-up time ahead (the current rate without scale-ahead)."""
    rate = obs.arrival_rate
    if not settings.scale_ahead:
        return rate
    slope = (rate - obs.arrival_rate_prev) / settings.trend_window_s
    horizon = settings.startup_s + settings.decision_interval_s + settings.trend_window_s / 2
    ahead = rate + max(0.0, slope) * horizon
    return min(ahead, max(rate * MAX_EXTRAPOLATION, rate))


def drain_order(servers: Sequence[ServerObservation]) -> list[ServerObservation]:
    """Least loaded first: fewest requests, then longest idle, then the last name."""
    ordered = sorted(servers, key=lambda s: s.name, reverse=True)
    return sorted(ordered, key=lambda s: (s.requests, -s.idle_s))


def busy_candidates(ready: Sequence[ServerObservation]) -> list[ServerObservation]:
    """Busy servers least loaded first, each tier keeping at least one of its servers (a tier's last
    server stays: in a shared pool, a tier with no server of its own would start one again)."""
    left = Counter(s.tier for s in ready)
    out = []
    # an empty one is not busy: it waits out ``drain_after_s`` like any idle server
    for s in drain_order([s for s in ready if s.requests > 0]):
        if left[s.tier] > 1:
            left[s.tier] -= 1
            out.append(s)
    return out


def decide(
    target: TierTarget,
    obs: Observation | None,
    replicas: int,
    memory: TierMemory | None,
    settings: AutoscaleSettings,
    now: float,
    borrowable_rps: float = 0.0,
) -> Decision:
    """One tier's decision at ``now`` (see the module doc for the rules)."""
    mem = memory or TierMemory()
    lo, hi = target.min_replicas, target.max_replicas
    servers = obs.servers if obs is not None else ()

    def done(
        desired: int,
        reason: Reason,
        detail: str = "",
        drain: tuple[str, ...] = (),
        demand: float = math.nan,
        base: TierMemory = mem,
        spare: float = 0.0,
    ) -> Decision:
        new = TierMemory(
            desired=desired,
            last_up_at=now if desired > replicas else base.last_up_at,
            last_change_at=now if desired != replicas else base.last_change_at,
        )
        return Decision(target.name, replicas, desired, reason, new, drain, detail, demand, spare)

    if not settings.enabled:
        return replace(done(replicas, Reason.HOLD_DISABLED), memory=replace(mem, desired=None))
    if replicas < lo:
        return done(lo, Reason.SCALE_UP_MIN_REPLICAS, f"{replicas} < min {lo}")
    if replicas > hi:
        extra = drain_order([s for s in servers if not s.draining])[: replicas - hi]
        return done(
            hi,
            Reason.SCALE_DOWN_MAX_REPLICAS,
            f"{replicas} > max {hi}",
            tuple(s.name for s in extra),
        )
    if mem.desired is not None and replicas != mem.desired:
        adopted = replace(mem, last_change_at=now)
        return done(
            replicas,
            Reason.HOLD_EXTERNAL_CHANGE,
            f"asked for {mem.desired}, found {replicas}: adopted",
            base=adopted,
        )
    if obs is None:
        return done(replicas, Reason.HOLD_STALE_METRICS, "no signals for the tier")
    age = now - obs.observed_at
    if not (-settings.stale_after_s <= age <= settings.stale_after_s):
        return done(replicas, Reason.HOLD_STALE_METRICS, f"signals {age:.1f} s old")
    problem = _usable(obs, target.capacity_rps)
    if problem is not None:
        return done(replicas, Reason.HOLD_INVALID_METRICS, problem)

    cap = target.capacity_rps
    need_rps = predicted_rate(obs, settings) * settings.headroom
    borrowable = borrowable_rps if math.isfinite(borrowable_rps) and borrowable_rps > 0 else 0.0
    borrowed = min(need_rps, borrowable)
    demand = (need_rps - borrowed) / cap
    util = settings.consolidation_utilization

    def spare_after(desired: int) -> float:
        return borrowable - borrowed + max(0.0, desired * util * cap - (need_rps - borrowed))

    ready = [s for s in servers if s.ready and not s.draining]
    starting = max(0, replicas - len(ready))
    shedding = obs.shed_rate > settings.shed_tolerance * obs.arrival_rate
    waiting = (obs.pending > 0 and obs.oldest_wait_s >= settings.scale_up_wait_s) or shedding

    # ---------------------------------------------------------------- up
    pending_target = replicas
    held_for_starting = False
    if waiting:
        patience = settings.startup_s + settings.scale_up_cooldown_s
        if starting > 0 and now - mem.last_up_at < patience:
            held_for_starting = True
        else:
            pending_target = replicas + 1
    predicted_target = math.ceil(demand - 1e-9)
    up_target = max(pending_target, predicted_target)
    if up_target > replicas:
        desired = min(up_target, replicas + settings.max_scale_up_step, hi)
        # the reason is the target that explains the step: pending, unless the demand asks for
        # more than one server and the caps let more than one through
        by_pending = pending_target >= min(predicted_target, max(desired, replicas + 1))
        what = (
            f"{obs.pending} pending, oldest {obs.oldest_wait_s:.1f} s, shed {obs.shed_rate:.2f}/s"
            if by_pending
            else f"predicted demand {demand:.2f} servers"
        )
        if desired <= replicas:
            return done(
                replicas,
                Reason.HOLD_MAX_REPLICAS,
                f"{what}; at max {hi}",
                demand=demand,
                spare=spare_after(replicas),
            )
        reason = Reason.SCALE_UP_PENDING if by_pending else Reason.SCALE_UP_PREDICTED
        return done(desired, reason, what, demand=demand, spare=spare_after(desired))
    if held_for_starting:
        return done(
            replicas,
            Reason.HOLD_STARTING,
            f"{obs.pending} pending; {starting} server(s) starting",
            demand=demand,
            spare=spare_after(replicas),
        )

    # ---------------------------------------------------------------- down
    if obs.pending > 0 or shedding:  # any waiting request blocks a release
        return done(
            replicas,
            Reason.HOLD_PENDING,
            f"{obs.pending} pending, shed {obs.shed_rate:.2f}/s",
            demand=demand,
            spare=spare_after(replicas),
        )
    candidates = [
        s for s in drain_order(ready) if s.requests == 0 and s.idle_s >= settings.drain_after_s
    ]
    busy = not candidates and settings.consolidate_busy
    if busy:  # none is idle yet (bursts keep feeding the last ones): drain the least loaded
        candidates = busy_candidates(ready)
    if not candidates:
        return done(replicas, Reason.HOLD_STEADY, demand=demand, spare=spare_after(replicas))
    if replicas <= lo:
        return done(
            replicas,
            Reason.HOLD_MIN_REPLICAS,
            f"at min {lo}",
            demand=demand,
            spare=spare_after(replicas),
        )
    since = now - mem.last_change_at
    if since < settings.scale_down_cooldown_s:
        return done(
            replicas,
            Reason.HOLD_COOLDOWN,
            f"last change {since:.0f} s ago",
            demand=demand,
            spare=spare_after(replicas),
        )
    no_traffic = obs.arrival_rate == 0 and obs.arrival_rate_prev == 0 and obs.pending == 0
    step = len(candidates) if no_traffic else settings.max_scale_down_step
    k = min(len(candidates), replicas - lo, step)
    while k > 0 and demand > (replicas - k) * util:
        k -= 1
    if k == 0:
        return done(
            replicas,
            Reason.HOLD_CONSOLIDATION,
            f"demand {demand:.2f} servers; {replicas - 1} would run above "
            f"{settings.consolidation_utilization:.0%}",
            demand=demand,
            spare=spare_after(replicas),
        )
    if busy:
        reason = Reason.SCALE_DOWN_CONSOLIDATED
    else:
        reason = Reason.SCALE_DOWN_NO_TRAFFIC if no_traffic else Reason.SCALE_DOWN_DRAINED
    drained = tuple(s.name for s in candidates[:k])
    return done(
        replicas - k,
        reason,
        f"{'least loaded' if busy else 'idle'}: {', '.join(drained)}",
        drained,
        demand,
        spare=spare_after(replicas - k),
    )


@dataclass
class Autoscaler:
    """Every tier's decision, with the memory between decisions (pure apart from that memory).

    ``targets`` go tightest first: each tier may borrow what the tighter ones leave spare.
    """

    targets: Sequence[TierTarget]
    settings: Mapping[str, AutoscaleSettings] = field(default_factory=dict)
    default_settings: AutoscaleSettings = field(default_factory=AutoscaleSettings)
    memory: dict[str, TierMemory] = field(default_factory=dict)

    def settings_for(self, tier: str) -> AutoscaleSettings:
        return self.settings.get(tier, self.default_settings)

    def step(
        self, now: float, observations: Mapping[str, Observation], replicas: Mapping[str, int]
    ) -> list[Decision]:
        out = []
        spare = 0.0
        for t in self.targets:
            d = decide(
                t,
                observations.get(t.name),
                replicas[t.name],
                self.memory.get(t.name),
                self.settings_for(t.name),
                now,
                borrowable_rps=spare,
            )
            spare = d.spare_rps
            self.memory[t.name] = d.memory
            out.append(d)
        return out

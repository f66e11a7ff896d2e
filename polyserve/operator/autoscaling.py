"""The operator's autoscaler: the multi-tier decision core (``autoscale.decide.Autoscaler``) fed by
the router's state (``GET /polyserve/v1/state``), stepped once per model as the simulator and the
local fleet step it.

The operator passes over one SLOTier at a time, but a model's tiers decide together: a looser tier
may borrow what the tighter ones leave spare (lazy promotion), so a tier deciding alone would ask
for servers that the simulator would not. Each model's tiers (one namespace, one ``spec.model``)
therefore share one :class:`ModelScaler`. A tier's pass that finds its last decision older than its
``autoscaling.decisionIntervalS`` steps the whole model (``autoscale.loop.decide_once``); the
decisions for the other tiers wait in :class:`PassActuator` until their own passes carry them out.

The router's snapshot is read (``autoscale.sources.RouterSource``) at most once per ``refresh_s``
and shared by every tier with the same trend window (``autoscaling.trendWindowS``: the rates are
taken over the tier's own window). A router that cannot be read gives no observation, and the
decision core holds the tier with ``hold_stale_metrics``. Backend names are pod names (the
Kubernetes discovery names them so), so the core's drain order names the pods the operator drains
first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from polyserve.autoscale.capacity import typical_capacity_rps
from polyserve.autoscale.decide import Autoscaler, Decision, TierTarget
from polyserve.autoscale.loop import decide_once
from polyserve.autoscale.signals import Observation
from polyserve.autoscale.sources import RouterSource, SignalError, SignalSource
from polyserve.operator.views import ScalingDecision, TierObservation

log = logging.getLogger(__name__)


class _OnOperatorLoop:
    """``RouterSource`` with its HTTP session opened on first use, on the operator's loop."""

    def __init__(self, router_url: str, trend_window_s: float) -> None:
        self.router_url, self.trend_window_s = router_url, trend_window_s
        self._source: RouterSource | None = None

    async def observe(self) -> list[Observation]:
        if self._source is None:
            session = aiohttp.ClientSession()
            self._source = RouterSource(self.router_url, self.trend_window_s, session)
        return await self._source.observe()

    async def close(self) -> None:
        if self._source is not None:
            await self._source.session.close()


def router_source(router_url: str, trend_window_s: float = 60.0) -> SignalSource:
    """The router's state over HTTP (``autoscale.sources.RouterSource``)."""
    return _OnOperatorLoop(router_url, trend_window_s)


def router_sources(router_url: str) -> Callable[[float], SignalSource]:
    """The router's state with rates over any trend window (one source per window)."""
    return functools.partial(router_source, router_url)


class PassActuator:
    """The operator's :class:`~polyserve.autoscale.actuators.Actuator`: a tier's count is its
    ``status.desiredReplicas``, which only the tier's own pass writes (and then applies to the
    Deployment, draining safely). ``scale`` therefore leaves the new count for that pass."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}  # status.desiredReplicas as each tier's last pass saw it
        self.asked: dict[str, int] = {}  # decided, not yet carried out by the tier's pass

    def replicas(self, tier: str) -> int:
        return self.asked.get(tier, self.held[tier])

    def scale(self, tier: str, desired: int, drain: Sequence[str], now: float) -> None:
        self.asked[tier] = desired  # the drain order travels with the tier's Decision

    def carry_out(self, tier: str) -> bool:
        """The tier's pass takes its decided count; True if one was waiting."""
        return self.asked.pop(tier, None) is not None


def tightest_first(tiers: Sequence[TierObservation]) -> list[TierObservation]:
    """The order the core walks a model's tiers in (each may borrow what tighter ones leave)."""
    return sorted(tiers, key=lambda t: (t.spec.tpot_ms, t.spec.ttft_ms, t.name))


def tier_target(tier: TierObservation) -> TierTarget:
    spec = tier.spec
    return TierTarget(
        tier.name,
        spec.replicas.min,
        spec.replicas.max,
        typical_capacity_rps(tier.profile, spec.tpot_ms),
    )


@dataclass
class ModelScaler:
    """One model's tiers in one namespace: the core's memory, the latest pass of each tier, and
    the decisions that their passes carry out."""

    core: Autoscaler = field(default_factory=lambda: Autoscaler(targets=[]))
    actuator: PassActuator = field(default_factory=PassActuator)
    tiers: dict[str, TierObservation] = field(default_factory=dict)
    latest: dict[str, tuple[float, ScalingDecision]] = field(default_factory=dict)

    def see(self, tier: TierObservation) -> None:
        self.tiers[tier.name] = tier
        self.actuator.held[tier.name] = tier.desired

    def forget(self, name: str) -> None:
        self.tiers.pop(name, None)
        self.latest.pop(name, None)
        self.actuator.held.pop(name, None)
        self.actuator.asked.pop(name, None)
        self.core.memory.pop(name, None)

    def current(self, tier: TierObservation, now: float) -> ScalingDecision | None:
        """The decision that still stands for the tier's pass, or None: step the model."""
        if self.actuator.carry_out(tier.name):
            return self.latest[tier.name][1]
        got = self.latest.get(tier.name)
        if got is None:
            return None
        at, decision = got
        # Passes come at every pod event; the tier decides once per decisionIntervalS (unless its
        # count is not what the last decision asked for: that is news the core must see).
        fresh = now - at < tier.spec.autoscaling.decision_interval_s
        return decision if fresh and decision.replicas == tier.desired else None

    async def step(self, source: _TierWindows, now: float) -> None:
        """One round of the core over every tier of the model, as the local fleet's loop runs."""
        ordered = tightest_first(list(self.tiers.values()))
        self.core.targets = [tier_target(t) for t in ordered]
        self.core.settings = {t.name: t.spec.autoscaling for t in ordered}
        for d in await decide_once(source, self.core, self.actuator, now):
            self.latest[d.tier] = (now, scaling_decision(d, source.seen.get(d.tier)))


class _TierWindows:
    """A :class:`SignalSource` over a model's tiers: each tier's observation taken over its own
    trend window (the router read once per window and ``refresh_s``)."""

    def __init__(self, scaler: RouterAutoscaler, tiers: Sequence[TierObservation]) -> None:
        self.scaler, self.tiers = scaler, tiers
        self.seen: dict[str, Observation] = {}  # what the round read, for the tiers' status

    async def observe(self) -> list[Observation]:
        for t in self.tiers:
            got = (await self.scaler._refresh(t.spec.autoscaling.trend_window_s)).get(t.name)
            if got is not None:
                self.seen[t.name] = got
        return list(self.seen.values())


def scaling_decision(d: Decision, obs: Observation | None) -> ScalingDecision:
    """The core's decision as the tier's pass takes it, with the attainment the router saw."""
    return ScalingDecision(
        replicas=d.desired,
        reason=d.reason,
        message=d.detail,
        attainment=obs.attainment if obs is not None else None,
        drain_first=d.drain,
    )


class RouterAutoscaler:
    """Implements the operator's ``Autoscaler`` seam.

    ``sources(window_s)`` makes the signal source whose rates span ``window_s``: each tier reads
    its signals over its own ``autoscaling.trendWindowS`` (tiers that share a window share one
    source and one read per ``refresh_s``).
    """

    def __init__(
        self,
        sources: Callable[[float], SignalSource],
        refresh_s: float = 2.0,
        clock: Callable[[], float] = time.time,  # the router stamps its snapshots with it
    ) -> None:
        self._make_source = sources
        self.refresh_s = refresh_s
        self.clock = clock
        self._sources: dict[float, SignalSource] = {}
        self._observations: dict[float, dict[str, Observation]] = {}
        self._fetched_at: dict[float, float] = {}
        self._lock = asyncio.Lock()
        self._models: dict[tuple[str, str], ModelScaler] = {}
        self._model_of: dict[tuple[str, str], tuple[str, str]] = {}

    async def close(self) -> None:
        for source in self._sources.values():
            close = getattr(source, "close", None)  # a SignalSource need not hold anything
            if close is not None:
                await close()

    async def _refresh(self, window_s: float) -> dict[str, Observation]:
        async with self._lock:
            if time.monotonic() - self._fetched_at.get(window_s, -math.inf) < self.refresh_s:
                return self._observations[window_s]
            self._fetched_at[window_s] = time.monotonic()
            source = self._sources.get(window_s)
            if source is None:
                source = self._sources[window_s] = self._make_source(window_s)
            try:
                got = {o.tier: o for o in await source.observe()}
            except SignalError as e:  # no signals: every tier holds (hold_stale_metrics)
                log.warning("router signals: %s", e)
                got = {}
            self._observations[window_s] = got
            return got

    def _model(self, tier: TierObservation) -> ModelScaler:
        key = (tier.namespace, tier.name)
        model = (tier.namespace, tier.spec.model)
        before = self._model_of.get(key)
        if before is not None and before != model:  # the tier now serves another model
            self._models[before].forget(tier.name)
        self._model_of[key] = model
        return self._models.setdefault(model, ModelScaler())

    def forget(self, namespace: str, name: str) -> None:
        """The tier is gone: its model's tiers decide without it from now on."""
        model = self._model_of.pop((namespace, name), None)
        if model is not None:
            self._models[model].forget(name)

    async def decide(self, tier: TierObservation) -> ScalingDecision | None:
        scaler = self._model(tier)
        scaler.see(tier)
        now = self.clock()
        decision = scaler.current(tier, now)
        if decision is None:
            tiers = list(scaler.tiers.values())
            await scaler.step(_TierWindows(self, tiers), now)
            scaler.actuator.carry_out(tier.name)
            decision = scaler.latest[tier.name][1]
        return decision

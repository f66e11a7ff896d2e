"""The operator's autoscaler: the decision core (``polyserve.autoscale.decide``) fed by the
router's state (``GET /polyserve/v1/state``), one decision per SLOTier pass.

The router's snapshot is read (``autoscale.sources.RouterSource``) at most once per ``refresh_s``
and shared by the passes of every tier with the same trend window (``autoscaling.trendWindowS``:
the rates are taken over the tier's own window). A router that cannot be read gives no
observation, and the decision core holds the tier with ``hold_stale_metrics``. Backend names are
pod names (the Kubernetes discovery names them so), so the core's drain order names the pods the
operator drains first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable

import aiohttp

from polyserve.autoscale.capacity import typical_capacity_rps
from polyserve.autoscale.decide import TierMemory, TierTarget, decide
from polyserve.autoscale.signals import Observation
from polyserve.autoscale.sources import RouterSource, SignalError, SignalSource
from polyserve.operator.reconcile import ScalingDecision, TierObservation

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


class RouterAutoscaler:
    """Implements the operator's ``Autoscaler`` seam.

    ``sources(window_s)`` makes the signal source whose rates span ``window_s``: each tier reads
    its signals over its own ``autoscaling.trendWindowS`` (tiers that share a window share one
    source and one read per ``refresh_s``).
    """

    def __init__(self, sources: Callable[[float], SignalSource], refresh_s: float = 2.0):
        self._make_source = sources
        self.refresh_s = refresh_s
        self._sources: dict[float, SignalSource] = {}
        self._observations: dict[float, dict[str, Observation]] = {}
        self._fetched_at: dict[float, float] = {}
        self._lock = asyncio.Lock()
        self._memory: dict[tuple[str, str], TierMemory] = {}
        self._last: dict[tuple[str, str], tuple[float, ScalingDecision]] = {}

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

    async def decide(self, tier: TierObservation) -> ScalingDecision | None:
        spec = tier.spec
        key = (tier.namespace, tier.name)
        now = time.time()  # the router stamps its snapshot with its wall clock
        last = self._last.get(key)
        # Passes come at every pod event; the tier decides once per decisionIntervalS (unless its
        # count is not what the last decision asked for: that is news the core must see).
        if (
            last is not None
            and now - last[0] < spec.autoscaling.decision_interval_s
            and last[1].replicas == tier.desired
        ):
            return last[1]
        observations = await self._refresh(spec.autoscaling.trend_window_s)
        target = TierTarget(
            tier.name,
            spec.replicas.min,
            spec.replicas.max,
            typical_capacity_rps(tier.profile, spec.tpot_ms),
        )
        obs = observations.get(tier.name)
        d = decide(target, obs, tier.desired, self._memory.get(key), spec.autoscaling, now)
        self._memory[key] = d.memory
        reason = "".join(word.capitalize() for word in d.reason.value.split("_"))
        decision = ScalingDecision(
            replicas=d.desired,
            reason=reason,
            message=d.detail,
            attainment=obs.attainment if obs is not None else None,
            drain_first=d.drain,
        )
        self._last[key] = (now, decision)
        return decision

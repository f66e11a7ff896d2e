"""The operator's autoscaler: the decision core (``polyserve.autoscale.decide``) fed by the
router's state (``GET /polyserve/v1/state``), one decision per SLOTier pass.

The router's snapshot is read (``autoscale.sources.RouterSource``) at most once per ``refresh_s``
and shared by every tier's pass. A router that cannot be read gives no observation, and the
decision core holds the tier with ``hold_stale_metrics``. Backend names are pod names (the Kubernetes discovery names them so), so
the core's drain order names the pods the operator drains first.
"""

from __future__ import annotations

import asyncio
import logging
import time

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


def router_source(router_url: str, trend_window_s: float = 60.0) -> SignalSource:
    """The router's state over HTTP (``autoscale.sources.RouterSource``)."""
    return _OnOperatorLoop(router_url, trend_window_s)


class RouterAutoscaler:
    """Implements the operator's ``Autoscaler`` seam."""

    def __init__(self, source: SignalSource, refresh_s: float = 2.0):
        self._source = source
        self.refresh_s = refresh_s
        self._observations: dict[str, Observation] = {}
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()
        self._memory: dict[tuple[str, str], TierMemory] = {}

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < self.refresh_s:
                return
            self._fetched_at = time.monotonic()
            try:
                self._observations = {o.tier: o for o in await self._source.observe()}
            except SignalError as e:  # no signals: every tier holds (hold_stale_metrics)
                log.warning("router signals: %s", e)
                self._observations = {}

    async def decide(self, tier: TierObservation) -> ScalingDecision | None:
        await self._refresh()
        spec = tier.spec
        target = TierTarget(
            tier.name,
            spec.replicas.min,
            spec.replicas.max,
            typical_capacity_rps(tier.profile, spec.tpot_ms),
        )
        key = (tier.namespace, tier.name)
        obs = self._observations.get(tier.name)
        d = decide(
            target,
            obs,
            tier.desired,
            self._memory.get(key),
            spec.autoscaling,
            time.time(),  # the router stamps its snapshot with its wall clock
        )
        self._memory[key] = d.memory
        reason = "".join(word.capitalize() for word in d.reason.value.split("_"))
        return ScalingDecision(
            replicas=d.desired,
            reason=reason,
            message=d.detail,
            attainment=obs.attainment if obs is not None else None,
            drain_first=d.drain,
        )

"""The operator's autoscaler: the decision core (``polyserve.autoscale.decide``) fed by the
router's state (``GET /polyserve/v1/state``), one decision per SLOTier pass.

The router's snapshot is fetched at most once per ``refresh_s`` and shared by every tier's pass;
each new snapshot goes through one ``StateReader`` (counters to arrival rates). A router that
cannot be reached gives no observation, and the decision core holds the tier with
``hold_stale_metrics``. Backend names are pod names (the Kubernetes discovery names them so), so
the core's drain order names the pods the operator drains first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import cache

import aiohttp
import numpy as np
from pydantic import ValidationError

from polyserve.autoscale.decide import TierMemory, TierTarget, decide
from polyserve.autoscale.signals import STATE_PATH, Observation, RouterState
from polyserve.autoscale.trend import StateReader
from polyserve.operator.reconcile import ScalingDecision, TierObservation
from polyserve.profile import Profile, tier_capacity
from polyserve.sim.workload import shapes_for

log = logging.getLogger(__name__)

StateFetcher = Callable[[], Awaitable[RouterState | None]]


@cache
def _typical_lengths() -> tuple[np.ndarray, np.ndarray]:
    """Request lengths for the per-server capacity: the Azure conversation trace's."""
    shapes = shapes_for("azure-conv", None, 0)
    return (
        np.array([s.prompt_tokens for s in shapes]),
        np.array([s.output_tokens for s in shapes]),
    )


_CAPACITY: dict[tuple[str, float], float] = {}


def capacity_rps(profile: Profile, tpot_ms: float) -> float:
    """One server's fluid capacity at the TPOT (req/s), computed once per profile and TPOT."""
    key = (profile.name, tpot_ms)
    if key not in _CAPACITY:
        prompts, outputs = _typical_lengths()
        _CAPACITY[key] = tier_capacity(profile, tpot_ms, prompts, outputs)
    return _CAPACITY[key]


def http_state(router_url: str, timeout_s: float = 2.0) -> StateFetcher:
    """Read the router's state over HTTP; None when it cannot be read (the tiers then hold)."""
    url = router_url.rstrip("/") + STATE_PATH

    async def fetch() -> RouterState | None:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp,
            ):
                if resp.status != 200:
                    log.warning("router state: %s answered %d", url, resp.status)
                    return None
                return RouterState.model_validate(await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError, ValidationError) as e:
            log.warning("router state: cannot read %s: %s", url, e)
            return None

    return fetch


class RouterAutoscaler:
    """Implements the operator's ``Autoscaler`` seam."""

    def __init__(self, fetch: StateFetcher, refresh_s: float = 2.0, trend_window_s: float = 60.0):
        self._fetch = fetch
        self.refresh_s = refresh_s
        self._reader = StateReader(trend_window_s)
        self._observations: dict[str, Observation] = {}
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()
        self._memory: dict[tuple[str, str], TierMemory] = {}

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < self.refresh_s:
                return
            self._fetched_at = time.monotonic()
            state = await self._fetch()
            if state is not None:
                self._observations = {o.tier: o for o in self._reader.read(state)}

    async def decide(self, tier: TierObservation) -> ScalingDecision | None:
        await self._refresh()
        spec = tier.spec
        target = TierTarget(
            tier.name,
            spec.replicas.min,
            spec.replicas.max,
            capacity_rps(tier.profile, spec.tpot_ms),
        )
        key = (tier.namespace, tier.name)
        d = decide(
            target,
            self._observations.get(tier.name),
            tier.desired,
            self._memory.get(key),
            spec.autoscaling,
            time.time(),  # the router stamps its snapshot with its wall clock
        )
        self._memory[key] = d.memory
        reason = "".join(word.capitalize() for word in d.reason.value.split("_"))
        return ScalingDecision(
            replicas=d.desired, reason=reason, message=d.detail, drain_first=d.drain
        )

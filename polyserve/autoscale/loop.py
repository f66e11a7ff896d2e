"""The live autoscaler: read the signals, decide, act, record; once per decision interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from polyserve.autoscale.actuators import Actuator, apply
from polyserve.autoscale.decide import Autoscaler, Decision
from polyserve.autoscale.metrics import AutoscalerMetrics
from polyserve.autoscale.sources import SignalError, SignalSource

log = logging.getLogger("polyserve.autoscale")


async def decide_once(
    source: SignalSource,
    autoscaler: Autoscaler,
    actuator: Actuator,
    now: float,
    metrics: AutoscalerMetrics | None = None,
) -> list[Decision]:
    """One round. Unreadable signals hold every tier (``hold_stale_metrics``), never raise."""
    try:
        observations = {o.tier: o for o in await source.observe()}
    except SignalError as err:
        log.warning("no signals this round: %s", err)
        observations = {}
    replicas = {t.name: actuator.replicas(t.name) for t in autoscaler.targets}
    decisions = autoscaler.step(now, observations, replicas)
    apply(actuator, decisions, now)
    for d in decisions:
        if d.desired != d.replicas:
            log.info("%s: %d -> %d (%s) %s", d.tier, d.replicas, d.desired, d.reason, d.detail)
    if metrics is not None:
        metrics.record(decisions)
    return decisions


async def run(
    source: SignalSource,
    autoscaler: Autoscaler,
    actuator: Actuator,
    interval_s: float,
    stop: asyncio.Event,
    metrics: AutoscalerMetrics | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Rounds every ``interval_s`` until ``stop`` is set (the clock is the signals' clock)."""
    while not stop.is_set():
        await decide_once(source, autoscaler, actuator, clock(), metrics)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)

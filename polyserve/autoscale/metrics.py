"""The autoscaler's own Prometheus metrics: every decision's reason, the desired counts."""

from __future__ import annotations

import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from polyserve.autoscale.decide import Decision


class AutoscalerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "polyserve_autoscaler_decisions",
            "Decisions by tier and reason (scale_up_pending, hold_cooldown, ...).",
            ["tier", "reason"],
            registry=self.registry,
        )
        self.replicas = Gauge(
            "polyserve_autoscaler_replicas",
            "The tier's replica count when the autoscaler last decided.",
            ["tier"],
            registry=self.registry,
        )
        self.desired = Gauge(
            "polyserve_autoscaler_desired_replicas",
            "The replica count the autoscaler last asked for.",
            ["tier"],
            registry=self.registry,
        )
        self.demand = Gauge(
            "polyserve_autoscaler_demand_servers",
            "Servers the tier's predicted demand needs (with headroom), NaN when unknown.",
            ["tier"],
            registry=self.registry,
        )

    def record(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            self.decisions.labels(d.tier, d.reason.value).inc()
            self.replicas.labels(d.tier).set(d.replicas)
            self.desired.labels(d.tier).set(d.desired)
            self.demand.labels(d.tier).set(
                d.demand_servers if math.isfinite(d.demand_servers) else math.nan
            )

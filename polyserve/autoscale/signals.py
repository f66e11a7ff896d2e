"""What the autoscaler reads, and the contract the router serves it by.

Two ways in, one result (a :class:`Observation` per tier for the decision core):

1. **Straight from the router** (the default): ``GET /polyserve/v1/state`` answers one
   :class:`RouterState` as JSON (``RouterState.model_dump_json()``). The router owns the snapshot;
   the autoscaler turns its cumulative counters into rates (``trend.ArrivalTrend``).
2. **Through Prometheus**: the router exports the same numbers as the metrics named in
   :data:`METRICS`, and ``prometheus_source`` reads them with the PromQL in :data:`PROMQL`.

Counters are cumulative since the router started (a restart shows as a counter that went down and is
treated as a reset). Times are seconds; the snapshot's ``time`` is the router's Unix clock.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The router's endpoint that serves :class:`RouterState`.
STATE_PATH = "/polyserve/v1/state"

NonNeg = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierState(_Wire):
    """One tier as the router sees it."""

    name: str = Field(min_length=1, description="The tier's name (its SLOTier).")
    pending: Count = Field(description="Requests waiting in the router's queue for the tier now.")
    oldest_wait_s: NonNeg = Field(
        description="Seconds the oldest pending request has waited (0 when none waits)."
    )
    arrivals_total: Count = Field(description="Requests of the tier received (counter).")
    shed_total: Count = Field(
        description="Requests of the tier refused because no server could meet their deadline "
        "in time (429s, counter)."
    )
    measured_total: Count = Field(
        default=0,
        description="Requests of the tier that ended and were judged against its deadlines "
        "(counter).",
    )
    attained_total: Count = Field(
        default=0, description="Of those, the requests that met every deadline (counter)."
    )


class BackendState(_Wire):
    """One engine server behind the router."""

    name: str = Field(min_length=1, description="The backend's name (pod or BackendSpec name).")
    tier: str | None = Field(
        description="The tier whose servers it belongs to; null for a shared pool server."
    )
    ready: bool = Field(description="It passes its readiness check and can take requests.")
    draining: bool = Field(description="Marked for removal: it gets no new requests.")
    requests: Count = Field(description="Requests on it now, of any tier.")
    idle_s: NonNeg = Field(
        description="Seconds since it last held a request (0 while it holds one; time since it "
        "became ready if it never held one)."
    )


class RouterState(_Wire):
    """The router's answer at ``GET /polyserve/v1/state``."""

    version: Literal[1] = 1
    time: float = Field(allow_inf_nan=False, description="When the snapshot was taken (Unix s).")
    tiers: list[TierState]
    backends: list[BackendState]


# ------------------------------------------------------------------ Prometheus names and queries

#: Metrics the router exports for the autoscaler (labels in brackets). Counters carry the
#: ``_total`` suffix as exposed (prometheus_client adds it to a Counter named without it).
METRICS: dict[str, str] = {
    "polyserve_router_pending_requests": "gauge [tier]: TierState.pending",
    "polyserve_router_oldest_pending_seconds": "gauge [tier]: TierState.oldest_wait_s",
    "polyserve_router_requests_total": "counter [tier]: TierState.arrivals_total",
    "polyserve_router_shed_total": "counter [tier]: TierState.shed_total",
    "polyserve_router_slo_measured_total": "counter [tier]: TierState.measured_total",
    "polyserve_router_slo_attained_total": "counter [tier]: TierState.attained_total",
    "polyserve_router_backend_ready": "gauge 0/1 [backend, tier]: BackendState.ready",
    "polyserve_router_backend_draining": "gauge 0/1 [backend, tier]: BackendState.draining",
    "polyserve_router_backend_requests": "gauge [backend, tier]: BackendState.requests",
    "polyserve_router_backend_idle_seconds": "gauge [backend, tier]: BackendState.idle_s",
}

#: The queries of the Prometheus source; ``{w}`` is the trend window in whole seconds. A pool
#: backend carries ``tier=""``. Every query returns an instant vector (one sample per series).
PROMQL: dict[str, str] = {
    "pending": "sum by (tier) (polyserve_router_pending_requests)",
    "oldest_wait": "max by (tier) (polyserve_router_oldest_pending_seconds)",
    "rate": "sum by (tier) (rate(polyserve_router_requests_total[{w}s]))",
    "rate_prev": "sum by (tier) (rate(polyserve_router_requests_total[{w}s] offset {w}s))",
    "shed_rate": "sum by (tier) (rate(polyserve_router_shed_total[{w}s]))",
    "measured_rate": "sum by (tier) (rate(polyserve_router_slo_measured_total[{w}s]))",
    "attained_rate": "sum by (tier) (rate(polyserve_router_slo_attained_total[{w}s]))",
    "ready": "max by (backend, tier) (polyserve_router_backend_ready)",
    "draining": "max by (backend, tier) (polyserve_router_backend_draining)",
    "requests": "max by (backend, tier) (polyserve_router_backend_requests)",
    "idle": "min by (backend, tier) (polyserve_router_backend_idle_seconds)",
}


# ------------------------------------------------------------------ decision input


class ServerObservation(_Wire):
    """One server of a tier, as the decision core needs it."""

    name: str
    ready: bool
    draining: bool = False
    #: the tier it serves now (a pool server's changes; None: idle in the pool)
    tier: str | None = None
    # not validated here: the decision core holds the tier on a negative or NaN value
    requests: int = 0
    idle_s: float = 0.0

    @classmethod
    def of(cls, backend: BackendState) -> ServerObservation:
        return cls(
            name=backend.name,
            ready=backend.ready,
            draining=backend.draining,
            tier=backend.tier,
            requests=backend.requests,
            idle_s=backend.idle_s,
        )


class Observation(_Wire):
    """One tier's signals at ``observed_at``, whatever source they came from.

    Numbers are not validated here on purpose: a source passes on what it read (NaN for a missing
    series) and the decision core holds the tier, with a reason, when a value is unusable.
    """

    tier: str
    observed_at: float
    pending: int = 0
    oldest_wait_s: float = 0.0
    arrival_rate: float = 0.0  # req/s over the last trend window
    arrival_rate_prev: float = 0.0  # req/s over the window before it
    shed_rate: float = 0.0  # req/s refused for their deadline over the last window
    #: the share of the tier's requests over the last window that met every deadline (shed ones
    #: did not; None: none ended); reported in the SLOTier's status, not a scaling input
    attainment: float | None = None
    servers: tuple[ServerObservation, ...] = ()


def window_attainment(
    measured_rate: float, attained_rate: float, shed_rate: float = 0.0
) -> float | None:
    """The share of a window's requests that met their SLO, from the counters' rates: attained
    over judged plus shed (a request refused for its deadline did not attain it). None when the
    window holds no such request or a rate is not a number."""
    rates = (measured_rate, attained_rate, shed_rate)
    if not all(math.isfinite(r) and r >= 0 for r in rates) or measured_rate + shed_rate <= 0:
        return None
    return min(1.0, attained_rate / (measured_rate + shed_rate))

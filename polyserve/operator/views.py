"""What an operator pass sees of one SLOTier, and the seams its plug-ins answer through.

The pass (``operator.reconcile``) builds a :class:`TierObservation`; the :class:`Autoscaler`
answers a :class:`ScalingDecision`; a :class:`StreamProbe` says whether a draining pod still
serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from polyserve.autoscale.decide import Reason as ScaleReason
from polyserve.operator import resources as r
from polyserve.operator.kube import Obj
from polyserve.operator.model import ScalingRecord, SLOTierSpec
from polyserve.profile import Profile


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class PodView:
    name: str
    ready: bool
    deleting: bool
    created: str
    draining_since: float | None = None
    cost_set: bool = False
    address: tuple[str, int] | None = None

    @classmethod
    def from_pod(cls, pod: Obj) -> PodView:
        meta = pod.get("metadata") or {}
        ann = meta.get("annotations") or {}
        since: float | None = None
        if r.pod_draining(pod):
            since = parse_time(ann.get(r.ANNOTATION_DRAINING_SINCE)) or 0.0
        return cls(
            name=meta["name"],
            ready=r.pod_ready(pod),
            deleting=bool(meta.get("deletionTimestamp")),
            created=str(meta.get("creationTimestamp") or ""),
            draining_since=since,
            cost_set=ann.get(r.ANNOTATION_DELETION_COST) == r.DRAINED_DELETION_COST,
            address=r.pod_address(pod),
        )


@dataclass(frozen=True)
class TierObservation:
    """One tier as the operator sees it at the start of a pass."""

    namespace: str
    name: str
    spec: SLOTierSpec
    profile: Profile
    #: the Deployment's spec.replicas (None: not created yet)
    replicas: int | None
    ready_replicas: int
    #: the owner's current count (status.desiredReplicas), before this decision
    desired: int
    pods: tuple[PodView, ...]
    last_scaling: ScalingRecord | None
    now: float


@dataclass(frozen=True)
class ScalingDecision:
    """What the autoscaler asks for one tier (the operator clamps it to replicas.min..max)."""

    replicas: int
    #: why (status.lastScaling and the Event record it CamelCase)
    reason: ScaleReason
    message: str = ""
    #: the tier's attainment as the router sees it (status.attainment; Degraded below 0.9)
    attainment: float | None = None
    #: pods to drain first on a scale-down (the router's drain candidates), best first
    drain_first: tuple[str, ...] = ()


class Autoscaler(Protocol):
    """The autoscaler decision core with its signal source (the router or Prometheus)."""

    async def decide(self, tier: TierObservation) -> ScalingDecision | None:
        """The tier's replica count now, or None to hold. Asked for every tier; for a tier with
        autoscaling off only the attainment is used."""
        ...

    def forget(self, namespace: str, name: str) -> None:
        """The tier is gone (deleted): the other tiers of its model decide without it."""
        ...

    async def close(self) -> None:
        """Release what the signal source holds (HTTP sessions); the operator is stopping."""
        ...


class StreamProbe(Protocol):
    """How many requests a pod still serves (None: unknown; the drain then waits for its
    deadline)."""

    async def active_streams(self, pod: PodView) -> int | None: ...

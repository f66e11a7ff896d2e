"""Placement policies (pure). ``make_policy(name)`` builds one by name; ``POLICY_NAMES`` lists them."""

from __future__ import annotations

from collections.abc import Sequence

from polyserve.policy.base import FleetView, PendingRequest, Placement, Policy, ServerView
from polyserve.policy.estimator import OutputLengthEstimator
from polyserve.policy.pack_load import PackLoadPolicy
from polyserve.policy.polyserve import PolyServePolicy
from polyserve.policy.simple import (
    LeastOutstandingPolicy,
    MinimalPolicy,
    RandomPolicy,
    RoundRobinPolicy,
)
from polyserve.policy.static_partition import StaticPartitionPolicy

POLICY_NAMES = (
    "polyserve",
    "pack-load",
    "static-partition",
    "least-outstanding",
    "minimal",
    "co-chunk",
    "round-robin",
    "random",
)


def make_policy(name: str, seed: int = 0, shares: Sequence[float] | None = None) -> Policy:
    """A fresh policy instance. ``shares`` are the static partition's per-tier weights."""
    if name == "polyserve":
        return PolyServePolicy()
    if name == "polyserve-promote-first":
        return PolyServePolicy(name=name, promote_first=True)
    if name == "pack-load":
        return PackLoadPolicy()
    if name == "static-partition":
        if shares is None:
            raise ValueError("static-partition needs per-tier shares")
        return StaticPartitionPolicy(shares=shares)
    if name == "least-outstanding":
        return LeastOutstandingPolicy()
    if name in ("minimal", "co-chunk"):
        return MinimalPolicy(name=name)
    if name == "round-robin":
        return RoundRobinPolicy()
    if name == "random":
        return RandomPolicy(seed=seed)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")


__all__ = [
    "POLICY_NAMES",
    "FleetView",
    "OutputLengthEstimator",
    "PendingRequest",
    "Placement",
    "Policy",
    "ServerView",
    "make_policy",
]

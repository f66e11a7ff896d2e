"""Placement policies (pure). ``make_policy(name)`` builds one by name from the ``POLICIES``
registry; ``POLICY_NAMES`` lists them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

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

#: Builds a fresh policy from (seed, shares): ``shares`` are the static partition's per-tier
#: weights, the seed is the random policy's.
PolicyFactory = Callable[[int, Sequence[float] | None], Policy]


def _static_partition(seed: int, shares: Sequence[float] | None) -> Policy:
    if shares is None:
        raise ValueError("static-partition needs per-tier shares")
    return StaticPartitionPolicy(shares=shares)


#: The one list of policies: every name a user may give, and how it is built.
POLICIES: Mapping[str, PolicyFactory] = MappingProxyType(
    {
        "polyserve": lambda seed, shares: PolyServePolicy(),
        "polyserve-promote-first": lambda seed, shares: PolyServePolicy(
            name="polyserve-promote-first", promote_first=True
        ),
        "pack-load": lambda seed, shares: PackLoadPolicy(),
        "static-partition": _static_partition,
        "least-outstanding": lambda seed, shares: LeastOutstandingPolicy(),
        "minimal": lambda seed, shares: MinimalPolicy(name="minimal"),
        "co-chunk": lambda seed, shares: MinimalPolicy(name="co-chunk"),
        "round-robin": lambda seed, shares: RoundRobinPolicy(),
        "random": lambda seed, shares: RandomPolicy(seed=seed),
    }
)
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def check_policy_name(name: str) -> str:
    """``name`` if it is a policy; else a ValueError that lists the policies."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    return name


def make_policy(name: str, seed: int = 0, shares: Sequence[float] | None = None) -> Policy:
    """A fresh policy instance. ``shares`` are the static partition's per-tier weights."""
    return POLICIES[check_policy_name(name)](seed, shares)


__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "FleetView",
    "OutputLengthEstimator",
    "PendingRequest",
    "Placement",
    "Policy",
    "PolicyFactory",
    "ServerView",
    "check_policy_name",
    "make_policy",
]

"""Static partition: each tier owns a fixed share of the servers; least-outstanding inside.

What operators run today without an SLO-aware router: one Deployment per tier sized by hand. The
simulator gives it the best static split it can compute (shares from the fluid optimum), so it
stands for a well-tuned partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from polyserve.policy.base import FleetView, PendingRequest, Placement, ServerView


def partition(n_servers: int, shares: Sequence[float]) -> list[int]:
    """Tier of each server: largest-remainder apportionment with at least one server per tier."""
    k = len(shares)
    if n_servers < k:
        raise ValueError(
            f"a static partition of {k} tiers needs at least {k} servers, got {n_servers}"
        )
    total = sum(shares)
    if total <= 0 or any(x < 0 for x in shares):
        raise ValueError(f"partition shares must be >= 0 with a positive sum, got {list(shares)}")
    counts = [1] * k
    spare = n_servers - k
    ideal = [spare * x / total for x in shares]
    for i, v in enumerate(ideal):
        counts[i] += int(v)
    rest = n_servers - sum(counts)
    for i in sorted(range(k), key=lambda i: ideal[i] - int(ideal[i]), reverse=True)[:rest]:
        counts[i] += 1
    return [t for t, c in enumerate(counts) for _ in range(c)]


@dataclass
class StaticPartitionPolicy:
    shares: Sequence[float]
    name: str = "static-partition"
    queues: bool = False
    tiered: bool = False
    _tier_of: dict[int, int] = field(default_factory=dict, repr=False)

    def place(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None:
        if len(self._tier_of) != len(fleet.servers):
            tiers = partition(len(fleet.servers), self.shares)
            self._tier_of = {s.index: t for s, t in zip(fleet.servers, tiers, strict=True)}
        available = fleet.available()
        pool: list[ServerView] = [s for s in available if self._partition(s) == req.tier]
        if not pool:
            pool = available
        return Placement(min(pool, key=lambda s: (s.residents, s.index))) if pool else None

    def _partition(self, server: ServerView) -> int:
        """A pinned server's own tier (the live system's per-tier deployments); else the split."""
        return (
            server.tier
            if server.pinned and server.tier is not None
            else self._tier_of[server.index]
        )

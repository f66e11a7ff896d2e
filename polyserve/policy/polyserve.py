"""PolyServe placement (reference/polyserve-algorithm.md).

For a request of tier ``t`` (0 = tightest), in order:

1. **own tier**: among the servers of tier ``t`` that can take it (``checks.can_take`` against the
   tier's TPOT), the MOST loaded one. Servers fill one after another (the load gradient) and the
   last ones drain, which is what lets the autoscaler release them;
2. **idle pool**: an empty server joins tier ``t`` (in a fixed fleet, the instant scale-up);
3. **lazy promotion**: a server of a tighter tier, nearest tighter tier first, judged against the
   host's (tighter) TPOT budget. A request never goes to a looser tier's server;
4. otherwise it waits in the router's FIFO queue for its tier.

With ``promote_first`` the order of 2 and 3 is swapped (useful when scale-up is slow: promotion uses
capacity that is already running). "Load" is the projected peak KV (``ServerView.projected_kv_tokens``):
the quantity the TPOT and KV checks bind on, so the most loaded feasible server is the best fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from polyserve.policy.base import FleetView, PendingRequest, Placement, ServerView, by_load_desc
from polyserve.policy.checks import can_take


@dataclass
class PolyServePolicy:
    name: str = "polyserve"
    promote_first: bool = False
    queues: bool = True
    tiered: bool = True

    def place(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None:
        tiers = fleet.tiers
        own_budget = tiers[req.tier].tpot_ms
        own: list[ServerView] = []
        tighter: list[list[ServerView]] = [[] for _ in range(req.tier)]
        idle: list[ServerView] = []
        for s in fleet.servers:
            if not s.available:
                continue
            if s.tier is None:
                idle.append(s)
            elif s.tier == req.tier:
                own.append(s)
            elif s.tier < req.tier:
                tighter[s.tier].append(s)
        for s in by_load_desc(own):
            v = can_take(s, req, own_budget, now)
            if v.ok:
                return Placement(s, ttft_pred_ms=v.ttft_pred_ms)
        steps = (
            (self._promote, self._scale_up)
            if self.promote_first
            else (self._scale_up, self._promote)
        )
        for step in steps:
            placed = step(req, fleet, now, tighter, idle)
            if placed is not None:
                return placed
        return None

    @staticmethod
    def _scale_up(
        req: PendingRequest,
        fleet: FleetView,
        now: float,
        tighter: list[list[ServerView]],
        idle: list[ServerView],
    ) -> Placement | None:
        budget = fleet.tiers[req.tier].tpot_ms
        for s in sorted(idle, key=lambda s: s.index):
            v = can_take(s, req, budget, now)
            if v.ok:
                return Placement(s, assign_tier=req.tier, ttft_pred_ms=v.ttft_pred_ms)
        return None

    @staticmethod
    def _promote(
        req: PendingRequest,
        fleet: FleetView,
        now: float,
        tighter: list[list[ServerView]],
        idle: list[ServerView],
    ) -> Placement | None:
        for host_tier in range(req.tier - 1, -1, -1):
            budget = fleet.tiers[host_tier].tpot_ms
            for s in by_load_desc(tighter[host_tier]):
                v = can_take(s, req, budget, now)
                if v.ok:
                    return Placement(s, promoted=True, ttft_pred_ms=v.ttft_pred_ms)
        return None

    def degrade(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None:
        """Place a request that can no longer meet its TTFT without hurting anyone's TPOT."""
        for s in by_load_desc(
            [s for s in fleet.servers if s.available and s.tier is not None and s.tier <= req.tier]
        ):
            budget = fleet.tiers[s.tier].tpot_ms if s.tier is not None else req.tpot_ms
            if can_take(s, req, budget, now, degrade=True).ok:
                return Placement(s, promoted=s.tier != req.tier, degraded=True)
        for s in sorted(fleet.idle(), key=lambda s: s.index):
            if can_take(s, req, fleet.tiers[req.tier].tpot_ms, now, degrade=True).ok:
                return Placement(s, assign_tier=req.tier, degraded=True)
        return None

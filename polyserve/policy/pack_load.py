"""SLO-aware pack-load on one shared pool (AIBrix's ``slo-pack-load`` idea; the strongest peer).

The same admission checks and router-side queue as PolyServe, but no tiers: every server takes any
request, judged against the tightest TPOT it would then host. It packs onto the most loaded feasible
server. With a single tier, PolyServe places exactly as this policy does.
"""

from __future__ import annotations

from dataclasses import dataclass

from polyserve.policy.base import FleetView, PendingRequest, Placement, ServerView, by_load_desc
from polyserve.policy.checks import can_take


def shared_budget_ms(server: ServerView, req: PendingRequest) -> float:
    return min(server.tightest_tpot_ms, req.tpot_ms)


@dataclass
class PackLoadPolicy:
    name: str = "pack-load"
    queues: bool = True
    tiered: bool = False

    def place(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None:
        for s in by_load_desc(fleet.available()):
            v = can_take(s, req, shared_budget_ms(s, req), now)
            if v.ok:
                return Placement(s, ttft_pred_ms=v.ttft_pred_ms)
        return None

    def degrade(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None:
        for s in by_load_desc(fleet.available()):
            if can_take(s, req, shared_budget_ms(s, req), now, degrade=True).ok:
                return Placement(s, degraded=True)
        return None

"""The router's state as JSON (``GET /polyserve/v1/state``): what the autoscaler and operator read.

Per tier: pending requests and the oldest wait, the backends and their load, and the drain
candidates (backends holding none of the tier's requests, and for how long).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

from polyserve.router.pool import ModelPool


class BackendState(BaseModel):
    name: str
    url: str
    tier: str | None
    healthy: bool
    draining: bool
    requests: int  # this router's requests on it
    foreign_requests: int  # requests on it from elsewhere (from its /metrics)
    kv_tokens: int
    own_tier_requests: int
    idle_seconds: float | None  # holding none of its tier's requests for this long


class TierState(BaseModel):
    name: str
    model: str
    tpot_ms: float
    ttft_ms: float
    pending: int
    oldest_wait_s: float
    backends: list[str]
    drain_candidates: list[str]  # longest idle first


class RouterState(BaseModel):
    time: float  # wall clock (Unix seconds) when taken
    tiers: list[TierState]
    backends: list[BackendState]


def router_state(pools: Iterable[ModelPool], now: float, wall: float) -> RouterState:
    tiers: list[TierState] = []
    backends: list[BackendState] = []
    for pool in pools:
        candidates = pool.drain_candidates(now)
        for i, spec in enumerate(pool.tier_specs):
            tiers.append(
                TierState(
                    name=spec.name,
                    model=pool.model,
                    tpot_ms=spec.tpot_ms,
                    ttft_ms=spec.ttft_ms,
                    pending=pool.queues.lengths()[i],
                    oldest_wait_s=pool.oldest_wait_s(i, now),
                    backends=[b.name for b in pool.backends.values() if b.spec.tier == spec.name],
                    drain_candidates=[c.backend for c in candidates.get(spec.name, [])],
                )
            )
        for b in pool.backends.values():
            v = b.view
            backends.append(
                BackendState(
                    name=b.name,
                    url=b.spec.url,
                    tier=b.spec.tier,
                    healthy=v.healthy,
                    draining=v.draining,
                    requests=v.n_requests,
                    foreign_requests=v.foreign_requests,
                    kv_tokens=v.kv_tokens,
                    own_tier_requests=b.own_tier_requests,
                    idle_seconds=None if b.idle_since is None else max(0.0, now - b.idle_since),
                )
            )
    return RouterState(time=wall, tiers=tiers, backends=backends)

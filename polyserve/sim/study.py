"""Goodput studies: each policy's highest rate at >= 90% attainment on one workload and fleet."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from polyserve.policy import make_policy
from polyserve.profile import Profile
from polyserve.sim.fleet import ChunkMode, FleetSim, SimConfig, SimResult
from polyserve.sim.optimal import FluidBound, fluid_bound, windowed_bound
from polyserve.sim.workload import Arrival, at_rate
from polyserve.slo import Goodput, GoodputPoint, TierSet, goodput_search

#: The engines each policy runs on with PolyServe's engine extensions (``polyserve``): SLO-aware
#: policies get dynamic chunking; the load balancers run vLLM's defaults; CO-Chunk a static
#: 512-token budget (Sarathi-Serve's default).
CHUNK_MODE: dict[str, ChunkMode] = {
    "polyserve": "dynamic",
    "polyserve-promote-first": "dynamic",
    "pack-load": "dynamic",
    "static-partition": "dynamic",
    "least-outstanding": "vllm",
    "minimal": "vllm",
    "co-chunk": "static",
    "round-robin": "vllm",
    "random": "vllm",
}


EngineMode = Literal["polyserve", "stock"]
#: ``stock``: vLLM V1 as shipped. The SLO-aware policies' engines get each tier's derived flags
#: (``tier_engine``) in place of dynamic chunking: a tiered policy's servers are pinned to tiers
#: (a Deployment per SLOTier, sized by the fluid optimum's shares), a shared pool (pack-load) runs
#: the tightest tier's flags on every server. The other policies already run stock engines.
ENGINE_MODES: tuple[EngineMode, ...] = ("polyserve", "stock")
#: policies whose servers hold a tier (the pinned Deployments of the stock mode)
TIERED = ("polyserve", "polyserve-promote-first", "static-partition")


def split_servers(n: int, shares: Sequence[float]) -> tuple[int, ...]:
    """``n`` servers over the tiers by ``shares`` (largest remainder), then each tier at least one
    when there are enough servers (a tier without a server could only borrow), taken from the
    tier with the most."""
    raw = [n * s / sum(shares) for s in shares]
    counts = [int(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    while n >= len(counts) and 0 in counts:
        counts[counts.index(max(counts))] -= 1
        counts[counts.index(0)] += 1
    return tuple(counts)


def sim_config(
    profile: Profile,
    tiers: TierSet,
    n_servers: int,
    policy_name: str,
    engine: EngineMode = "polyserve",
    shares: Sequence[float] | None = None,
) -> SimConfig:
    """The fleet a policy runs on, with PolyServe's engine extensions or stock vLLM."""
    mode = CHUNK_MODE.get(policy_name, "vllm")
    if engine == "polyserve" or mode != "dynamic":
        return SimConfig(profile, tiers, n_servers, chunk_mode=mode)
    pinned = None
    if policy_name in TIERED and n_servers > 0:
        pinned = split_servers(n_servers, shares or [1.0 / len(tiers)] * len(tiers))
    return SimConfig(profile, tiers, n_servers, chunk_mode="tier", pinned=pinned)


#: Attainment is measured on the requests that arrive in the middle of the run: the first ones meet
#: an empty fleet and the last ones a draining one, both kinder than the steady state.
MEASURE_WINDOW = (0.25, 0.85)


def windowed_attainment(
    result: SimResult, arrivals: Sequence[Arrival], window: tuple[float, float] = MEASURE_WINDOW
) -> float:
    n = len(arrivals)
    ordered = sorted(a.time for a in arrivals)
    lo, hi = ordered[int(window[0] * (n - 1))], ordered[int(window[1] * (n - 1))]
    inside = [o for o in result.outcomes if lo <= o.arrival <= hi]
    return sum(o.attained for o in inside) / len(inside) if inside else float("nan")


#: First probes of the goodput search, as fractions of the whole workload's bound, tried in turn.
SEARCH_STARTS = (0.2, 0.05, 0.0125)


@dataclass
class PolicyGoodput:
    name: str
    goodput: Goodput
    at_goodput: SimResult | None


def run_once(
    profile: Profile,
    tiers: TierSet,
    n_servers: int,
    policy_name: str,
    arrivals: Sequence[Arrival],
    bound: FluidBound,
    seed: int = 0,
    engine: EngineMode = "polyserve",
) -> SimResult:
    shares = bound.server_shares()
    policy = make_policy(policy_name, seed=seed, shares=shares)
    cfg = sim_config(profile, tiers, n_servers, policy_name, engine, shares)
    return FleetSim(cfg, policy).run(arrivals)


def goodput_study(
    profile: Profile,
    tiers: TierSet,
    base: Sequence[Arrival],
    n_servers: int,
    policies: Sequence[str],
    threshold: float = 0.9,
    rel_tol: float = 0.03,
    on_point: Callable[[str, GoodputPoint], None] | None = None,
    engine: EngineMode = "polyserve",
) -> tuple[list[PolicyGoodput], FluidBound]:
    """``base`` is the workload at 1 req/s; each evaluation replays it at another rate.

    The returned bound is the one for what is measured: the window's requests at their own rate
    (``optimal.windowed_bound``). Static partitions are sized from the whole workload's bound.
    """
    whole = fluid_bound(profile, tiers, base, attainment=threshold)
    bound = windowed_bound(profile, tiers, base, MEASURE_WINDOW, attainment=threshold)
    start = whole.goodput(n_servers)  # the search's first probes (unchanged by the window)
    results: list[PolicyGoodput] = []
    for name in policies:
        last: dict[float, SimResult] = {}

        def attainment(rate: float, name: str = name, last: dict[float, SimResult] = last) -> float:
            arrivals = at_rate(base, rate)
            res = run_once(profile, tiers, n_servers, name, arrivals, whole, engine=engine)
            last[rate] = res
            return windowed_attainment(res, arrivals)

        def report(point: GoodputPoint, name: str = name) -> None:
            if on_point is not None:
                on_point(name, point)

        # A policy that fails the first probe (20% of the bound) is searched again from lower rates
        # (a bursty trace can defeat a load balancer there) rather than reported as 0.
        for scale in SEARCH_STARTS:
            g = goodput_search(
                attainment,
                lo=scale * start,
                hi=2 * scale * start,
                threshold=threshold,
                rel_tol=rel_tol,
                on_point=report,
            )
            if g.rate > 0:
                break
        results.append(PolicyGoodput(name, g, last.get(g.rate)))
    return results, bound

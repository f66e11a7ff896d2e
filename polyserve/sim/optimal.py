"""The optimal reference: a fluid upper bound on goodput.

Each tier is served by servers that run *only* that tier, every step exactly at the tier's TPOT, with
no fragmentation (fractional servers), no queueing and no TTFT constraint. A server of tier ``t``
running steps of ``tau = TPOT_t`` at request rate ``lam`` holds, by Little's law,

    n  = lam * E[out] * tau          decodes per step,
    p  = lam * E[prompt] * tau       prefill tokens per step,
    ctx = n * C                      decode context, C = E[(prompt + out/2) * out] / E[out]
                                     (the token-weighted mean context of a decode),
    pairs = lam * tau * E[prompt^2] / 2   prefill attention pairs per step,

and the step must fit: ``step_ms(n, ctx, p, pairs) <= tau``, with ``n <= max_num_seqs`` and the KV
held, ``lam * tau * E[(prompt + out) * out]`` tokens, within the cache. For each step time
``tau <= TPOT_t`` (a grid) the largest such ``lam`` is found by bisection; the best over ``tau`` is
the tier's per-server capacity ``cap_t`` (compute-bound tiers peak at ``tau = TPOT``, KV-bound ones
at shorter steps). A fleet
of N servers with tier shares ``w_t`` then serves at most ``N / sum_t(w_t / cap_t)`` requests/s.
Goodput only asks for ``attainment`` (90%) of the requests, and a request that is shed costs
nothing, so the bound at that threshold first drops the costliest ``1 - attainment`` of the requests
(cost: prompt tokens at the prefill rate plus output tokens at the tier's cost per decode token) and
then divides the rate by ``attainment``. The simulator judges only the requests that arrive in the
middle of a run (``sim.study.MEASURE_WINDOW``); ``windowed_bound`` is the bound for those requests at
the rate they arrive, which is what a goodput study compares against. A real placement loses to integer servers, queueing, TTFT
and the variance of output lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from polyserve.profile import Profile, tier_capacity
from polyserve.sim.workload import Arrival
from polyserve.slo import TierSet


@dataclass(frozen=True, slots=True)
class FluidBound:
    per_server_capacity: tuple[float, ...]  # req/s one server of each tier sustains
    shares: tuple[float, ...]  # fraction of requests in each tier
    servers_per_rate: float  # servers needed per 1 req/s of the mix

    def goodput(self, n_servers: int) -> float:
        return n_servers / self.servers_per_rate

    def server_shares(self) -> list[float]:
        """Fraction of the servers each tier needs (the best static partition)."""
        need = [
            w / c if c > 0 else 0.0
            for w, c in zip(self.shares, self.per_server_capacity, strict=True)
        ]
        total = sum(need)
        return [x / total for x in need] if total > 0 else [1.0 / len(need)] * len(need)


def request_cost_ms(profile: Profile, tiers: TierSet, a: Arrival) -> float:
    """Server-milliseconds one request takes at its tier's full batch (the cost ranking)."""
    tpot = tiers[a.tier].tpot_ms
    batch = max(profile.max_decode_batch(tpot, a.prompt_tokens + a.output_tokens / 2), 1)
    return a.prompt_tokens * profile.iteration.linear_per_token_ms + a.output_tokens * tpot / batch


def fluid_bound(
    profile: Profile, tiers: TierSet, arrivals: Sequence[Arrival], attainment: float = 1.0
) -> FluidBound:
    """The bound for this workload's lengths and tier mix, at ``attainment`` (see the module doc)."""
    if not arrivals:
        raise ValueError("the fluid bound needs a workload")
    if not (0 < attainment <= 1):
        raise ValueError(f"attainment must be in (0, 1], got {attainment}")
    if attainment < 1:
        keep = max(1, int(len(arrivals) * attainment))
        cheapest = sorted(arrivals, key=lambda a: request_cost_ms(profile, tiers, a))[:keep]
        full = fluid_bound(profile, tiers, cheapest)
        return FluidBound(full.per_server_capacity, full.shares, full.servers_per_rate * attainment)
    caps: list[float] = []
    shares: list[float] = []
    n = len(arrivals)
    for t, tier in enumerate(tiers.tiers):
        mine = [a for a in arrivals if a.tier == t]
        shares.append(len(mine) / n)
        if not mine:
            caps.append(0.0)
            continue
        prompts = np.array([a.prompt_tokens for a in mine], dtype=np.float64)
        outputs = np.array([a.output_tokens for a in mine], dtype=np.float64)
        caps.append(tier_capacity(profile, tier.tpot_ms, prompts, outputs))
    if any(c <= 0 for c, w in zip(caps, shares, strict=True) if w > 0):
        raise ValueError("a tier with requests cannot be served at its TPOT on this profile")
    per_rate = sum(w / c for w, c in zip(shares, caps, strict=True) if w > 0)
    return FluidBound(tuple(caps), tuple(shares), per_rate)


def windowed_bound(
    profile: Profile,
    tiers: TierSet,
    base: Sequence[Arrival],
    window: tuple[float, float],
    attainment: float = 1.0,
) -> FluidBound:
    """The bound on the rate scale of ``base`` (a workload at 1 req/s) for attainment measured
    only on the requests whose arrivals fall in ``window`` (fractions of the requests, as
    ``sim.study.windowed_attainment`` measures it).

    Goodput is a nominal rate R (the whole workload replayed at R req/s), but only the window's
    requests are judged, and they arrive at ``k * R`` with their own lengths and tier mix (a real
    trace is not stationary: the Azure conversation trace's middle runs at 1.17x its mean rate).
    The fluid bound of the window's requests, ``B_w``, caps their rate, so ``R <= B_w / k``.
    A Poisson workload has ``k ~ 1`` and the window's mix is the trace's.
    """
    if not base:
        raise ValueError("the fluid bound needs a workload")
    ordered = sorted(a.time for a in base)
    n = len(ordered)
    lo, hi = ordered[int(window[0] * (n - 1))], ordered[int(window[1] * (n - 1))]
    inside = [a for a in base if lo <= a.time <= hi]
    span = hi - lo
    if len(inside) < 2 or span <= 0:
        return fluid_bound(profile, tiers, base, attainment)
    k = len(inside) / span  # the window's rate when the workload runs at 1 req/s
    b = fluid_bound(profile, tiers, inside, attainment)
    return FluidBound(b.per_server_capacity, b.shares, b.servers_per_rate * k)

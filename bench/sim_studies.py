"""The paper's studies in the simulator: fleet scaling (per-instance goodput from 8 to 64
instances) and the tier-mix inversion (attainment before and after the mix flips mid-run), each on
stock vLLM and on PolyServe's engine extensions (``--engine``, both by default), in one run.

    .venv/bin/python bench/sim_studies.py [--quick] [--engine stock|polyserve|both]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from polyserve.profile import load_profile
from polyserve.sim.optimal import fluid_bound
from polyserve.sim.study import ENGINE_MODES, EngineMode, goodput_study, run_once
from polyserve.sim.workload import Shape, SLOAssigner, SLOMix, at_rate, rescale, shapes_for
from polyserve.slo import PAPER_TIERS

PROFILE = "llama-3.1-8b-h100"


def trace_of(name: str, n: int) -> list[Shape]:
    """``n`` requests of a trace at 1 req/s; a trace shorter than ``n`` is replayed end to end
    (each copy starts one mean gap after the last request of the previous one), so every fleet size
    gets runs that are long against a request's life."""
    one = shapes_for(name, None, 1)
    out = list(one[:n])
    period = one[-1].time + 1.0
    k = 1
    while len(out) < n:
        out.extend(replace(s, time=s.time + k * period) for s in one[: n - len(out)])
        k += 1
    return rescale(out, 1.0)


def scaling(fleets: list[int], policies: list[str], per_server: int, engine: EngineMode) -> None:
    prof = load_profile(PROFILE)
    print(
        f"\nFleet scaling on the {engine} engine: azure-conv, {per_server} requests per instance, "
        "goodput per instance (req/s)"
    )
    print(
        f"{'instances':>9} "
        + " ".join(f"{p:>18}" for p in policies)
        + f" {'optimum':>9} {'polyserve/opt':>13}"
    )
    for n in fleets:
        t0 = time.perf_counter()
        base = SLOAssigner(PAPER_TIERS, prof).assign(trace_of("azure-conv", per_server * n), seed=1)
        results, bound = goodput_study(prof, PAPER_TIERS, base, n, policies, engine=engine)
        opt = bound.goodput(n)
        cells = " ".join(f"{r.goodput.rate / n:>18.2f}" for r in results)
        print(
            f"{n:>9} {cells} {opt / n:>9.2f} {results[0].goodput.rate / opt:>13.1%}"
            f"  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


def inversion(
    n_servers: int, requests: int, load: float, policies: list[str], engine: EngineMode
) -> None:
    prof = load_profile(PROFILE)
    mix = SLOMix(invert_at=0.5)
    base = SLOAssigner(PAPER_TIERS, prof, mix).assign(shapes_for("azure-conv", requests, 1), seed=1)
    bound = fluid_bound(prof, PAPER_TIERS, base, attainment=0.9)
    rate = load * bound.goodput(n_servers)
    arrivals = at_rate(base, rate)
    mid = arrivals[len(arrivals) // 2].time
    print(
        f"\nTier-mix inversion on the {engine} engine: {requests} azure-conv requests at {rate:.0f} req/s ({load:.0%} of the optimum) on {n_servers} instances;"
    )
    print("the mix flips from 10/20/30/40% (t20..t100) to 40/30/20/10% halfway")
    print(f"{'policy':>18} {'before':>8} {'after':>8}")
    for name in policies:
        res = run_once(prof, PAPER_TIERS, n_servers, name, arrivals, bound, engine=engine)
        before = [o.attained for o in res.outcomes if o.arrival < mid]
        after = [o.attained for o in res.outcomes if o.arrival >= mid]
        print(
            f"{name:>18} {sum(before) / len(before):>8.3f} {sum(after) / len(after):>8.3f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engine", choices=[*ENGINE_MODES, "both"], default="both")
    args = ap.parse_args()
    engines = [m for m in ENGINE_MODES if args.engine in (m, "both")]
    policies = ["polyserve", "static-partition", "least-outstanding"]
    fleets = [8, 16] if args.quick else [8, 16, 32, 64]
    # runs must be long against a request's life (~10 s): ~1,000 requests per instance at full size
    for engine in engines:
        scaling(fleets, policies, per_server=300 if args.quick else 1000, engine=engine)
    for engine in engines:
        inversion(20, 4000 if args.quick else 8000, 0.7, policies, engine)


if __name__ == "__main__":
    main()

"""Simulator speed: requests simulated per second, and how the cost grows with fleet size and
trace length. Target (issue 3): 100,000 requests on 20 engines in under 60 s on one core.

    .venv/bin/python bench/sim_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import time

from polyserve.policy import make_policy
from polyserve.profile import load_profile
from polyserve.sim.fleet import FleetSim, SimConfig
from polyserve.sim.optimal import fluid_bound
from polyserve.sim.workload import SLOAssigner, at_rate, shapes_for
from polyserve.slo import PAPER_TIERS


def run(n_requests: int, n_servers: int, load: float = 0.6) -> tuple[float, int, float]:
    prof = load_profile("llama-3.1-8b-h100")
    base = SLOAssigner(PAPER_TIERS, prof).assign(shapes_for("sharegpt", n_requests, 1), seed=1)
    rate = load * fluid_bound(prof, PAPER_TIERS, base).goodput(n_servers)
    sim = FleetSim(SimConfig(prof, PAPER_TIERS, n_servers), make_policy("polyserve"))
    t0 = time.process_time()
    res = sim.run(at_rate(base, rate))
    cpu = time.process_time() - t0
    return cpu, res.steps, res.summary.attainment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller cases only")
    args = ap.parse_args()
    cases = [(10_000, 20), (20_000, 20), (10_000, 8), (10_000, 64)]
    if not args.quick:
        cases.insert(0, (100_000, 20))
    print(
        f"{'requests':>9} {'engines':>7} {'cpu s':>7} {'req/s simulated':>16} {'steps':>9} {'attainment':>10}"
    )
    for n, servers in cases:
        cpu, steps, att = run(n, servers)
        print(
            f"{n:>9} {servers:>7} {cpu:>7.1f} {n / cpu:>16,.0f} {steps:>9,} {att:>10.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from polyserve.policy import make_policy
from polyserve.profile import Profile, load_profile
from polyserve.sim.fleet import FleetSim, SimConfig
from polyserve.sim.optimal import fluid_bound, windowed_bound
from polyserve.sim.workload import Arrival, SLOAssigner, SLOMix, at_rate, shapes_for
from polyserve.slo import PAPER_TIERS, Tier, TierSet


def test_hand_computed_attainment(flat_profile: Profile) -> None:
    """One server, every step 10 ms: three requests of 3 tokens decode together at 10/20/30 ms."""
    tiers = TierSet([Tier("t4", 4.0, 20.0), Tier("t5", 5.0, 20.0), Tier("t10", 10.0, 20.0)])
    arrivals = [
        Arrival(0, 0.0, 10, 3, 2, 20.0, 10.0),  # deadlines 20/30/40 ms: attained
        Arrival(1, 0.0, 10, 3, 1, 20.0, 5.0),  # deadlines 20/25/30: token 2 exactly on time
        Arrival(2, 0.0, 10, 3, 0, 20.0, 4.0),  # deadlines 20/24/28: token 2 is 2 ms late
    ]
    sim = FleetSim(
        SimConfig(flat_profile, tiers, 1, chunk_mode="vllm"), make_policy("least-outstanding")
    )
    res = sim.run(arrivals)
    by_id = {o.request_id: o for o in res.outcomes}
    assert by_id["0"].attained and by_id["1"].attained
    assert not by_id["2"].attained
    assert by_id["2"].first_miss == 2 and by_id["2"].late_by_ms == pytest.approx(2.0)
    assert by_id["0"].ttft == pytest.approx(10.0) and by_id["0"].tpot == pytest.approx(10.0)
    assert res.summary.attainment == pytest.approx(2 / 3)
    assert res.instance_seconds == pytest.approx(0.030)


@pytest.mark.parametrize(
    "policy", ["polyserve", "pack-load", "least-outstanding", "co-chunk", "random"]
)
def test_every_request_has_one_outcome_and_runs_are_deterministic(policy: str) -> None:
    from polyserve.profile import load_profile

    prof = load_profile("llama-3.1-8b-h100")
    base = SLOAssigner(PAPER_TIERS, prof).assign(shapes_for("azure-conv", 400, 3), seed=3)
    mode = "dynamic" if policy in ("polyserve", "pack-load") else "vllm"

    def run() -> list[tuple[str, bool, float | None]]:
        sim = FleetSim(
            SimConfig(prof, PAPER_TIERS, 4, chunk_mode=mode),
            make_policy(policy, shares=[1, 1, 1, 1]),
        )
        res = sim.run(at_rate(base, 40.0))
        return sorted(
            ((o.request_id, o.attained, o.first_token) for o in res.outcomes),
            key=lambda x: int(x[0]),
        )

    first = run()
    assert [int(r) for r, _, _ in first] == sorted(a.rid for a in base)  # none lost, none doubled
    assert first == run()


def test_slo_assignment_follows_the_mix_and_inverts(profile: Profile) -> None:
    shapes = shapes_for("sharegpt", 4000, 7)
    arr = SLOAssigner(PAPER_TIERS, profile, SLOMix(invert_at=0.5)).assign(shapes, seed=7)
    first, second = arr[:2000], arr[2000:]
    share = lambda xs, t: sum(a.tier == t for a in xs) / len(xs)  # noqa: E731
    assert share(first, 3) == pytest.approx(0.4, abs=0.04) and share(second, 3) == pytest.approx(
        0.1, abs=0.04
    )
    assert all(
        a.ttft_ms >= profile.prefill_ms(a.prompt_tokens, profile.max_num_batched_tokens)
        for a in arr
    )


def test_fluid_bound_grows_with_looser_tiers(profile: Profile) -> None:
    base = SLOAssigner(PAPER_TIERS, profile).assign(shapes_for("azure-conv", 2000, 1), seed=1)
    bound = fluid_bound(profile, PAPER_TIERS, base)
    caps = bound.per_server_capacity
    assert all(a <= b for a, b in itertools.pairwise(caps))
    assert bound.goodput(20) == pytest.approx(2 * bound.goodput(10))
    assert sum(bound.server_shares()) == pytest.approx(1.0)


def test_windowed_bound_follows_the_measured_window(profile: Profile) -> None:
    """The bound is for the requests whose attainment is measured, at the rate they arrive."""
    base = SLOAssigner(PAPER_TIERS, profile).assign(shapes_for("sharegpt", 2000, 1), seed=1)
    even = [replace(a, time=float(i)) for i, a in enumerate(base)]  # exactly 1 req/s
    whole = fluid_bound(profile, PAPER_TIERS, even, attainment=0.9)
    everything = windowed_bound(profile, PAPER_TIERS, even, (0.0, 1.0), attainment=0.9)
    assert everything.goodput(20) == pytest.approx(whole.goodput(20), rel=1e-3)
    # the middle half arrives twice as fast: the same fleet sustains half the nominal rate there
    n = len(even)
    dense = [
        replace(
            a, time=i if i < n // 4 else n // 4 + (i - n // 4) / 2 if i < 3 * n // 4 else i - n // 4
        )
        for i, a in enumerate(even)
    ]
    mid = windowed_bound(profile, PAPER_TIERS, dense, (0.3, 0.7), attainment=0.9)
    alone = fluid_bound(
        profile, PAPER_TIERS, dense[int(0.3 * (n - 1)) : int(0.7 * (n - 1)) + 1], 0.9
    )
    assert mid.goodput(20) == pytest.approx(alone.goodput(20) / 2, rel=0.01)


def test_stock_engines_run_each_tiers_derived_flags() -> None:
    """The stock mode: a pinned server runs its tier's vLLM flags (``tier_engine``), a floating
    one the tightest tier's (one configuration for a shared pool); no dynamic chunking."""
    from polyserve.sim.study import sim_config, split_servers
    from polyserve.tier_engine import derive_tier_engine

    prof = load_profile("llama-3.1-8b-h100")
    shares = [0.1, 0.2, 0.3, 0.4]
    cfg = sim_config(prof, PAPER_TIERS, 10, "polyserve", "stock", shares)
    assert cfg.chunk_mode == "tier" and cfg.pinned == split_servers(10, shares)
    sim = FleetSim(cfg, make_policy("polyserve"))
    tiers = [s.view.tier for s in sim.servers]
    assert tiers == sorted(tiers) and [tiers.count(t) for t in range(4)] == list(cfg.pinned)
    for s in sim.servers:
        t = PAPER_TIERS[s.view.tier]
        want = derive_tier_engine(prof, t.tpot_ms, t.ttft_ms).engine_config(prof)
        assert s.engine.config == want and s.view.pinned
        assert s.view.max_batched_tokens == want.max_num_batched_tokens
    floating = sim.start_server(0.0, 0.0, tier=None, pinned=False)
    tight = PAPER_TIERS[0]
    pool = derive_tier_engine(prof, tight.tpot_ms, tight.ttft_ms, shared=True)
    assert sim.servers[floating.index].engine.config == pool.engine_config(prof)
    # a shared pool runs the tightest tier's flags; the load balancers keep vLLM's defaults
    pack = sim_config(prof, PAPER_TIERS, 10, "pack-load", "stock", shares)
    assert pack.chunk_mode == "tier" and pack.pinned is None
    lb = sim_config(prof, PAPER_TIERS, 10, "least-outstanding", "stock", shares)
    assert lb == sim_config(prof, PAPER_TIERS, 10, "least-outstanding", "polyserve", shares)
    # with the engine extensions, the SLO-aware policies chunk dynamically on floating servers
    ours = sim_config(prof, PAPER_TIERS, 10, "polyserve", "polyserve", shares)
    assert ours.chunk_mode == "dynamic" and ours.pinned is None


def test_servers_split_over_tiers_by_share() -> None:
    from polyserve.sim.study import split_servers

    assert split_servers(10, [0.1, 0.2, 0.3, 0.4]) == (1, 2, 3, 4)
    assert split_servers(6, [0.05, 0.05, 0.1, 0.8]) == (1, 1, 1, 3)  # each tier gets one
    assert split_servers(3, [0.1, 0.2, 0.3, 0.4]) == (0, 1, 1, 1)  # too few for every tier
    assert sum(split_servers(37, [0.13, 0.29, 0.21, 0.37])) == 37

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyserve.policy import POLICY_NAMES, FleetView, PendingRequest, ServerView, make_policy
from polyserve.policy.checks import can_take
from polyserve.policy.static_partition import partition
from polyserve.profile import Profile
from polyserve.slo import PAPER_TIERS, Tier, TierSet
from tests.conftest import make_profile

PROFILE: Profile = make_profile(kv_cache_tokens=200_000, max_num_seqs=256)

server_st = st.tuples(
    st.one_of(st.none(), st.integers(0, 3)),  # tier
    st.integers(0, 60),  # residents
    st.integers(0, 2000),  # mean prompt
    st.integers(0, 400),  # generated each
    st.integers(0, 3000),  # prefill backlog
)
request_st = st.tuples(
    st.integers(0, 3),
    st.integers(1, 3000),
    st.sampled_from([300.0, 500.0, 1000.0]),
    st.floats(0, 0.5),
)


def build_fleet(
    specs: list[tuple[int | None, int, int, int, int]], tiers: TierSet = PAPER_TIERS
) -> FleetView:
    servers = []
    for i, (tier, n, prompt, gen, backlog) in enumerate(specs):
        v = ServerView(f"s{i}", PROFILE, max_batched_tokens=2048, chunk_budget_ms=0.0, index=i)
        if n and tier is None:
            tier = 0
        v.tier = tier
        for _ in range(n):
            v.on_admit(prompt, 200.0, tiers[tier or 0].tpot_ms)
            v.on_first_token(prompt)
            v.on_tokens(gen)
        v.prefill_backlog = min(backlog, n * prompt)
        servers.append(v)
    return FleetView(tiers, servers)


def pending(
    tier: int, prompt: int, ttft: float, waited: float, tiers: TierSet = PAPER_TIERS
) -> PendingRequest:
    return PendingRequest(
        "r",
        tier,
        prompt,
        ttft,
        tiers[tier].tpot_ms,
        arrival=0.0,
        expected_output=200.0,
        ideal_ttft_ms=0.0,
    )


@settings(max_examples=300, deadline=None)
@given(specs=st.lists(server_st, min_size=1, max_size=8), req=request_st)
def test_polyserve_never_places_tighter_on_looser_and_always_admits(specs, req) -> None:  # type: ignore[no-untyped-def]
    fleet = build_fleet(specs)
    tier, prompt, ttft, waited = req
    r = pending(tier, prompt, ttft, waited)
    now = waited
    placement = make_policy("polyserve").place(r, fleet, now)
    if placement is None:
        # waiting was chosen: then no server of its own or a tighter tier, nor an idle one, could take it
        for s in fleet.servers:
            if s.tier is None or s.tier <= tier:
                budget = PAPER_TIERS[s.tier if s.tier is not None else tier].tpot_ms
                assert not can_take(s, r, budget, now).ok
        return
    host_tier = (
        placement.assign_tier if placement.assign_tier is not None else placement.server.tier
    )
    assert host_tier is not None and host_tier <= tier  # never a looser server
    assert placement.promoted == (host_tier < tier)
    assert can_take(placement.server, r, PAPER_TIERS[host_tier].tpot_ms, now).ok


@settings(max_examples=200, deadline=None)
@given(specs=st.lists(server_st, min_size=1, max_size=8), req=request_st)
def test_with_one_tier_polyserve_places_as_pack_load(specs, req) -> None:  # type: ignore[no-untyped-def]
    one = TierSet([Tier("only", 50.0, 500.0)])
    fleet = build_fleet(
        [(0 if t is not None or n else None, n, p, g, b) for t, n, p, g, b in specs], one
    )
    _, prompt, ttft, waited = req
    r = pending(0, prompt, ttft, waited, one)
    a = make_policy("polyserve").place(r, fleet, waited)
    b = make_policy("pack-load").place(r, fleet, waited)
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        # the same load; among equally loaded servers PolyServe prefers one already in the tier
        # over an idle one (pack-load has no idle pool), so ties may break differently
        load = [(p.server.projected_kv_tokens, p.server.residents) for p in (a, b)]
        assert load[0] == load[1]


def test_most_loaded_feasible_server_wins() -> None:
    fleet = build_fleet(
        [(2, 5, 500, 50, 0), (2, 20, 500, 50, 0), (2, 10, 500, 50, 0), (None, 0, 0, 0, 0)]
    )
    placement = make_policy("polyserve").place(pending(2, 400, 1000.0, 0.0), fleet, 0.0)
    assert placement is not None and placement.server.name == "s1"


def test_lazy_promotion_only_when_own_tier_and_idle_pool_are_full() -> None:
    # the t50 server is full (its projected KV, 85 x 2200 tokens, passes 90% of the cache)
    fleet = build_fleet([(2, 85, 2000, 300, 0), (0, 1, 100, 10, 0)])
    placement = make_policy("polyserve").place(pending(2, 100, 1000.0, 0.0), fleet, 0.0)
    assert placement is not None and placement.server.name == "s1" and placement.promoted
    # a t20 request never goes to the t50 server, however empty
    fleet = build_fleet([(2, 0, 0, 0, 0), (0, 85, 2000, 300, 0)])
    fleet.servers[0].tier = 2
    assert make_policy("polyserve").place(pending(0, 100, 1000.0, 0.0), fleet, 0.0) is None


def test_static_partition_apportions_every_server() -> None:
    # one each, then 6 spare by share: 0.6/1.2/1.8/2.4 -> 0/1/1/2, the largest remainders (t2, t0) +1
    assert partition(10, [0.1, 0.2, 0.3, 0.4]) == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(partition(20, [1, 1, 1, 1])) == 20


def test_first_token_check_counts_on_the_decodes_banked_slack() -> None:
    """With slack-aware chunking the engine runs bigger prefill chunks while its decodes are ahead
    of their deadlines; the first-token check predicts them (at ``PREDICT_SLACK_SHARE``)."""
    fleet = build_fleet([(0, 40, 1000, 50, 0)])
    s = fleet.servers[0]
    s.chunk_budget_ms = 18.0  # dynamic chunking at 90% of the 20 ms TPOT
    req = pending(0, 3000, 300.0, 0.0)
    s.decode_slack_ms = 0.0
    tight = can_take(s, req, 20.0, 0.0)
    s.decode_slack_ms = 800.0
    banked = can_take(s, req, 20.0, 0.0)
    assert not tight.ok and tight.reason == "ttft"
    assert banked.ok and banked.ttft_pred_ms < tight.ttft_pred_ms


def test_every_listed_policy_is_built_and_nothing_else() -> None:
    for name in POLICY_NAMES:
        assert make_policy(name, shares=[1.0] * 4).name == name
    with pytest.raises(ValueError, match="unknown policy 'nope'; choose from polyserve, ") as e:
        make_policy("nope")
    assert all(name in str(e.value) for name in POLICY_NAMES)


def test_a_static_budget_counts_a_full_prefill_chunk_against_the_tpot() -> None:
    """On stock vLLM every step that prefills fills the token budget, so the decodes' TPOT must
    hold in such a step; dynamic chunking cuts the chunk to fit instead. The running cap is the
    engine's own ``--max-num-seqs``."""
    from polyserve.policy.checks import peak_step_ms

    def server(static: bool, budget: int, seqs: int = 0) -> ServerView:
        v = ServerView("s", PROFILE, max_batched_tokens=budget, static_budget=static)
        v.max_num_seqs = seqs
        v.tier = 0
        for _ in range(8):
            v.on_admit(200, 50.0, 20.0)
            v.on_first_token(200)
        return v

    req = pending(0, 100, 1000.0, 0.0)
    big = PROFILE.max_num_batched_tokens
    assert peak_step_ms(server(True, big), 9, 2000) > PAPER_TIERS[0].tpot_ms
    assert not can_take(server(True, big), req, 20.0, 0.0).ok  # a full chunk breaks 20 ms
    assert can_take(server(False, big), req, 20.0, 0.0).ok  # dynamic chunking would cut it
    assert peak_step_ms(server(False, big), 9, 2000) == PROFILE.step_ms(9, 2000)
    small = 64  # a budget derived for the tier: a full chunk still fits
    assert can_take(server(True, small), req, 20.0, 0.0).ok
    assert can_take(server(True, small, seqs=8), req, 20.0, 0.0).reason == "seqs"

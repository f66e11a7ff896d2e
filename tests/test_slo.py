from __future__ import annotations

import math

import pytest

from polyserve.slo import (
    PAPER_TIERS,
    RequestOutcome,
    SLOError,
    Tier,
    TierSet,
    bin_tier,
    check_deadlines,
    goodput_search,
    summarize,
    token_deadline,
)


def test_token_deadline_is_arrival_plus_ttft_plus_i_tpot() -> None:
    assert token_deadline(10.0, 500.0, 20.0, 0) == pytest.approx(10.5)
    assert token_deadline(10.0, 500.0, 20.0, 3) == pytest.approx(10.56)
    verdict = check_deadlines(10.0, [10.5, 10.52, 10.5401], 500.0, 20.0)
    assert verdict.first_miss == 2 and verdict.late_by_ms == pytest.approx(0.1)


def test_binning_rounds_down_to_the_next_tighter_tier() -> None:
    def named(tpot: float | None, ttft: float | None = None) -> str | None:
        got = bin_tier(PAPER_TIERS, tpot, ttft)
        return got.name if got is not None else None

    assert [named(x) for x in (20, 29.9, 30, 40, 99, 5000)] == [
        "t20", "t20", "t30", "t30", "t50", "t100"
    ]  # fmt: skip
    assert named(10) is None  # tighter than the tightest tier: none can promise it
    assert named(float("nan")) is None
    assert named(None) == "t100"  # no target: the loosest
    # a TTFT target too: the loosest tier that meets both
    tiers = [Tier("fast", 20, 200), Tier("slow", 50, 2000), Tier("slow-start", 40, 300)]
    assert bin_tier(tiers, 60, 1000) == tiers[2]
    assert bin_tier(tiers, 60, None) == tiers[1]
    assert bin_tier(tiers, 30, 100) is None


def test_tier_set_orders_tightest_first_and_refuses_bad_sets() -> None:
    ts = TierSet([Tier("slow", 100, 1000), Tier("fast", 20, 300)])
    assert [t.name for t in ts] == ["fast", "slow"]
    assert ts.index("slow") == 1
    with pytest.raises(SLOError, match="unique"):
        TierSet([Tier("a", 20, 300), Tier("a", 30, 300)])
    with pytest.raises(SLOError, match="distinct"):
        TierSet([Tier("a", 20, 300), Tier("b", 20, 300)])
    with pytest.raises(SLOError, match="tpot_ms"):
        Tier("x", -1, 300)
    with pytest.raises(SLOError, match="unknown tier"):
        ts.index("nope")


def test_deadlines_hand_computed() -> None:
    # arrival 10 s, TTFT 500 ms, TPOT 50 ms: deadlines 10.5, 10.55, 10.6, 10.65
    ok = check_deadlines(10.0, [10.4, 10.55, 10.58, 10.60], ttft_ms=500, tpot_ms=50)
    assert ok.attained and ok.first_miss is None
    assert ok.worst_slack_ms == pytest.approx(0.0, abs=1e-6)  # token 1 exactly on time
    # token 2 is 30 ms late; a later fast token does not undo a miss
    miss = check_deadlines(10.0, [10.4, 10.5, 10.63, 10.64], ttft_ms=500, tpot_ms=50)
    assert not miss.attained and miss.first_miss == 2
    assert miss.late_by_ms == pytest.approx(30.0)
    # a slow token made up for later is fine under the deadline SLO
    catchup = check_deadlines(0.0, [0.1, 0.3, 0.31, 0.32], ttft_ms=300, tpot_ms=20)
    assert catchup.attained
    late_first = check_deadlines(0.0, [0.301], ttft_ms=300, tpot_ms=20)
    assert late_first.first_miss == 0 and late_first.late_by_ms == pytest.approx(1.0)
    assert not check_deadlines(0.0, [], 300, 20).attained


def test_summary_per_tier_and_cost() -> None:
    def o(tier: str, ok: bool, ttft: float, n: int = 5, tpot: float = 0.02) -> RequestOutcome:
        return RequestOutcome(
            request_id=f"{tier}{ttft}",
            tier=tier,
            arrival=0.0,
            ttft_ms=500,
            tpot_ms=50,
            prompt_tokens=10,
            output_tokens=n,
            first_token=ttft,
            last_token=ttft + tpot * (n - 1),
            attained=ok,
        )

    s = summarize(
        [o("t20", True, 0.1), o("t20", False, 0.3), o("t50", True, 0.2)],
        tier_order=["t20", "t30", "t50"],
        instance_seconds=30.0,
    )
    assert s.requests == 3 and s.attained == 2
    assert s.attainment == pytest.approx(2 / 3)
    assert list(s.per_tier) == ["t20", "t30", "t50"]
    assert s.per_tier["t20"].attainment == 0.5
    assert math.isnan(s.per_tier["t30"].attainment)
    assert s.per_tier["t20"].ttft_ms["p50"] == pytest.approx(200.0)
    assert s.per_tier["t50"].tpot_ms["p50"] == pytest.approx(20.0)
    assert s.cost_per_request == pytest.approx(10.0)


def test_goodput_search_finds_the_threshold_rate() -> None:
    # attainment falls linearly from 1 at rate 0 to 0 at rate 20: 90% at rate 2
    curve = lambda r: max(0.0, 1.0 - r / 20.0)  # noqa: E731
    g = goodput_search(curve, lo=0.5, hi=1.0, threshold=0.9, rel_tol=0.001)
    assert g.rate == pytest.approx(2.0, rel=0.002)
    assert all(p.attainment >= 0.9 for p in g.points if p.rate <= g.rate)
    assert goodput_search(lambda r: 0.5, lo=1, hi=2).rate == 0.0
    with pytest.raises(SLOError):
        goodput_search(curve, lo=2, hi=1)

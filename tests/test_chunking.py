"""The dynamic-chunking rule (polyserve.chunking), and the engine model cutting its chunks with it."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import polyserve.engine as engine_mod
from polyserve.chunking import (
    dynamic_chunk,
    most_urgent_slack_ms,
    slack_aware_budget_ms,
    step_token_budget,
)
from polyserve.engine import Engine, EngineConfig, Request
from polyserve.profile import Profile, load_profile

PROFILE = load_profile("llama-3.1-8b-h100")
BS = PROFILE.block_size


def step(
    p: Profile, n: int, ctx: float, past: int, c: int, pre: int = 0, pairs: float = 0.0
) -> float:
    return p.step_ms(n, ctx, pre + c, pairs + c * (past + c))


def test_nothing_is_cut_without_a_budget_without_decodes_or_within_a_block() -> None:
    assert dynamic_chunk(PROFILE, 0.0, 8, 8000, 0, 4096, BS) == 4096
    assert dynamic_chunk(PROFILE, 5.0, 0, 0, 0, 4096, BS) == 4096
    assert dynamic_chunk(PROFILE, 0.001, 8, 8000, 0, BS, BS) == BS
    assert dynamic_chunk(PROFILE, 0.001, 8, 8000, 0, 3, BS) == 3


def test_a_cut_keeps_the_step_within_the_budget_and_never_goes_below_a_block() -> None:
    full = step(PROFILE, 8, 8000, 0, 4096)
    budget = full / 2
    c = dynamic_chunk(PROFILE, budget, 8, 8000, 0, 4096, BS)
    assert BS < c < 4096
    assert step(PROFILE, 8, 8000, 0, c) <= budget < step(PROFILE, 8, 8000, 0, c + 1)
    assert dynamic_chunk(PROFILE, 0.001, 8, 8000, 0, 4096, BS) == BS  # not even one token fits


@settings(max_examples=200, deadline=None)
@given(
    budget=st.floats(0.5, 200.0),
    n=st.integers(1, 256),
    ctx_each=st.integers(1, 4000),
    past=st.integers(0, 8000),
    limit=st.integers(1, 8192),
    pre=st.integers(0, 2048),
)
def test_the_chunk_is_the_largest_that_fits_bounded_by_limit_and_a_block(
    budget: float, n: int, ctx_each: int, past: int, limit: int, pre: int
) -> None:
    ctx = n * ctx_each
    pairs = float(pre * pre)
    c = dynamic_chunk(PROFILE, budget, n, ctx, past, limit, BS, pre, pairs)
    if limit <= BS:
        assert c == limit
        return
    assert BS <= c <= limit
    if c > BS:
        assert step(PROFILE, n, ctx, past, c, pre, pairs) <= budget
    if c < limit:
        assert step(PROFILE, n, ctx, past, c + 1, pre, pairs) > budget


def test_slack_raises_the_budget_only_when_larger_and_only_when_on() -> None:
    assert slack_aware_budget_ms(20.0, 0.5, 100.0) == 50.0
    assert slack_aware_budget_ms(20.0, 0.5, 10.0) == 20.0
    assert slack_aware_budget_ms(20.0, 0.5, -30.0) == 20.0  # late: never below the budget
    assert slack_aware_budget_ms(20.0, 0.0, 100.0) == 20.0  # share 0: off
    assert slack_aware_budget_ms(0.0, 0.5, 100.0) == 0.0  # dynamic chunking off
    assert slack_aware_budget_ms(20.0, 0.5, math.inf) == math.inf


def test_the_step_budget_is_the_decodes_plus_the_one_chunk_rule() -> None:
    for budget in (0.0, 10.0, 25.0, 80.0):
        for n, max_tokens in ((0, 2048), (8, 2048), (64, 512), (500, 512)):
            total = step_token_budget(PROFILE, budget, n, n * 1500, 300, max_tokens, BS)
            room = max(max_tokens - n, 0)
            assert total == min(
                max_tokens, n + dynamic_chunk(PROFILE, budget, n, n * 1500, 300, room, BS)
            )
            assert total <= max_tokens


def test_the_most_urgent_slack_is_the_earliest_next_deadline() -> None:
    # token i due at arrival + (ttft + i * tpot) / 1000
    decodes = [(10.0, 5), (10.5, 1)]  # due 10 + 0.5 + 0.25 = 10.75; 10.5 + 0.5 + 0.05 = 11.05
    assert most_urgent_slack_ms(10.7, decodes, 500.0, 50.0) == pytest.approx(50.0)
    assert most_urgent_slack_ms(10.7, [], 500.0, 50.0) == math.inf


def _run(cfg: EngineConfig, seed: int) -> list[tuple[int, list[float]]]:
    rng = random.Random(seed)
    eng = Engine(PROFILE, cfg)
    now, reqs = 0.0, []
    for i in range(120):
        deadline = now + 0.8 if i % 3 else math.inf
        r = Request(
            i,
            rng.randint(1, 3000),
            rng.randint(1, 200),
            arrival=now,
            first_deadline=deadline,
            tpot_ms=40.0 if i % 3 else 0.0,
        )
        eng.add(r)
        reqs.append(r)
        for _ in range(rng.randint(0, 3)):
            now += eng.step(now).duration_ms / 1000.0 or 0.001
    while eng.has_work:
        now += eng.step(now).duration_ms / 1000.0
    return [(r.preemptions, eng.token_times(r)) for r in reqs]


def _old_dynamic_chunk(
    profile: Profile,
    budget: float,
    n: int,
    ctx: float,
    past: int,
    chunk: int,
    bs: int,
    scheduled: int = 0,
    pairs: float = 0.0,
) -> int:
    """The rule as engine.step had it inline before polyserve.chunking."""
    if budget and n and chunk > bs:
        return max(profile.max_prefill_chunk(budget, n, ctx, past, chunk, scheduled, pairs), bs)
    return chunk


def _old_slack(budget: float, share: float, slack: float) -> float:
    return max(budget, slack * share) if budget and share else budget


@pytest.mark.parametrize("share", [0.0, 0.5])
@pytest.mark.parametrize("budget", [12.0, 30.0])
def test_the_engine_model_runs_as_with_the_old_inline_rule(
    monkeypatch: pytest.MonkeyPatch, budget: float, share: float
) -> None:
    cfg = EngineConfig.from_profile(
        PROFILE, chunk_budget_ms=budget, slack_share=share, long_prefill_token_threshold=256
    )
    new = _run(cfg, 3)
    monkeypatch.setattr(engine_mod, "dynamic_chunk", _old_dynamic_chunk)
    monkeypatch.setattr(engine_mod, "slack_aware_budget_ms", _old_slack)
    assert _run(cfg, 3) == new
    stock = _run(EngineConfig.from_profile(PROFILE, long_prefill_token_threshold=256), 3)
    assert stock != new  # the budget really cut chunks in this workload


def test_the_engine_model_cuts_its_chunks_with_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def one_block(profile: Profile, budget: float, n: int, *a: Any) -> int:
        seen.append(budget)
        return BS if n else int(a[2])  # a[2]: the uncut chunk

    monkeypatch.setattr(engine_mod, "dynamic_chunk", one_block)
    eng = Engine(PROFILE, EngineConfig.from_profile(PROFILE, chunk_budget_ms=17.0))
    eng.add(Request("a", 40, 50))
    eng.step()  # a prefills alone (no decodes: uncut) and emits its first token
    eng.add(Request("b", 4000, 5))
    res = eng.step()
    assert res.n_decode == 1 and res.prefill_tokens == BS  # the rule's answer is the chunk
    assert seen[-1] == 17.0

"""The per-tier stock-vLLM flags derived from a profile (polyserve.tier_engine)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyserve.policy.checks import step_budget_ms
from polyserve.profile import load_profile
from polyserve.tier_engine import (
    FLAG_BUDGET,
    FLAG_LONG_PREFILL,
    FLAG_POLICY,
    FLAG_SEQS,
    TierEngine,
    capacity_batch,
    derive_tier_engine,
    mixed_step_ms,
    typical_context_tokens,
    working_decode_batch,
)

PROFILE = load_profile("llama-3.1-8b-h100")
PAPER_TPOTS = (20.0, 30.0, 50.0, 100.0)


def assert_vllm_valid(e: TierEngine) -> None:
    assert e.max_num_seqs >= 1
    assert e.max_num_batched_tokens >= e.max_num_seqs
    assert e.max_num_batched_tokens % PROFILE.block_size == 0
    assert e.max_model_len <= PROFILE.kv_cache_tokens
    assert 0 <= e.long_prefill_token_threshold <= e.max_model_len
    assert e.long_prefill_token_threshold < e.max_num_batched_tokens or (
        e.long_prefill_token_threshold == 0
    )
    assert e.enable_chunked_prefill
    e.engine_config(PROFILE)  # the engine model's own checks (vLLM's) pass


def assert_budget_is_the_largest_that_fits(tpot: float, e: TierEngine) -> None:
    n = working_decode_batch(PROFILE, tpot)
    budget = e.max_num_batched_tokens
    block = PROFILE.block_size
    floor = max(block, -(-e.max_num_seqs // block) * block)  # whole blocks, at least the seqs
    plan = step_budget_ms(tpot)
    if budget > floor:  # a fitted budget: its mixed step fits the plan, one more block would not
        assert mixed_step_ms(PROFILE, n, budget) <= plan
        cap = PROFILE.max_num_batched_tokens
        assert budget == cap or mixed_step_ms(PROFILE, n, budget + PROFILE.block_size) > plan


@pytest.mark.parametrize("tpot", PAPER_TPOTS)
def test_full_budget_at_the_working_batch_fits_the_planned_step_and_one_more_block_does_not(
    tpot: float,
) -> None:
    """The budget is fitted to the step admission plans for (the TPOT less its headroom), not
    to the whole TPOT: admission's TPOT-at-peak check then accepts the working batch."""
    e = derive_tier_engine(PROFILE, tpot, 500.0)
    n = working_decode_batch(PROFILE, tpot)
    plan = step_budget_ms(tpot)
    assert plan < tpot
    assert 1 <= n <= e.max_num_seqs
    assert mixed_step_ms(PROFILE, n, e.max_num_batched_tokens) <= plan
    assert mixed_step_ms(PROFILE, n, e.max_num_batched_tokens + PROFILE.block_size) > plan
    assert_vllm_valid(e)


@pytest.mark.parametrize("tpot", PAPER_TPOTS)
def test_max_num_seqs_is_the_capacity_batch(tpot: float) -> None:
    e = derive_tier_engine(PROFILE, tpot, 500.0)
    ctx = typical_context_tokens()
    assert e.max_num_seqs == capacity_batch(PROFILE, tpot)
    assert PROFILE.step_ms(e.max_num_seqs, e.max_num_seqs * ctx) <= tpot
    kv_full = (e.max_num_seqs + 1) * ctx > PROFILE.kv_cache_tokens
    assert kv_full or PROFILE.step_ms(e.max_num_seqs + 1, (e.max_num_seqs + 1) * ctx) > tpot


def test_tighter_tpot_gives_a_smaller_budget_and_batch() -> None:
    engines = [derive_tier_engine(PROFILE, t, 500.0) for t in PAPER_TPOTS]
    budgets = [e.max_num_batched_tokens for e in engines]
    seqs = [e.max_num_seqs for e in engines]
    assert budgets == sorted(budgets) and len(set(budgets)) == len(budgets)
    assert seqs == sorted(seqs) and seqs[0] < seqs[-1]


def test_unattainable_tpot_still_gives_a_valid_engine() -> None:
    e = derive_tier_engine(PROFILE, 5.0, 500.0)
    assert (e.max_num_seqs, e.max_num_batched_tokens) == (1, PROFILE.block_size)
    assert "not even one decode" in e.reasons[FLAG_SEQS]
    assert_vllm_valid(e)


def test_a_loose_tpot_keeps_the_profiles_budget() -> None:
    e = derive_tier_engine(PROFILE, 2000.0, 60_000.0)
    assert e.max_num_batched_tokens == PROFILE.max_num_batched_tokens


def test_long_prefill_threshold_follows_the_ttft() -> None:
    short = derive_tier_engine(PROFILE, 20.0, 100.0)
    long = derive_tier_engine(PROFILE, 20.0, 60_000.0)
    assert short.long_prefill_token_threshold == 0
    assert short.reasons[FLAG_LONG_PREFILL].startswith("off")
    half_in_blocks = long.max_num_batched_tokens // 2 // PROFILE.block_size * PROFILE.block_size
    assert long.long_prefill_token_threshold == half_in_blocks
    assert FLAG_LONG_PREFILL not in short.vllm_args()
    assert long.vllm_args()[-2:] == [FLAG_LONG_PREFILL, str(long.long_prefill_token_threshold)]


def test_shared_servers_schedule_by_priority() -> None:
    own = derive_tier_engine(PROFILE, 50.0, 1000.0)
    shared = derive_tier_engine(PROFILE, 50.0, 1000.0, shared=True)
    assert own.scheduling_policy == "fcfs" and FLAG_POLICY not in own.vllm_args()
    assert shared.vllm_args()[-2:] == [FLAG_POLICY, "priority"]
    assert shared.engine_config(PROFILE).scheduling_policy == "priority"


def test_vllm_args_and_engine_config_say_the_same() -> None:
    e = derive_tier_engine(PROFILE, 50.0, 1000.0, shared=True)
    args = e.vllm_args()
    value = {args[i]: args[i + 1] for i in range(len(args) - 1) if not args[i + 1].startswith("-")}
    cfg = e.engine_config(PROFILE)
    assert int(value[FLAG_BUDGET]) == cfg.max_num_batched_tokens
    assert int(value[FLAG_SEQS]) == cfg.max_num_seqs
    assert int(value["--max-model-len"]) == cfg.max_model_len
    assert int(value[FLAG_LONG_PREFILL]) == cfg.long_prefill_token_threshold
    assert "--enable-chunked-prefill" in args
    assert cfg.chunk_budget_ms == 0.0  # stock vLLM: no dynamic chunking
    assert set(e.reasons) == {a for a in args if a.startswith("--")}


def test_the_users_flags_win_flag_by_flag() -> None:
    e = derive_tier_engine(PROFILE, 50.0, 1000.0, shared=True)
    user = [
        "--model",
        "m",
        "--max-num-seqs=7",
        "--max_num_batched_tokens",
        "4096",
        "--no-enable-chunked-prefill",
        "--scheduling-policy",
        "fcfs",
    ]
    args = e.args_after(user)
    assert args[: len(user)] == user
    assert args[len(user) :] == [
        "--max-model-len",
        str(e.max_model_len),
        FLAG_LONG_PREFILL,
        str(e.long_prefill_token_threshold),
    ]
    assert e.args_after([]) == e.vllm_args()


@settings(max_examples=40, deadline=None)
@given(
    tpot=st.floats(min_value=5.0, max_value=400.0), ttft=st.floats(min_value=10.0, max_value=1e5)
)
def test_any_tpot_gives_a_valid_engine_whose_budget_fits(tpot: float, ttft: float) -> None:
    e = derive_tier_engine(PROFILE, tpot, ttft)
    assert_vllm_valid(e)
    assert_budget_is_the_largest_that_fits(tpot, e)
    tighter = derive_tier_engine(PROFILE, tpot * 0.8, ttft)
    assert tighter.max_num_batched_tokens <= e.max_num_batched_tokens
    assert tighter.max_num_seqs <= e.max_num_seqs


def test_profile_show_prints_the_derived_flags_and_why() -> None:
    from typer.testing import CliRunner

    from polyserve.cli import app

    result = CliRunner().invoke(
        app, ["profile", "show", "llama-3.1-8b-h100", "--tpot", "30", "--ttft", "400"]
    )
    assert result.exit_code == 0, result.output
    e = derive_tier_engine(PROFILE, 30.0, 400.0, shared=True)
    out = " ".join(result.output.split())  # undo the console's wrapping
    assert " ".join(e.vllm_args()) in out
    for flag, why in e.reasons.items():
        assert f"{flag} {why}" in out

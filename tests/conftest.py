"""Shared test fixtures: small hand-made profiles whose numbers are easy to check by hand."""

from __future__ import annotations

import pytest

from polyserve.profile import IterationModel, Profile


def make_profile(
    *,
    kv_cache_tokens: int = 100_000,
    block_size: int = 16,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 2048,
    max_model_len: int = 8192,
    overhead_ms: float = 2.0,
    linear_floor_ms: float = 8.0,
    linear_base_ms: float = 6.0,
    linear_per_token_ms: float = 0.05,
    decode_attn_per_ctx_token_ms: float = 5e-5,
    prefill_attn_per_pair_ms: float = 1e-7,
    name: str = "test",
) -> Profile:
    return Profile(
        name=name,
        model="test-model",
        gpu="test-gpu",
        kv_cache_tokens=kv_cache_tokens,
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=min(max_model_len, kv_cache_tokens),
        iteration=IterationModel(
            overhead_ms=overhead_ms,
            linear_floor_ms=linear_floor_ms,
            linear_base_ms=linear_base_ms,
            linear_per_token_ms=linear_per_token_ms,
            decode_attn_per_ctx_token_ms=decode_attn_per_ctx_token_ms,
            prefill_attn_per_pair_ms=prefill_attn_per_pair_ms,
        ),
    )


@pytest.fixture
def profile() -> Profile:
    return make_profile()


@pytest.fixture
def flat_profile() -> Profile:
    """Every step takes exactly 10 ms, whatever is in it."""
    return make_profile(
        overhead_ms=0.0,
        linear_floor_ms=10.0,
        linear_base_ms=0.0,
        linear_per_token_ms=0.0,
        decode_attn_per_ctx_token_ms=0.0,
        prefill_attn_per_pair_ms=0.0,
    )

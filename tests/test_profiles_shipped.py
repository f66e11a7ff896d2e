"""The shipped profiles: they load, reproduce their measured sources within the stated error, and
land inside the published calibration ranges (see profiles/README.md for the derivation)."""

from __future__ import annotations

import itertools

import pytest

from polyserve.profile import (
    MEASURED_DIR,
    Profile,
    available_profiles,
    check_against_source,
    load_profile,
)

REQUIRED = ("llama-3.1-8b-a100", "llama-3.1-8b-h100", "llama-3.1-8b-h200", "llama-3.1-70b-h100-tp4")
SHIPPED = available_profiles()

# Published small-batch decode step of an 8B model (reference/vllm-interface.md).
DECODE_RANGE_MS = {"llama-3.1-8b-h100": (10.0, 15.0), "llama-3.1-8b-a100": (15.0, 25.0)}
SMALL_BATCHES = (1, 2, 4, 8, 16)


def test_the_required_profiles_are_shipped() -> None:
    assert set(REQUIRED) <= set(SHIPPED), SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_loads_and_is_consistent(name: str) -> None:
    p = load_profile(name)
    assert p.name == name
    assert p.block_size == 16
    assert p.kv_cache_tokens % p.block_size == 0
    assert p.max_model_len <= p.kv_cache_tokens
    assert p.validation, "every shipped profile names the measured data it was derived from"
    assert "derive.py" in p.provenance
    it = p.iteration
    # Memory-bound floor above the line's intercept: the knee is at a positive token count.
    assert it.linear_floor_ms > it.linear_base_ms > 0
    assert it.linear_per_token_ms > 0
    assert it.decode_attn_per_ctx_token_ms > 0
    assert it.prefill_attn_per_pair_ms > 0


@pytest.mark.parametrize(
    ("name", "index"),
    [(n, i) for n in SHIPPED for i in range(len(load_profile(n).validation))],
)
def test_profile_predicts_its_source_within_stated_error(name: str, index: int) -> None:
    p = load_profile(name)
    source = p.validation[index]
    assert (MEASURED_DIR / source.file).is_file()
    err = check_against_source(p, source)
    assert err.n >= 5
    assert err.median_pct <= source.stated_median_error_pct, (name, source.file, str(err))
    assert err.max_pct <= source.stated_max_error_pct, (name, source.file, str(err))
    # A stated bound is a bound, not a blank cheque: it is the measured error plus rounding.
    assert source.stated_median_error_pct - err.median_pct < 0.25
    assert source.stated_max_error_pct - err.max_pct < 0.25


def test_direct_a100_profile_is_tight() -> None:
    """The A100 8B profile is a fit to direct measurements: it must be close."""
    p = load_profile("llama-3.1-8b-a100")
    (source,) = p.validation
    assert source.scale == 1.0
    err = check_against_source(p, source)
    assert err.median_pct < 5.0
    assert err.p90_pct < 12.0


@pytest.mark.parametrize("name", SHIPPED)
def test_step_time_monotone_in_batch_and_context(name: str) -> None:
    p = load_profile(name)
    for ctx in (128, 1024, 4096, 32768):
        times = [p.step_ms(b, b * ctx) for b in range(1, p.max_num_seqs + 1, 7)]
        assert all(b >= a for a, b in itertools.pairwise(times)), (ctx, times[:5])
    for b in (1, 16, 256):
        times = [p.step_ms(b, b * ctx) for ctx in (0, 256, 1024, 4096, 16384, 65536)]
        assert all(y > x for x, y in itertools.pairwise(times)), (b, times)
    prefill = [p.step_ms(0, 0.0, c, c * c) for c in (1, 256, 1024, 2048, p.max_num_batched_tokens)]
    assert all(y >= x for x, y in itertools.pairwise(prefill))
    assert prefill[-1] > prefill[0]


@pytest.mark.parametrize("name", sorted(DECODE_RANGE_MS))
def test_small_batch_decode_in_published_range(name: str) -> None:
    lo, hi = DECODE_RANGE_MS[name]
    p = load_profile(name)
    for b in SMALL_BATCHES:
        step = p.step_ms(b, b * 1024)
        assert lo <= step <= hi, (name, b, step)


def _pair() -> tuple[Profile, Profile]:
    return load_profile("llama-3.1-8b-h100"), load_profile("llama-3.1-8b-h200")


def test_h200_holds_more_kv_than_h100() -> None:
    h100, h200 = _pair()
    assert h200.kv_cache_tokens > 1.8 * h100.kv_cache_tokens
    # 8B weights (~15 GiB) are the same on both: the extra ~60 GiB all goes to the cache.
    assert h200.kv_cache_tokens - h100.kv_cache_tokens > 400_000


def test_h200_is_faster_when_memory_bound_and_equal_when_compute_bound() -> None:
    h100, h200 = _pair()
    for n in (1, 8, 32):
        ratio = h200.iteration.linear_ms(n) / h100.iteration.linear_ms(n)
        assert 0.65 < ratio < 0.80, (n, ratio)  # 3.35 / 4.8 = 0.70
    for n in (4096, 8192):
        ratio = h200.iteration.linear_ms(n) / h100.iteration.linear_ms(n)
        assert 0.97 < ratio <= 1.0, (n, ratio)  # same 989 TFLOP/s
    for n in range(1, 8193, 64):
        assert h200.iteration.linear_ms(n) <= h100.iteration.linear_ms(n)
    ratio = (
        h200.iteration.decode_attn_per_ctx_token_ms / h100.iteration.decode_attn_per_ctx_token_ms
    )
    assert ratio == pytest.approx(3.35 / 4.8, rel=1e-3)
    assert h200.step_ms(8, 8 * 1024) < h100.step_ms(8, 8 * 1024)


def test_gpu_and_model_ordering() -> None:
    a100, h100 = load_profile("llama-3.1-8b-a100"), load_profile("llama-3.1-8b-h100")
    big = load_profile("llama-3.1-70b-h100-tp4")
    assert a100.step_ms(1, 1024) > h100.step_ms(1, 1024)
    assert a100.iteration.linear_per_token_ms > 2.5 * h100.iteration.linear_per_token_ms
    assert big.tensor_parallel == 4 and big.gpus == 4
    # Linear layers: a TP4 shard of a 70B layer holds 1.057x a Llama-2-7B layer, the 8B layer
    # 1.078x; 80 vs 32 layers -> 2.45x, plus 160 all-reduces per step.
    ratio = big.iteration.linear_ms(1) / h100.iteration.linear_ms(1)
    assert 2.3 < ratio < 2.7, ratio
    for tpot in (30.0, 50.0, 100.0):
        assert h100.max_decode_batch(tpot, 1024) > a100.max_decode_batch(tpot, 1024) > 0


def test_vllm_default_limits() -> None:
    a100 = load_profile("llama-3.1-8b-a100")
    assert (a100.max_num_seqs, a100.max_num_batched_tokens) == (256, 2048)
    for name in ("llama-3.1-8b-h100", "llama-3.1-8b-h200", "llama-3.1-70b-h100-tp4"):
        p = load_profile(name)
        assert (p.max_num_seqs, p.max_num_batched_tokens) == (1024, 8192)
    for name in REQUIRED:
        assert load_profile(name).max_model_len == 131072


def test_decode_attention_matches_kv_bytes() -> None:
    """KV bytes per token (bf16) over 70% of the spec HBM bandwidth."""
    h100 = load_profile("llama-3.1-8b-h100")
    kv_bytes = 2 * 32 * 8 * 128 * 2  # 128 KiB per token
    assert h100.iteration.decode_attn_per_ctx_token_ms == pytest.approx(
        kv_bytes / (0.7 * 3.35e12) * 1e3, rel=1e-3
    )
    big = load_profile("llama-3.1-70b-h100-tp4")
    assert big.iteration.decode_attn_per_ctx_token_ms == pytest.approx(
        2 * 80 * 8 * 128 * 2 / 4 / (0.7 * 3.35e12) * 1e3, rel=1e-3
    )


def test_shipped_files_are_what_derive_py_writes() -> None:
    """profiles/derive.py --check: the YAML files are regenerated, not hand-edited."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "profiles" / "derive.py"
    spec = importlib.util.spec_from_file_location("_profiles_derive", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert module.main(["--check"]) == 0

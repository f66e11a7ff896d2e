"""The scheduler plugin inside vLLM 0.33.0's own Scheduler, on CPU (no model, no GPU): the budget
it sets each step, and what vLLM then schedules. Skipped, loudly, where vLLM is not importable.

The scheduler is built as vLLM's tests/v1/core/utils.py builds one (a VllmConfig, a one-group
KVCacheConfig, a StructuredOutputManager), with the constructor of the 0.33.0 wheel, and a tiny
local model config so that nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

try:
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.sampling_params import SamplingParams
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.request import Request
    from vllm.v1.structured_output import StructuredOutputManager

    from polyserve.vllm import scheduler as plugin
except ImportError as err:  # vLLM (or torch) absent: the plugin was not run against vLLM
    pytest.skip(
        f"vLLM 0.33.0 is not importable ({err}): the DynamicChunkScheduler plugin was NOT "
        "tested against vLLM's Scheduler; install polyserve[vllm] (torch included) to run this",
        allow_module_level=True,
    )

from polyserve.profile import load_profile
from polyserve.vllm.budget import plugin_step_budget, settings_from_env

BS = 16
BUDGET = 2048
ENV = {"POLYSERVE_PROFILE": "llama-3.1-8b-h100", "POLYSERVE_CHUNK_BUDGET_MS": "12"}
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 1,
    "vocab_size": 1024,
    "max_position_embeddings": 8192,
}


def make(cls: type[Any], model_dir: Path, async_scheduling: bool = False) -> Any:
    (model_dir / "config.json").write_text(json.dumps(TINY_LLAMA))
    vllm_config = VllmConfig(
        scheduler_config=SchedulerConfig(
            max_num_seqs=64,
            max_num_batched_tokens=BUDGET,
            max_model_len=8192,
            is_encoder_decoder=False,
            enable_chunked_prefill=True,
            async_scheduling=async_scheduling,
        ),
        model_config=ModelConfig(
            model=str(model_dir), skip_tokenizer_init=True, dtype="float16", max_model_len=8192
        ),
        cache_config=CacheConfig(block_size=BS, enable_prefix_caching=False),
    )
    vllm_config.cache_config.num_gpu_blocks = 10_000
    kv = KVCacheConfig(
        num_blocks=10_000,
        kv_cache_tensors=[],
        kv_cache_groups=[
            KVCacheGroupSpec(
                ["layer"],
                FullAttentionSpec(block_size=BS, num_kv_heads=1, head_size=1, dtype=torch.float32),
            )
        ],
    )
    return cls(
        vllm_config=vllm_config,
        kv_cache_config=kv,
        structured_output_manager=StructuredOutputManager(vllm_config),
        block_size=BS,
        log_stats=False,
    )


def request(rid: str, prompt: int) -> Request:
    return Request(
        request_id=rid,
        prompt_token_ids=[1] * prompt,
        sampling_params=SamplingParams(max_tokens=64, ignore_eos=True),
        pooling_params=None,
    )


def decoding(s: Any, n: int, prompt: int) -> None:
    """``n`` requests prefilled in one step, each then given its first token (as
    update_from_output would), so that they decode in the next step."""
    for i in range(n):
        s.add_request(request(f"d{i}", prompt))
    out = s.schedule()
    assert out.total_num_scheduled_tokens == n * prompt
    for r in s.running:
        r.append_output_token_ids(7)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


def test_the_plugin_cuts_the_budget_of_a_step_with_decodes(env: None, tmp_path: Path) -> None:
    stock = make(Scheduler, tmp_path)
    dyn = make(plugin.DynamicChunkSyncScheduler, tmp_path)
    assert dyn.configured_max_scheduled_tokens == BUDGET
    settings = settings_from_env(ENV)
    assert settings.profile == load_profile("llama-3.1-8b-h100")
    for s in (stock, dyn):
        decoding(s, 8, 200)
        s.add_request(request("long", 6000))
    expected = plugin_step_budget(settings, list(dyn.running), BUDGET, BS, 0.0)
    assert 8 + BS <= expected < BUDGET  # the rule cuts this step
    out_stock, out_dyn = stock.schedule(), dyn.schedule()
    assert out_stock.total_num_scheduled_tokens == BUDGET  # vLLM fills its static budget
    assert dyn.max_num_scheduled_tokens == expected
    assert out_dyn.total_num_scheduled_tokens == expected  # 8 decodes + the cut chunk
    assert out_dyn.num_scheduled_tokens["long"] == expected - 8


def test_without_decodes_the_configured_budget_stands(env: None, tmp_path: Path) -> None:
    dyn = make(plugin.DynamicChunkSyncScheduler, tmp_path)
    dyn.add_request(request("long", 6000))
    out = dyn.schedule()
    assert dyn.max_num_scheduled_tokens == BUDGET == out.total_num_scheduled_tokens


def test_a_bad_setting_fails_the_construction(
    env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYSERVE_CHUNK_BUDGET_MS", "0")
    with pytest.raises(ValueError, match="POLYSERVE_CHUNK_BUDGET_MS"):
        make(plugin.DynamicChunkSyncScheduler, tmp_path)


def test_the_async_class_needs_async_scheduling(env: None, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DynamicChunkSyncScheduler"):
        make(plugin.DynamicChunkScheduler, tmp_path, async_scheduling=False)

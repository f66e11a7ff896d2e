"""Reading vLLM command lines: every spelling vLLM's parser takes, the last value winning."""

from __future__ import annotations

from polyserve.operator.discovery import backend_of
from polyserve.operator.resources import ENGINE_CONTAINER, uses_priority_scheduling
from polyserve.router.spec import TierSpec
from polyserve.wire.vllm_args import flag_value, has_flag, positive_int_flag


def test_each_spelling_of_a_flag_is_read() -> None:
    args = ["--model", "m", "--max_num_batched_tokens=512", "--no-enable-chunked-prefill"]
    assert flag_value(args, "--max-num-batched-tokens") == "512"
    assert flag_value(args, "--model") == "m"
    assert has_flag(args, "--enable-chunked-prefill")  # its --no- form sets it too
    assert flag_value(args, "--enable-chunked-prefill") is None
    assert not has_flag(args, "--max-num-seqs") and flag_value(args, "--max-num-seqs") is None
    assert flag_value(["--max-num-seqs", "8", "--max-num-seqs", "16"], "--max-num-seqs") == "16"
    assert not has_flag(["--portal", "1"], "--port")


def test_only_a_positive_integer_is_a_budget() -> None:
    for bad in (["--max-num-batched-tokens", "0"], ["--max-num-batched-tokens", "x"], []):
        assert positive_int_flag(bad, "--max-num-batched-tokens") is None
    assert positive_int_flag(["--max-num-batched-tokens=272"], "--max-num-batched-tokens") == 272


def test_priority_scheduling_in_either_spelling() -> None:
    assert uses_priority_scheduling(["--scheduling-policy", "priority"])
    assert uses_priority_scheduling(["--scheduling_policy=priority"])
    assert not uses_priority_scheduling(["--scheduling-policy", "fcfs"])


def test_discovery_reads_the_budget_the_pods_engine_runs() -> None:
    """The router's admission checks predict a backend's prefill chunks with its own budget."""
    tier = TierSpec(name="voice", model="m", tpot_ms=20, ttft_ms=300)
    pod = {
        "metadata": {"name": "voice-0", "annotations": {}},
        "spec": {
            "containers": [
                {
                    "name": ENGINE_CONTAINER,
                    "args": ["--model", "m", "--max-num-batched-tokens", "272"],
                }
            ]
        },
        "status": {
            "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    backend = backend_of(pod, tier, 8000)
    assert backend is not None and backend.max_num_batched_tokens == 272


def test_discovery_reads_the_chunk_budget_a_pod_cuts_to() -> None:
    """PolyServe's vLLM scheduler plugin (its env) or the mock's own flag; stock: 0."""
    from polyserve.operator.discovery import chunk_budget_ms
    from polyserve.vllm import ENV_CHUNK_BUDGET_MS, SCHEDULER_CLS

    plugin = ["--model", "m", "--scheduler-cls", SCHEDULER_CLS]
    assert chunk_budget_ms(plugin, {ENV_CHUNK_BUDGET_MS: "18"}) == 18.0
    assert chunk_budget_ms(plugin, {ENV_CHUNK_BUDGET_MS: "nan"}) == 0.0
    assert chunk_budget_ms(["--chunk-budget-ms", "45"], {}) == 45.0
    assert chunk_budget_ms(["--model", "m"], {ENV_CHUNK_BUDGET_MS: "18"}) == 0.0  # no plugin

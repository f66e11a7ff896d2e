"""The one parser of a vLLM ``/metrics`` page's load gauges (router scrapes, operator drains)."""

from __future__ import annotations

import pytest

from polyserve.wire.vllm_metrics import EngineLoad, parse_engine_load

PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:num_requests_waiting_by_reason{reason="x"} 99
vllm:num_requests_running{engine="2"} garbage
"""


def test_engine_load_sums_label_sets_and_skips_garbage() -> None:
    load = parse_engine_load(PAGE)
    assert load == EngineLoad(running=5.0, waiting=1.0, kv_usage=0.25, bad_lines=1)
    assert load is not None and load.requests == 6
    assert parse_engine_load("not a metrics page\n") is None
    assert parse_engine_load("# nothing\n") is None


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-1"])
def test_a_value_that_is_no_count_is_skipped_and_counted(value: str) -> None:
    page = f"vllm:num_requests_running 2\nvllm:num_requests_waiting {value}\n"
    assert parse_engine_load(page) == EngineLoad(
        running=2.0, waiting=0.0, kv_usage=0.0, bad_lines=1
    )


def test_unlabelled_gauges_and_timestamps() -> None:
    page = "vllm:num_requests_running 2 1700000000000\nvllm:num_requests_waiting 1\n"
    load = parse_engine_load(page)
    assert load is not None and load.requests == 3

"""``/metrics``: vLLM's names, types, labels and buckets, moved by real requests; aborts free KV."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from polyserve.mockengine import MockEngineThread
from polyserve.mockengine import metrics as m
from tests.mockengine.conftest import JSON, MODEL, client, metric, raw, wait_until

EXPECTED = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:num_preemptions": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:request_time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_inference_time_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram",
    "vllm:request_decode_time_seconds": "histogram",
    "vllm:iteration_tokens_total": "histogram",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
    "vllm:num_requests_waiting_by_reason": "gauge",
    "vllm:engine_sleep_state": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:external_prefix_cache_queries": "counter",
    "vllm:external_prefix_cache_hits": "counter",
    "vllm:mm_cache_queries": "counter",
    "vllm:mm_cache_hits": "counter",
    "vllm:prompt_tokens_by_source": "counter",
    "vllm:prompt_tokens_cached": "counter",
    "vllm:prompt_tokens_cached_by_source": "counter",
    "vllm:request_max_num_generation_tokens": "histogram",
    "vllm:request_params_n": "histogram",
    "vllm:request_params_max_tokens": "histogram",
    "vllm:request_num_preemptions": "histogram",
    "vllm:request_prefill_kv_computed_tokens": "histogram",
}
#: label names beyond (model_name, engine), per family (vllm/v1/metrics/loggers.py:547-808)
EXTRA_LABELS = {
    "vllm:request_success": {"finished_reason"},
    "vllm:num_requests_waiting_by_reason": {"reason"},
    "vllm:engine_sleep_state": {"sleep_state"},
    "vllm:prompt_tokens_by_source": {"source"},
    "vllm:prompt_tokens_cached_by_source": {"source"},
}


def test_names_types_labels_buckets(start_mock: Callable[..., MockEngineThread]) -> None:
    fleet = start_mock()
    _, headers, body = raw(fleet.urls[0], "GET", "/metrics")
    assert headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name, kind in EXPECTED.items():
        assert name in families, name
        assert families[name].type == kind, name
        for s in families[name].samples:
            if s.name.endswith("_created"):
                continue
            extra = set(s.labels) - {"model_name", "engine", "le"}
            assert s.labels["model_name"] == MODEL and s.labels["engine"] == "0"
            assert extra == EXTRA_LABELS.get(name, set()), name
    text = body.decode()
    assert "vllm:num_preemptions_total{" in text and "vllm:iteration_tokens_total_bucket{" in text
    reasons = {
        s.labels["finished_reason"]
        for s in families["vllm:request_success"].samples
        if s.name.endswith("_total")
    }
    # every FinishReason is a label value from the start (v1/engine/__init__.py:63-67)
    assert reasons == {"stop", "length", "abort", "error", "repetition"}
    # the frontend's admission counter has no engine label (loggers.py:847-858)
    rejections = families["vllm:admission_rejections"].samples
    assert {s.labels["reason"] for s in rejections if s.name.endswith("_total")} == {
        "max_num_queued_reqs",
        "max_num_queued_tokens",
    }
    assert all(set(s.labels) == {"model_name", "reason"} for s in rejections)

    def buckets(fam: str) -> list[float]:
        return [
            float(s.labels["le"])
            for s in families[fam].samples
            if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
        ]

    assert buckets("vllm:time_to_first_token_seconds") == list(m.TTFT_BUCKETS)
    assert buckets("vllm:inter_token_latency_seconds") == list(m.ITL_BUCKETS)
    assert buckets("vllm:request_time_per_output_token_seconds") == list(m.ITL_BUCKETS)
    assert buckets("vllm:e2e_request_latency_seconds") == list(m.REQUEST_LATENCY_BUCKETS)
    assert buckets("vllm:iteration_tokens_total") == list(m.ITERATION_TOKENS_BUCKETS)
    assert buckets("vllm:request_prompt_tokens") == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
    assert m.LABELS == ("model_name", "engine")


def test_counters_move_as_requests_complete(start_mock: Callable[..., MockEngineThread]) -> None:
    fleet = start_mock()
    url = fleet.urls[0]
    c = client(url)
    prompt_total = 0
    for i in range(3):
        res = c.completions.create(
            model=MODEL, prompt=f"request number {i}", max_tokens=5, extra_body={"ignore_eos": True}
        )
        assert res.usage is not None
        prompt_total += res.usage.prompt_tokens
    assert metric(url, "vllm:request_success_total", finished_reason="length") == 3
    assert metric(url, "vllm:request_success_total", finished_reason="stop") == 0
    assert metric(url, "vllm:prompt_tokens_total") == prompt_total
    assert metric(url, "vllm:generation_tokens_total") == 15
    assert metric(url, "vllm:time_to_first_token_seconds_count") == 3
    assert metric(url, "vllm:inter_token_latency_seconds_count") == 12  # 4 gaps each
    assert metric(url, "vllm:e2e_request_latency_seconds_count") == 3
    assert metric(url, "vllm:request_generation_tokens_sum") == 15
    assert metric(url, "vllm:request_time_per_output_token_seconds_count") == 3
    assert metric(url, "vllm:iteration_tokens_total_count") == 15  # one prefill + 4 decodes each
    assert metric(url, "vllm:num_requests_running") == 0
    assert metric(url, "vllm:kv_cache_usage_perc") == 0
    # measured times are wall-clock and at least the modelled 5 ms steps
    ttft = metric(url, "vllm:time_to_first_token_seconds_sum") / 3
    itl = metric(url, "vllm:inter_token_latency_seconds_sum") / 12
    assert 0.004 < ttft < 0.5 and 0.004 < itl < 0.5


def test_aborted_stream_frees_its_kv(start_mock: Callable[..., MockEngineThread]) -> None:
    fleet = start_mock()
    url = fleet.urls[0]
    engine = fleet.servers[0].engine
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10.0)
    body = {"prompt": "word " * 500, "max_tokens": 1500, "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=JSON)
    resp = conn.getresponse()
    assert resp.status == 200
    for _ in range(3):  # a few tokens arrive: the request holds KV
        assert resp.readline().startswith(b"data: ")
        resp.readline()
    assert fleet.call(lambda: engine.num_running) == 1
    assert metric(url, "vllm:kv_cache_usage_perc") > 0
    assert metric(url, "vllm:num_requests_running") == 1
    conn.close()  # the client goes away mid-stream
    wait_until(lambda: fleet.call(lambda: engine.num_running) == 0, what="the abort")
    assert fleet.call(lambda: (engine.used_blocks, engine.has_work)) == (0, False)
    assert metric(url, "vllm:kv_cache_usage_perc") == 0
    assert metric(url, "vllm:num_requests_running") == 0
    assert metric(url, "vllm:request_success_total", finished_reason="abort") == 1
    assert fleet.call(lambda: fleet.servers[0].runner.in_flight) == 0


def test_waiting_requests_show_in_gauges(start_mock: Callable[..., MockEngineThread]) -> None:
    from tests.mockengine.conftest import fast_profile

    fleet = start_mock(profile=fast_profile(max_num_seqs=1, max_num_batched_tokens=256))
    url = fleet.urls[0]
    conns = []
    parts = urlsplit(url)
    for i in range(3):
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10.0)
        body = {"prompt": f"p{i}", "max_tokens": 1000, "ignore_eos": True, "stream": True}
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers=JSON)
        conns.append(conn)
    try:
        wait_until(
            lambda: (
                metric(url, "vllm:num_requests_waiting") == 2
                and metric(url, "vllm:num_requests_running") == 1
            ),
            what="1 running and 2 waiting",
        )
    finally:
        for conn in conns:
            conn.close()
    wait_until(lambda: metric(url, "vllm:num_requests_waiting") == 0, what="aborts of waiting")
    wait_until(lambda: metric(url, "vllm:num_requests_running") == 0, what="abort of running")
    assert metric(url, "vllm:request_success_total", finished_reason="abort") == 3


def test_no_state_left_behind(start_mock: Callable[..., MockEngineThread]) -> None:
    """Finished and aborted requests leave nothing in the engine or the runner (no growth)."""
    fleet = start_mock()
    server = fleet.servers[0]
    c = client(fleet.urls[0])
    for i in range(30):
        c.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=3)

    def leftovers() -> tuple[int, ...]:
        e, r = server.engine, server.runner
        return (
            len(e.requests),
            len(e.running),
            e.num_waiting,
            len(e.step_ends),
            len(r._streams),
            len(r._unscheduled),
        )

    assert fleet.call(leftovers) == (0, 0, 0, 0, 0, 0)


def test_new_metrics_follow_the_requests(start_mock: Callable[..., MockEngineThread]) -> None:
    """Counted as vLLM counts them: prefix-cache queries are the prompt tokens of admitted new
    requests (v1/core/sched/scheduler.py:1508, v1/metrics/stats.py:146), with no hit; the
    waiting-by-reason gauges sum to num_requests_waiting (loggers.py:547-566); the request
    histograms get one sample per finished request (loggers.py:1290-1330)."""
    url = start_mock().urls[0]
    c = client(url)
    for _ in range(2):
        c.completions.create(
            model=MODEL, prompt="a b c", max_tokens=5, extra_body={"ignore_eos": True}
        )
    assert metric(url, "vllm:prefix_cache_queries_total") == 8  # 2 x (BOS + 3)
    assert metric(url, "vllm:prefix_cache_hits_total") == 0
    assert metric(url, "vllm:prompt_tokens_by_source_total", source="local_compute") == 8
    assert metric(url, "vllm:prompt_tokens_by_source_total", source="local_cache_hit") == 0
    assert metric(url, "vllm:request_params_max_tokens_sum") == 10
    assert metric(url, "vllm:request_params_n_count") == 2
    assert metric(url, "vllm:request_num_preemptions_sum") == 0
    assert metric(url, "vllm:request_prefill_kv_computed_tokens_sum") == 8
    assert metric(url, "vllm:engine_sleep_state", sleep_state="awake") == 1
    assert metric(url, "vllm:num_requests_waiting_by_reason", reason="capacity") == 0


def test_data_parallel_engines_behind_one_server(
    start_mock: Callable[..., MockEngineThread],
) -> None:
    """--data-parallel-size 2: one port, two engines labelled engine="0" and "1"; concurrent
    requests spread by vLLM's least-loaded score (v1/engine/core_client.py:1762-1806);
    X-data-parallel-rank pins one (generate/base/serving.py:216), out of range is a 400
    (v1/engine/input_processor.py:392-400)."""
    fleet = start_mock(data_parallel_size=2)
    url = fleet.urls[0]
    parts = urlsplit(url)
    conns = []
    for i in range(2):  # both in flight at once: the second goes to the idle engine
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10.0)
        body = {"prompt": f"p{i}", "max_tokens": 40, "ignore_eos": True, "stream": True}
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers=JSON)
        conns.append(conn)
        wait_until(
            lambda n=i + 1: (
                fleet.call(lambda: sum(r.in_flight for r in fleet.servers[0].runners)) == n
            )
        )
    for conn in conns:
        assert conn.getresponse().read().endswith(b"data: [DONE]\n\n")
        conn.close()
    for engine in ("0", "1"):
        assert (
            metric(url, "vllm:request_success_total", engine=engine, finished_reason="length") == 1
        )
    pinned = {"prompt": "x", "max_tokens": 1}
    assert raw(url, "POST", "/v1/completions", pinned, {"X-data-parallel-rank": "1"})[0] == 200
    assert metric(url, "vllm:request_success_total", engine="1", finished_reason="length") == 2
    status, _, data = raw(url, "POST", "/v1/completions", pinned, {"X-data-parallel-rank": "2"})
    assert status == 400
    assert json.loads(data)["error"]["message"] == "data_parallel_rank 2 is out of range [0, 2)."


def test_dp_engine_choice_scores_like_vllm() -> None:
    from polyserve.mockengine.runner import EngineLoad, dp_engine_choice

    idle, busy = EngineLoad(0, 0, 0.0, 0), EngineLoad(0, 3, 0.2, 3)
    assert dp_engine_choice([busy, idle], 0) == 1
    assert dp_engine_choice([idle, idle, idle], 2) == 2  # ties: the scan's start wins
    # one waiting request on a full KV cache weighs 1 + 3: more than three running ones
    queued = EngineLoad(1, 0, 1.0, 1)
    assert dp_engine_choice([queued, busy], 0) == 1
    assert dp_engine_choice([EngineLoad(1, 0, 0.5, 1), busy], 0) == 0  # no penalty at <= 50 %

"""vLLM's Prometheus metrics for one server, fed from the engine model and the wall clock.

Names, types, label names (``model_name``, ``engine``, in that order), label values and buckets
follow vLLM 0.33.0's ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger.__init__``, lines
520-1030); the load gauges that scrapers read are named in :mod:`polyserve.wire.vllm_metrics`.
Each server has its own registry (several servers share one process in a fleet); a
data-parallel server has one label set per engine (``engine="0"``, ``"1"``, ...), as vLLM's.
The families vLLM creates only behind an option the mock does not model (``corrupted_requests``:
VLLM_COMPUTE_NANS_IN_LOGITS; ``watermark_requests``; ``num_requests_kv_fetch_by_stage``: a KV
consumer; ``kv_block_*``: --kv-cache-metrics; ``lora_requests_info``: LoRA) are not served.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from polyserve.wire.vllm_metrics import KV_CACHE_USAGE, NUM_REQUESTS_RUNNING, NUM_REQUESTS_WAITING

LABELS = ("model_name", "engine")

NUM_PREEMPTIONS = "vllm:num_preemptions"  # counter: exposed as ..._total
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
REQUEST_SUCCESS = "vllm:request_success"
TIME_TO_FIRST_TOKEN = "vllm:time_to_first_token_seconds"
INTER_TOKEN_LATENCY = "vllm:inter_token_latency_seconds"
REQUEST_TIME_PER_OUTPUT_TOKEN = "vllm:request_time_per_output_token_seconds"
E2E_REQUEST_LATENCY = "vllm:e2e_request_latency_seconds"
REQUEST_QUEUE_TIME = "vllm:request_queue_time_seconds"
REQUEST_INFERENCE_TIME = "vllm:request_inference_time_seconds"
REQUEST_PREFILL_TIME = "vllm:request_prefill_time_seconds"
REQUEST_DECODE_TIME = "vllm:request_decode_time_seconds"
ITERATION_TOKENS = "vllm:iteration_tokens_total"  # a histogram whose name ends in _total
REQUEST_PROMPT_TOKENS = "vllm:request_prompt_tokens"
REQUEST_GENERATION_TOKENS = "vllm:request_generation_tokens"

NUM_REQUESTS_WAITING_BY_REASON = "vllm:num_requests_waiting_by_reason"
ENGINE_SLEEP_STATE = "vllm:engine_sleep_state"
PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries"
PREFIX_CACHE_HITS = "vllm:prefix_cache_hits"
EXTERNAL_PREFIX_CACHE_QUERIES = "vllm:external_prefix_cache_queries"
EXTERNAL_PREFIX_CACHE_HITS = "vllm:external_prefix_cache_hits"
MM_CACHE_QUERIES = "vllm:mm_cache_queries"
MM_CACHE_HITS = "vllm:mm_cache_hits"
PROMPT_TOKENS_BY_SOURCE = "vllm:prompt_tokens_by_source"
PROMPT_TOKENS_CACHED = "vllm:prompt_tokens_cached"
PROMPT_TOKENS_CACHED_BY_SOURCE = "vllm:prompt_tokens_cached_by_source"
ADMISSION_REJECTIONS = "vllm:admission_rejections"  # labelled by model_name and reason only
REQUEST_MAX_NUM_GENERATION_TOKENS = "vllm:request_max_num_generation_tokens"
REQUEST_PARAMS_N = "vllm:request_params_n"
REQUEST_PARAMS_MAX_TOKENS = "vllm:request_params_max_tokens"
REQUEST_NUM_PREEMPTIONS = "vllm:request_num_preemptions"
REQUEST_PREFILL_KV_COMPUTED_TOKENS = "vllm:request_prefill_kv_computed_tokens"

#: vLLM's FinishReason (vllm/v1/engine/__init__.py:63-67); the mock itself ends requests with
#: stop, length or abort only, but vLLM creates every label value at start-up (loggers.py:808)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
#: WAITING_REASON_CAPACITY / _DEFERRED (loggers.py:43-44); the mock defers nothing
WAITING_REASONS = ("capacity", "deferred")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")  # loggers.py:606
PROMPT_TOKEN_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")  # stats.py:441
CACHE_HIT_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")  # CacheHitSource
ADMISSION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")  # loggers.py:47
REQUEST_PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)  # vllm/v1/metrics/buckets.py:125
REQUEST_NUM_PREEMPTIONS_BUCKETS = (1, 2, 3, 4, 5, 10, 20)  # buckets.py:128

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def buckets_1_2_5(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's build_1_2_5_buckets)."""
    out: list[int] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            value = m * 10**exponent
            if value > max_value:
                return out
            out.append(value)
        exponent += 1


class ServerMetrics:
    """One server's registry: every metric family once, one bound label set per engine."""

    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._len_buckets = buckets_1_2_5(max_model_len)

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, (*LABELS, *extra), registry=r)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, (*LABELS, *extra), registry=r)

        def hist(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=r)

        lb = self._len_buckets
        self.families: dict[str, Gauge | Counter | Histogram] = {
            NUM_REQUESTS_RUNNING: gauge(
                NUM_REQUESTS_RUNNING, "Number of requests in model execution batches."
            ),
            NUM_REQUESTS_WAITING: gauge(
                NUM_REQUESTS_WAITING, "Number of requests waiting to be processed."
            ),
            NUM_REQUESTS_WAITING_BY_REASON: gauge(
                NUM_REQUESTS_WAITING_BY_REASON,
                "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
                "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA "
                "budget, KV transfer, blocked status). Sum of all reasons equals "
                "vllm:num_requests_waiting.",
                ("reason",),
            ),
            ENGINE_SLEEP_STATE: gauge(
                ENGINE_SLEEP_STATE,
                "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine "
                "is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means "
                "sleep level 2.",
                ("sleep_state",),
            ),
            KV_CACHE_USAGE: gauge(KV_CACHE_USAGE, "KV-cache usage. 1 means 100 percent usage."),
            PREFIX_CACHE_QUERIES: counter(
                PREFIX_CACHE_QUERIES,
                "Prefix cache queries, in terms of number of queried tokens.",
            ),
            PREFIX_CACHE_HITS: counter(
                PREFIX_CACHE_HITS, "Prefix cache hits, in terms of number of cached tokens."
            ),
            EXTERNAL_PREFIX_CACHE_QUERIES: counter(
                EXTERNAL_PREFIX_CACHE_QUERIES,
                "External prefix cache queries from KV connector cross-instance cache sharing, "
                "in terms of number of queried tokens.",
            ),
            EXTERNAL_PREFIX_CACHE_HITS: counter(
                EXTERNAL_PREFIX_CACHE_HITS,
                "External prefix cache hits from KV connector cross-instance cache sharing, in "
                "terms of number of cached tokens.",
            ),
            MM_CACHE_QUERIES: counter(
                MM_CACHE_QUERIES, "Multi-modal cache queries, in terms of number of queried items."
            ),
            MM_CACHE_HITS: counter(
                MM_CACHE_HITS, "Multi-modal cache hits, in terms of number of cached items."
            ),
            NUM_PREEMPTIONS: counter(
                NUM_PREEMPTIONS, "Cumulative number of preemption from the engine."
            ),
            PROMPT_TOKENS: counter(PROMPT_TOKENS, "Number of prefill tokens processed."),
            PROMPT_TOKENS_BY_SOURCE: counter(
                PROMPT_TOKENS_BY_SOURCE, "Number of prompt tokens by source.", ("source",)
            ),
            PROMPT_TOKENS_CACHED: counter(
                PROMPT_TOKENS_CACHED, "Number of cached prompt tokens (local + external)."
            ),
            PROMPT_TOKENS_CACHED_BY_SOURCE: counter(
                PROMPT_TOKENS_CACHED_BY_SOURCE,
                "Prefix-cache hit tokens by the cache tier that supplied them: device (local "
                "HBM), host (offloaded to DRAM), disk, p2p (transferred from another vLLM "
                "instance) or external_unspecified. Counted at admission; sums to "
                "vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
                ("source",),
            ),
            GENERATION_TOKENS: counter(GENERATION_TOKENS, "Number of generation tokens processed."),
            REQUEST_SUCCESS: counter(
                REQUEST_SUCCESS, "Count of successfully processed requests.", ("finished_reason",)
            ),
            REQUEST_PROMPT_TOKENS: hist(
                REQUEST_PROMPT_TOKENS, "Number of prefill tokens processed.", lb
            ),
            REQUEST_GENERATION_TOKENS: hist(
                REQUEST_GENERATION_TOKENS, "Number of generation tokens processed.", lb
            ),
            ITERATION_TOKENS: hist(
                ITERATION_TOKENS,
                "Histogram of number of tokens per engine_step.",
                ITERATION_TOKENS_BUCKETS,
            ),
            REQUEST_MAX_NUM_GENERATION_TOKENS: hist(
                REQUEST_MAX_NUM_GENERATION_TOKENS,
                "Histogram of maximum number of requested generation tokens.",
                lb,
            ),
            REQUEST_PARAMS_N: hist(
                REQUEST_PARAMS_N, "Histogram of the n request parameter.", REQUEST_PARAMS_N_BUCKETS
            ),
            REQUEST_PARAMS_MAX_TOKENS: hist(
                REQUEST_PARAMS_MAX_TOKENS, "Histogram of the max_tokens request parameter.", lb
            ),
            TIME_TO_FIRST_TOKEN: hist(
                TIME_TO_FIRST_TOKEN, "Histogram of time to first token in seconds.", TTFT_BUCKETS
            ),
            INTER_TOKEN_LATENCY: hist(
                INTER_TOKEN_LATENCY, "Histogram of inter-token latency in seconds.", ITL_BUCKETS
            ),
            REQUEST_TIME_PER_OUTPUT_TOKEN: hist(
                REQUEST_TIME_PER_OUTPUT_TOKEN,
                "Histogram of time_per_output_token_seconds per request.",
                ITL_BUCKETS,
            ),
            E2E_REQUEST_LATENCY: hist(
                E2E_REQUEST_LATENCY,
                "Histogram of e2e request latency in seconds.",
                REQUEST_LATENCY_BUCKETS,
            ),
            REQUEST_QUEUE_TIME: hist(
                REQUEST_QUEUE_TIME,
                "Histogram of time spent in WAITING phase for request.",
                REQUEST_LATENCY_BUCKETS,
            ),
            REQUEST_INFERENCE_TIME: hist(
                REQUEST_INFERENCE_TIME,
                "Histogram of time spent in RUNNING phase for request.",
                REQUEST_LATENCY_BUCKETS,
            ),
            REQUEST_PREFILL_TIME: hist(
                REQUEST_PREFILL_TIME,
                "Histogram of time spent in PREFILL phase for request.",
                REQUEST_LATENCY_BUCKETS,
            ),
            REQUEST_DECODE_TIME: hist(
                REQUEST_DECODE_TIME,
                "Histogram of time spent in DECODE phase for request.",
                REQUEST_LATENCY_BUCKETS,
            ),
            REQUEST_NUM_PREEMPTIONS: hist(
                REQUEST_NUM_PREEMPTIONS,
                "Histogram of the number of times a request was preempted.",
                REQUEST_NUM_PREEMPTIONS_BUCKETS,
            ),
            REQUEST_PREFILL_KV_COMPUTED_TOKENS: hist(
                REQUEST_PREFILL_KV_COMPUTED_TOKENS,
                "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
                lb,
            ),
        }
        rejections = Counter(
            ADMISSION_REJECTIONS,
            "Number of admission attempts rejected by a queue limit, by reason.",
            ("model_name", "reason"),
            registry=r,
        )
        for reason in ADMISSION_REASONS:  # the mock has no queue limit: always 0
            rejections.labels(model_name, reason)

    def engine(
        self,
        engine: str,
        *,
        num_running: Callable[[], float],
        num_waiting: Callable[[], float],
        kv_usage: Callable[[], float],
    ) -> EngineMetrics:
        """The metrics of one engine, bound to ``(model_name, engine)``."""
        return EngineMetrics(
            self, engine, num_running=num_running, num_waiting=num_waiting, kv_usage=kv_usage
        )

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated as prometheus_client's ASGI app does."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class EngineMetrics:
    """The metrics of one engine, bound to its labels."""

    def __init__(
        self,
        server: ServerMetrics,
        engine: str,
        *,
        num_running: Callable[[], float],
        num_waiting: Callable[[], float],
        kv_usage: Callable[[], float],
    ) -> None:
        f = server.families
        labels = (server.model_name, engine)

        def bound(name: str, *extra: str) -> Any:
            return f[name].labels(*labels, *extra)

        bound(NUM_REQUESTS_RUNNING).set_function(num_running)
        bound(NUM_REQUESTS_WAITING).set_function(num_waiting)
        # every waiting request waits for capacity: the mock has no LoRA or KV-transfer deferral
        bound(NUM_REQUESTS_WAITING_BY_REASON, "capacity").set_function(num_waiting)
        bound(NUM_REQUESTS_WAITING_BY_REASON, "deferred").set(0)
        for state in SLEEP_STATES:  # record_sleep_state() at start-up: awake
            bound(ENGINE_SLEEP_STATE, state).set(1 if state == "awake" else 0)
        bound(KV_CACHE_USAGE).set_function(kv_usage)
        self.prefix_cache_queries: Counter = bound(PREFIX_CACHE_QUERIES)
        # no prefix cache, KV connector or multi-modal input: these stay at 0, as they would in
        # vLLM with --no-enable-prefix-caching and text prompts
        for name in (
            PREFIX_CACHE_HITS,
            EXTERNAL_PREFIX_CACHE_QUERIES,
            EXTERNAL_PREFIX_CACHE_HITS,
            MM_CACHE_QUERIES,
            MM_CACHE_HITS,
            PROMPT_TOKENS_CACHED,
        ):
            bound(name)
        for source in CACHE_HIT_SOURCES:
            bound(PROMPT_TOKENS_CACHED_BY_SOURCE, source)
        self.preemptions: Counter = bound(NUM_PREEMPTIONS)
        self.prompt_tokens: Counter = bound(PROMPT_TOKENS)
        by_source = {s: bound(PROMPT_TOKENS_BY_SOURCE, s) for s in PROMPT_TOKEN_SOURCES}
        self.prompt_tokens_computed: Counter = by_source["local_compute"]
        self.generation_tokens: Counter = bound(GENERATION_TOKENS)
        self.success: dict[str, Counter] = {
            reason: bound(REQUEST_SUCCESS, reason) for reason in FINISHED_REASONS
        }
        self.request_prompt_tokens: Histogram = bound(REQUEST_PROMPT_TOKENS)
        self.request_generation_tokens: Histogram = bound(REQUEST_GENERATION_TOKENS)
        self.iteration_tokens: Histogram = bound(ITERATION_TOKENS)
        self.max_num_generation_tokens: Histogram = bound(REQUEST_MAX_NUM_GENERATION_TOKENS)
        self.params_n: Histogram = bound(REQUEST_PARAMS_N)
        self.params_max_tokens: Histogram = bound(REQUEST_PARAMS_MAX_TOKENS)
        self.ttft: Histogram = bound(TIME_TO_FIRST_TOKEN)
        self.itl: Histogram = bound(INTER_TOKEN_LATENCY)
        self.tpot: Histogram = bound(REQUEST_TIME_PER_OUTPUT_TOKEN)
        self.e2e: Histogram = bound(E2E_REQUEST_LATENCY)
        self.queue: Histogram = bound(REQUEST_QUEUE_TIME)
        self.inference: Histogram = bound(REQUEST_INFERENCE_TIME)
        self.prefill: Histogram = bound(REQUEST_PREFILL_TIME)
        self.decode: Histogram = bound(REQUEST_DECODE_TIME)
        self.num_preemptions: Histogram = bound(REQUEST_NUM_PREEMPTIONS)
        self.prefill_kv_computed: Histogram = bound(REQUEST_PREFILL_KV_COMPUTED_TOKENS)

    def finished(
        self,
        reason: str,
        *,
        e2e: float,
        queue: float | None,
        prefill: float | None,
        decode: float | None,
        prompt_tokens: int,
        generation_tokens: int,
        max_tokens: int,
        preemptions: int,
    ) -> None:
        """One request finished (``stop``/``length``) or was aborted; times in seconds.

        Phase times are None for a request that never reached that phase (an abort).
        ``max_tokens`` is the request's sampling limit (after vLLM's clamp to the context).
        """
        self.success[reason].inc()
        self.e2e.observe(e2e)
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generation_tokens)
        # n is always 1: the largest generation of the request's choices is its only one
        self.max_num_generation_tokens.observe(generation_tokens)
        self.params_n.observe(1)
        self.params_max_tokens.observe(max_tokens)
        self.num_preemptions.observe(preemptions)
        self.prefill_kv_computed.observe(prompt_tokens)  # nothing is cached
        if queue is not None:
            self.queue.observe(queue)
        if prefill is not None and decode is not None:
            self.prefill.observe(prefill)
            self.decode.observe(decode)
            self.inference.observe(prefill + decode)
            # vLLM observes 0 for a request of one token (v1/metrics/stats.py:612)
            self.tpot.observe(decode / (generation_tokens - 1) if generation_tokens > 1 else 0.0)

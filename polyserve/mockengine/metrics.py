"""vLLM's Prometheus metrics for one engine, fed from the engine model and the wall clock.

Names, types, label names (``model_name``, ``engine``, in that order) and buckets follow
reference/vllm-interface.md; the load gauges that scrapers read are named in
:mod:`polyserve.wire.vllm_metrics`. Each engine has its own registry (several engines share one
process in a fleet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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

FINISHED_REASONS = ("stop", "length", "abort")

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


class EngineMetrics:
    """The metrics of one engine, bound to its labels."""

    def __init__(
        self,
        model_name: str,
        max_model_len: int,
        *,
        num_running: Callable[[], float],
        num_waiting: Callable[[], float],
        kv_usage: Callable[[], float],
        engine: str = "0",
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = (model_name, engine)

        def gauge(name: str, doc: str, fn: Callable[[], float]) -> None:
            Gauge(name, doc, LABELS, registry=r).labels(*labels).set_function(fn)

        def hist(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=r).labels(*labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=r).labels(*labels)

        gauge(NUM_REQUESTS_RUNNING, "Number of requests in model execution batches.", num_running)
        gauge(NUM_REQUESTS_WAITING, "Number of requests waiting to be processed.", num_waiting)
        gauge(KV_CACHE_USAGE, "KV-cache usage. 1 means 100 percent usage.", kv_usage)
        self.preemptions = counter(
            NUM_PREEMPTIONS, "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = counter(PROMPT_TOKENS, "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            GENERATION_TOKENS, "Number of generation tokens processed."
        )
        success = Counter(
            REQUEST_SUCCESS,
            "Count of successfully processed requests.",
            (*LABELS, "finished_reason"),
            registry=r,
        )
        self.success = {reason: success.labels(*labels, reason) for reason in FINISHED_REASONS}
        self.ttft = hist(
            TIME_TO_FIRST_TOKEN, "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = hist(
            INTER_TOKEN_LATENCY, "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.tpot = hist(
            REQUEST_TIME_PER_OUTPUT_TOKEN,
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = hist(
            E2E_REQUEST_LATENCY,
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue = hist(
            REQUEST_QUEUE_TIME,
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference = hist(
            REQUEST_INFERENCE_TIME,
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill = hist(
            REQUEST_PREFILL_TIME,
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode = hist(
            REQUEST_DECODE_TIME,
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.iteration_tokens = hist(
            ITERATION_TOKENS,
            "Histogram of number of tokens per engine_step.",
            ITERATION_TOKENS_BUCKETS,
        )
        len_buckets = buckets_1_2_5(max_model_len)
        self.request_prompt_tokens = hist(
            REQUEST_PROMPT_TOKENS, "Number of prefill tokens processed.", len_buckets
        )
        self.request_generation_tokens = hist(
            REQUEST_GENERATION_TOKENS, "Number of generation tokens processed.", len_buckets
        )

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
    ) -> None:
        """One request finished (``stop``/``length``) or was aborted; times in seconds.

        Phase times are None for a request that never reached that phase (an abort).
        """
        self.success[reason].inc()
        self.e2e.observe(e2e)
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generation_tokens)
        if queue is not None:
            self.queue.observe(queue)
        if prefill is not None and decode is not None:
            self.prefill.observe(prefill)
            self.decode.observe(decode)
            self.inference.observe(prefill + decode)
            if generation_tokens > 1:
                self.tpot.observe(decode / (generation_tokens - 1))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated as prometheus_client's ASGI app does."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

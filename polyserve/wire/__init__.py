"""vLLM's wire surface, shared by every side that speaks it (router, mock engine, load client,
operator): :mod:`~polyserve.wire.openai` (the OpenAI/vLLM request and response schemas, SSE
chunks, error bodies), :mod:`~polyserve.wire.tokenizer` (the deterministic stand-in for the
model's tokenizer that both sides count prompts with) and :mod:`~polyserve.wire.vllm_metrics`
(the ``/metrics`` gauges a scraper reads)."""

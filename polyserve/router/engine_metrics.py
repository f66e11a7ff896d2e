"""Correcting the router's accounting with a backend's ``/metrics`` (pure).

The router counts what it sent; an engine also serves requests the router did not send (another
router replica, a client calling it directly). The engine's own gauges (read by
:func:`polyserve.wire.vllm_metrics.parse_engine_load`) reveal that load: running + waiting above
the router's count of residents is *foreign* load, and its KV share (``vllm:kv_cache_usage_perc``
times the cache) beyond the router's own tokens is foreign KV. Corrections only ever add load: a
scrape a moment old that misses a just-placed request must not make a server look emptier than
the router knows it is.
"""

from __future__ import annotations

from polyserve.wire.vllm_metrics import EngineLoad


def foreign_load(
    load: EngineLoad, own_requests: int, own_kv_tokens: int, kv_capacity_tokens: int
) -> tuple[int, int]:
    """(requests, KV tokens) on the engine beyond the router's own accounting; never negative."""
    requests = max(0, load.requests - own_requests)
    if requests == 0:
        return 0, 0
    kv = max(0, round(load.kv_usage * kv_capacity_tokens) - own_kv_tokens)
    return requests, kv

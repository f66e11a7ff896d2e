"""Reading a backend's ``/metrics`` and correcting the router's accounting with it (pure).

The router counts what it sent; an engine also serves requests the router did not send (another
router replica, a client calling it directly). The engine's own gauges reveal that load:
``vllm:num_requests_running + vllm:num_requests_waiting`` above the router's count of residents is
*foreign* load, and its KV share (``vllm:kv_cache_usage_perc`` times the cache) beyond the router's
own tokens is foreign KV. Corrections only ever add load: a scrape a moment old that misses a
just-placed request must not make a server look emptier than the router knows it is.

Only the three gauges are read, line by line (a vLLM metrics page is mostly histograms); lines
that do not parse are skipped and counted, so a garbled page never breaks the router.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
_WANTED = (RUNNING, WAITING, KV_USAGE)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    running: float
    waiting: float
    kv_usage: float  # fraction 0..1 of the engine's KV cache
    bad_lines: int = 0


def parse_engine_load(text: str) -> EngineLoad | None:
    """The load gauges of a Prometheus text page (summed over label sets); None if absent."""
    sums = dict.fromkeys(_WANTED, 0.0)
    seen: set[str] = set()
    bad = 0
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        name = line[:name_end] if name_end >= 0 else line
        if name not in sums:
            continue
        try:
            value = float(line.rsplit("}", 1)[-1].split()[0])
        except (ValueError, IndexError):
            bad += 1
            continue
        if not math.isfinite(value) or value < 0:
            bad += 1
            continue
        sums[name] += value
        seen.add(name)
    if RUNNING not in seen:
        return None
    return EngineLoad(sums[RUNNING], sums[WAITING], min(1.0, sums[KV_USAGE]), bad)


def foreign_load(
    load: EngineLoad, own_requests: int, own_kv_tokens: int, kv_capacity_tokens: int
) -> tuple[int, int]:
    """(requests, KV tokens) on the engine beyond the router's own accounting; never negative."""
    requests = max(0, round(load.running + load.waiting) - own_requests)
    if requests == 0:
        return 0, 0
    kv = max(0, round(load.kv_usage * kv_capacity_tokens) - own_kv_tokens)
    return requests, kv

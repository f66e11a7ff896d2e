"""The load gauges of a vLLM ``/metrics`` page, and the one parser of them (pure).

A data-parallel vLLM server exports one label set per engine (``engine="0"``, ``engine="1"``,
...). ``vllm:num_requests_running`` and ``vllm:num_requests_waiting`` are summed over them (the
server holds all those requests); ``vllm:kv_cache_usage_perc`` is a fraction of each engine's own
KV cache, so it is averaged over them (a sum would overstate the use N times with N engines).
Releases before ``kv_cache_usage_perc`` named the gauge ``vllm:gpu_cache_usage_perc``; it is read
when the new name is absent (vLLM 0.33.0 no longer exports it:
``polyserve/wire/vllm_surface/vllm-0.33.0.json``).

Only these gauges are read, line by line (a vLLM metrics page is mostly histograms); a line that
does not parse, or whose value is NaN, infinite or negative, is skipped and counted, so a garbled
page never breaks a scraper. Names are matched whole: ``vllm:num_requests_waiting_by_reason`` is
not ``vllm:num_requests_waiting``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NUM_REQUESTS_RUNNING = "vllm:num_requests_running"
NUM_REQUESTS_WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"  # a fraction 0..1 of one engine's KV cache
OLD_KV_CACHE_USAGE = "vllm:gpu_cache_usage_perc"  # the same gauge's name in older releases
_WANTED = (NUM_REQUESTS_RUNNING, NUM_REQUESTS_WAITING, KV_CACHE_USAGE, OLD_KV_CACHE_USAGE)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    running: float
    waiting: float
    kv_usage: float  # fraction 0..1 of the engine's KV cache
    bad_lines: int = 0

    @property
    def requests(self) -> int:
        """Requests the engine holds, running or waiting."""
        return round(self.running + self.waiting)


def parse_engine_load(text: str) -> EngineLoad | None:
    """The load gauges of a Prometheus text page; None if it has no running gauge."""
    sums = dict.fromkeys(_WANTED, 0.0)
    counts = dict.fromkeys(_WANTED, 0)
    bad = 0
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
        if line[:name_end] not in sums:
            continue
        name = line[:name_end]
        # the value follows the labels (if any), and a timestamp may follow it
        rest = line.rsplit("}", 1)[-1] if line.startswith("{", name_end) else line[name_end:]
        try:
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            bad += 1
            continue
        if not math.isfinite(value) or value < 0:
            bad += 1
            continue
        sums[name] += value
        counts[name] += 1
    if not counts[NUM_REQUESTS_RUNNING]:
        return None
    kv_name = KV_CACHE_USAGE if counts[KV_CACHE_USAGE] else OLD_KV_CACHE_USAGE
    kv = sums[kv_name] / counts[kv_name] if counts[kv_name] else 0.0  # mean over engines
    return EngineLoad(sums[NUM_REQUESTS_RUNNING], sums[NUM_REQUESTS_WAITING], min(1.0, kv), bad)

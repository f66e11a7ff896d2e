"""PolyServe's dynamic chunking inside real vLLM (0.33.0), as a scheduler plugin.

``vllm serve ... --scheduler-cls polyserve.vllm.scheduler.DynamicChunkScheduler`` makes vLLM's
engine core cut each step's token budget with the rule the engine model runs
(:mod:`polyserve.chunking`). This package imports without vLLM: the names below are what the
operator and the mock engine render and read, and :mod:`polyserve.vllm.budget` is the plugin's
pure part (settings, the per-step budget). Only :mod:`polyserve.vllm.scheduler` imports vLLM
(and so torch); it must be importable in vLLM's engine-core process, so the engine image needs
``polyserve`` installed (``pip install 'polyserve[vllm]'``).
"""

from __future__ import annotations

#: The ``--scheduler-cls`` value that turns dynamic chunking on (async scheduling, vLLM's default).
SCHEDULER_CLS = "polyserve.vllm.scheduler.DynamicChunkScheduler"
#: The same for an engine with async scheduling off (``--no-async-scheduling``).
SYNC_SCHEDULER_CLS = "polyserve.vllm.scheduler.DynamicChunkSyncScheduler"
SCHEDULER_CLASSES = (SCHEDULER_CLS, SYNC_SCHEDULER_CLS)

#: A shipped profile name or a profile file: the iteration-time model the budget is cut with.
ENV_PROFILE = "POLYSERVE_PROFILE"
#: The profile's YAML text itself (the operator fills it from a ConfigMap); instead of ENV_PROFILE.
ENV_PROFILE_YAML = "POLYSERVE_PROFILE_YAML"
#: The step time budget (ms) while decodes run: > 0.
ENV_CHUNK_BUDGET_MS = "POLYSERVE_CHUNK_BUDGET_MS"
#: Slack-aware chunking: the share of the most urgent decode's slack a step may use, in [0, 1).
ENV_SLACK_SHARE = "POLYSERVE_SLACK_SHARE"
#: The deadline SLO that slack is measured against (both or neither; neither: no slack-aware
#: chunking). Measured from vLLM's own arrival time, which misses any wait at the router.
ENV_TTFT_MS = "POLYSERVE_TTFT_MS"
ENV_TPOT_MS = "POLYSERVE_TPOT_MS"

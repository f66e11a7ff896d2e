"""vLLM 0.33.0's V1 scheduler with PolyServe's dynamic chunking (imports vLLM, and so torch).

``vllm serve ... --scheduler-cls polyserve.vllm.scheduler.DynamicChunkScheduler`` with the
``POLYSERVE_*`` variables of :mod:`polyserve.vllm` set. Each ``schedule()`` first sets
``self.max_num_scheduled_tokens``, the token budget vLLM's ``Scheduler.schedule`` reads once per
step (and asserts the step within), to :func:`polyserve.vllm.budget.plugin_step_budget`, at most
the configured budget; vLLM's own rules do the rest (docs/vllm-scheduler-plugin.md).

Known difference from the engine model: vLLM serves its running list in admission order, so a
partial prefill admitted before some decodes (possible with ``--long-prefill-token-threshold``)
is scheduled ahead of them and may take their share of a cut budget in that step; the engine
model always serves decodes first.
"""

from __future__ import annotations

import os
import time
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler

from polyserve.vllm import SYNC_SCHEDULER_CLS
from polyserve.vllm.budget import PluginSettings, plugin_step_budget, settings_from_env


class DynamicChunkSyncScheduler(Scheduler):
    """``Scheduler`` with dynamic chunking, for engines with async scheduling off."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Read first: a bad setting fails the engine's start, before any KV is set up.
        self.polyserve: PluginSettings = settings_from_env(os.environ)
        super().__init__(*args, **kwargs)
        #: the configured budget (--max-num-scheduled-tokens, else --max-num-batched-tokens):
        #: the ceiling of every step's budget
        self.configured_max_scheduled_tokens: int = self.max_num_scheduled_tokens

    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        self.max_num_scheduled_tokens = plugin_step_budget(
            self.polyserve,
            self.running,
            self.configured_max_scheduled_tokens,
            self.block_size,
            time.time(),  # the clock of Request.arrival_time
        )
        return super().schedule(throttle_prefills)


class DynamicChunkScheduler(DynamicChunkSyncScheduler, AsyncScheduler):
    """``AsyncScheduler`` with dynamic chunking (vLLM's default, async scheduling on)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.scheduler_config.async_scheduling:
            raise ValueError(
                "async scheduling is off in this engine: use --scheduler-cls "
                f"{SYNC_SCHEDULER_CLS} (an AsyncScheduler needs the async engine loop)"
            )

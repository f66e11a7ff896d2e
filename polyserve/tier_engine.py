"""A tier's stock-vLLM engine configuration, derived from its profile and SLO (pure).

One function, :func:`derive_tier_engine`, used by the operator (the flags of a tier's
Deployment), ``polyserve up`` and the simulator's stock mode, so that all three run the same engine
for a tier. vLLM cannot change these at run time: a tier gets them once, from its TPOT and TTFT.

The rules, over the profile's iteration-time model and the typical request lengths that the live
autoscalers size servers by (``autoscale.capacity``: the Azure conversation trace):

* ``--max-num-seqs``: the tier's capacity batch, the largest decode batch whose step fits the TPOT
  at the typical context per decode, capped by the KV cache (``Profile.max_decode_batch``);
* the *working* decode batch: the decodes in flight when one server runs at its fluid capacity
  (``profile.tier_capacity``), by Little's law with every token taking the whole TPOT (an upper
  bound, so the budget below errs small), at most ``--max-num-seqs``;
* ``--max-num-batched-tokens``: the largest whole number of KV blocks such that a step of the
  working decode batch plus one first prefill chunk that fills the rest of the budget stays
  within the step time that admission plans for (``policy.checks.step_budget_ms``: the TPOT less
  its headroom). A budget fitted to the whole TPOT made admission's TPOT-at-peak check refuse
  t20 servers from 17 residents on (ShareGPT on stock at 84 req/s: attainment 0.877, t20 0.51;
  fitted to the plan: 0.967, t20 0.81); at most the profile's own budget (vLLM's default for the GPU, the range the
  profile was measured over), at least one block and at least ``--max-num-seqs`` (vLLM refuses a
  budget below the running cap);
* ``--enable-chunked-prefill``: always (vLLM V1 always chunks; the engine model does too);
* ``--long-prefill-token-threshold``: half the budget (whole blocks) when the TTFT is long enough
  that the typical long prompt (90th percentile of the typical lengths), prefilled half a budget a
  step at one step per TPOT, takes at most half the TTFT (the other half is left for queueing).
  Then one long prompt cannot hold a whole step, and a short prompt behind it starts in the next
  step; otherwise off, since a long prompt needs the whole budget to meet its TTFT;
* ``--max-model-len``: the profile's;
* ``--scheduling-policy priority`` where tiers share servers (``shared``: the router's lazy
  promotion puts looser tiers' requests on this tier's servers, and forwards their tier as vLLM's
  ``priority``), else vLLM's default ``fcfs``.

A TPOT that not even one decode meets (the operator reports it as ``TPOTUnattainable``) still
gets a valid configuration: one sequence and the smallest budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from polyserve.autoscale.capacity import typical_capacity_rps, typical_lengths
from polyserve.engine import EngineConfig, SchedulingPolicy
from polyserve.policy.checks import step_budget_ms
from polyserve.profile import Profile
from polyserve.wire.vllm_args import flag_name, split_flags

#: The percentile of the typical prompt lengths that the TTFT rule keeps prefilling in time.
LONG_PROMPT_PERCENTILE = 90.0

FLAG_BUDGET = "--max-num-batched-tokens"
FLAG_SEQS = "--max-num-seqs"
FLAG_MODEL_LEN = "--max-model-len"
FLAG_CHUNKED = "--enable-chunked-prefill"
FLAG_LONG_PREFILL = "--long-prefill-token-threshold"
FLAG_POLICY = "--scheduling-policy"


@dataclass(frozen=True)
class TierEngine:
    """The engine flags of one tier, and why each has its value (``reasons``, keyed by flag)."""

    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    long_prefill_token_threshold: int  # 0 = off
    enable_chunked_prefill: bool
    scheduling_policy: SchedulingPolicy
    reasons: dict[str, str] = field(default_factory=dict, compare=False)

    def vllm_args(self) -> list[str]:
        """The flags as vLLM spells them."""
        args = [
            FLAG_BUDGET,
            str(self.max_num_batched_tokens),
            FLAG_SEQS,
            str(self.max_num_seqs),
            FLAG_MODEL_LEN,
            str(self.max_model_len),
            FLAG_CHUNKED if self.enable_chunked_prefill else "--no-enable-chunked-prefill",
        ]
        if self.long_prefill_token_threshold:
            args += [FLAG_LONG_PREFILL, str(self.long_prefill_token_threshold)]
        if self.scheduling_policy != "fcfs":
            args += [FLAG_POLICY, self.scheduling_policy]
        return args

    def args_after(self, user_args: Sequence[str]) -> list[str]:
        """``user_args`` followed by each derived flag the user did not set: the user's own
        flags win, flag by flag (``--flag value``, ``--flag=value``, vLLM's ``--flag_name``
        spelling, and ``--no-flag`` for a boolean all count as set)."""
        given = {flag_name(a) for a in user_args if a.startswith("--")}
        return [
            *user_args,
            *(w for f in split_flags(self.vllm_args()) if flag_name(f[0]) not in given for w in f),
        ]

    def engine_config(self, profile: Profile) -> EngineConfig:
        """The engine model's configuration for these flags (what the mock engine and the
        simulator run)."""
        return EngineConfig.from_profile(
            profile,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            long_prefill_token_threshold=self.long_prefill_token_threshold,
            scheduling_policy=self.scheduling_policy,
        )


def _blocks(tokens: int, block: int) -> int:
    """``tokens`` rounded down to whole KV blocks."""
    return tokens // block * block


def typical_context_tokens() -> float:
    """Mean context of a decode over the typical lengths (each request's decodes see its prompt
    and, on average, half its output)."""
    prompts, outputs = typical_lengths()
    return float(((prompts + outputs / 2.0) * outputs).mean()) / float(outputs.mean())


def capacity_batch(profile: Profile, tpot_ms: float) -> int:
    """The largest decode batch within ``tpot_ms`` at the typical context (0: not even one)."""
    return profile.max_decode_batch(tpot_ms, typical_context_tokens())


def working_decode_batch(profile: Profile, tpot_ms: float) -> int:
    """Decodes in flight on one server at its fluid capacity: rate x mean output x TPOT (Little's
    law with each token taking the whole TPOT, an upper bound), within 1..the capacity batch."""
    _, outputs = typical_lengths()
    rate = typical_capacity_rps(profile, tpot_ms)
    n = math.ceil(rate * float(outputs.mean()) * tpot_ms / 1000.0)
    return max(1, min(n, capacity_batch(profile, tpot_ms)))


def mixed_step_ms(profile: Profile, n_decode: int, budget: int) -> float:
    """One step of ``n_decode`` decodes (typical context) and a first prefill chunk that fills the
    rest of ``budget``: the step the budget rule keeps within the TPOT."""
    chunk = max(budget - n_decode, 0)
    ctx = typical_context_tokens()
    return profile.step_ms(n_decode, n_decode * ctx, chunk, float(chunk * chunk))


def derive_tier_engine(
    profile: Profile, tpot_ms: float, ttft_ms: float, *, shared: bool = False
) -> TierEngine:
    """The stock-vLLM flags of a tier with this TPOT and TTFT on this profile (the rules: the
    module docstring)."""
    block = profile.block_size
    ctx = typical_context_tokens()
    reasons: dict[str, str] = {}

    batch = capacity_batch(profile, tpot_ms)
    seqs = max(batch, 1)
    if batch == 0:
        reasons[FLAG_SEQS] = (
            f"1: not even one decode fits {tpot_ms:g} ms "
            f"({profile.step_ms(1, ctx):.1f} ms at {ctx:.0f} tokens of context)"
        )
    else:
        kv_bound = batch == int(profile.kv_cache_tokens // ctx)
        bound = "the KV cache" if kv_bound else f"the {tpot_ms:g} ms TPOT"
        reasons[FLAG_SEQS] = (
            f"{seqs}: the largest decode batch at {ctx:.0f} tokens of context each, "
            f"bounded by {bound}"
        )

    working = working_decode_batch(profile, tpot_ms)
    limit = _blocks(profile.max_num_batched_tokens, block)
    room = max(limit - working, 0)
    plan_ms = step_budget_ms(tpot_ms)
    chunk = profile.max_prefill_chunk(plan_ms, working, working * ctx, 0, room)
    fitted = _blocks(working + chunk, block)
    budget = max(fitted, block, -(-seqs // block) * block)  # whole blocks, at least the seqs
    if budget > fitted:
        why = f"the floor: one KV block, and vLLM refuses less than {FLAG_SEQS} ({seqs})"
    elif chunk == room:
        why = (
            f"the profile's own budget (vLLM's default for the GPU), which fits {plan_ms:g} ms "
            f"(the {tpot_ms:g} ms TPOT less admission's headroom)"
        )
    else:
        why = (
            f"the largest whole-block budget whose step ({working} decodes, the working batch, "
            f"plus a prefill chunk filling it: {mixed_step_ms(profile, working, budget):.1f} ms) "
            f"fits {plan_ms:g} ms (the {tpot_ms:g} ms TPOT less admission's headroom)"
        )
    reasons[FLAG_BUDGET] = f"{budget}: {why}"
    reasons[FLAG_MODEL_LEN] = f"{profile.max_model_len}: the profile's"
    reasons[FLAG_CHUNKED] = "on: vLLM V1 always chunks prefills (said explicitly)"

    prompts, _ = typical_lengths()
    half = _blocks(budget // 2, block)
    long_prompt = int(np.percentile(prompts, LONG_PROMPT_PERCENTILE))
    steps = math.ceil(long_prompt / half) if half else 0
    if half and steps * tpot_ms <= ttft_ms / 2:
        threshold = half
        reasons[FLAG_LONG_PREFILL] = (
            f"{half}: half the budget, so no one prompt holds a whole step; a {long_prompt}-token "
            f"prompt (p{LONG_PROMPT_PERCENTILE:g}) still prefills in {steps} step(s) "
            f"({steps * tpot_ms:g} ms, at most half the TTFT {ttft_ms:g} ms)"
        )
    else:
        threshold = 0
        reasons[FLAG_LONG_PREFILL] = (
            f"off: a {long_prompt}-token prompt (p{LONG_PROMPT_PERCENTILE:g}) needs the whole "
            f"budget to prefill within half the TTFT {ttft_ms:g} ms"
        )

    policy: SchedulingPolicy = "priority" if shared else "fcfs"
    reasons[FLAG_POLICY] = (
        "priority: looser tiers' requests share these servers, and the router sends their tier "
        "as vLLM's priority"
        if shared
        else "fcfs: the servers serve their own tier only"
    )
    return TierEngine(
        max_num_batched_tokens=budget,
        max_num_seqs=seqs,
        max_model_len=profile.max_model_len,
        long_prefill_token_threshold=threshold,
        enable_chunked_prefill=True,
        scheduling_policy=policy,
        reasons=reasons,
    )

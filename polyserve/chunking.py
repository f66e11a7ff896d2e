"""PolyServe's dynamic chunking rule (pure): how much prefill one engine step may take.

While decodes run, a step's prefill is cut so that the step's predicted time (the profile's
iteration-time model) stays within a time budget; with no decodes nothing is cut (there is
nobody's TPOT to protect), and a cut never goes below one KV block (a prefill always progresses).
Slack-aware chunking raises the budget to ``slack_share`` of the most urgent decode's slack (the
time until its next token is due, under the deadline SLO) when that is larger: the deadline SLO
lets a request bank time, and the bigger chunk spends part of it.

One rule, two callers: the engine model (:mod:`polyserve.engine`, which the simulator and the mock
engine run) cuts each chunk with :func:`dynamic_chunk`; vLLM's scheduler plugin
(:mod:`polyserve.vllm.scheduler`) turns the same rule into vLLM's per-step token budget with
:func:`step_token_budget`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from polyserve.profile import Profile
from polyserve.slo import token_deadline


def slack_aware_budget_ms(budget_ms: float, slack_share: float, slack_ms: float) -> float:
    """The step's time budget: ``budget_ms``, raised to ``slack_share * slack_ms`` when that is
    larger (slack-aware chunking; off when either ``budget_ms`` or ``slack_share`` is 0)."""
    if budget_ms and slack_share:
        return max(budget_ms, slack_ms * slack_share)
    return budget_ms


def dynamic_chunk(
    profile: Profile,
    budget_ms: float,
    n_decode: int,
    decode_ctx: float,
    past_tokens: int,
    limit: int,
    block_size: int,
    prefill_tokens: int = 0,
    prefill_pairs: float = 0.0,
) -> int:
    """One prefill chunk under dynamic chunking: the largest chunk (at most ``limit``, at least
    one block) of a prefill with ``past_tokens`` already computed that keeps a step of
    ``n_decode`` decodes over ``decode_ctx`` context tokens, plus the chunks already in it
    (``prefill_tokens``, ``prefill_pairs``), within ``budget_ms``. ``limit`` is returned uncut
    when the budget is 0 (off), no decodes run, or ``limit`` is at most one block."""
    if not budget_ms or not n_decode or limit <= block_size:
        return limit
    fit = profile.max_prefill_chunk(
        budget_ms, n_decode, decode_ctx, past_tokens, limit, prefill_tokens, prefill_pairs
    )
    return max(fit, block_size)


def step_token_budget(
    profile: Profile,
    budget_ms: float,
    decode_tokens: int,
    decode_ctx: float,
    past_tokens: int,
    max_tokens: int,
    block_size: int,
) -> int:
    """A step's whole token budget (vLLM's ``max_num_scheduled_tokens``): the decodes' tokens
    plus the prefill tokens :func:`dynamic_chunk` allows one prefill with ``past_tokens`` already
    computed, within ``max_tokens`` (the configured budget). Several prefills sharing the step are
    costed as one chunk of their total size: exact for one prefill, close when the others start
    from scratch."""
    room = max(max_tokens - decode_tokens, 0)
    chunk = dynamic_chunk(
        profile, budget_ms, decode_tokens, decode_ctx, past_tokens, room, block_size
    )
    return min(max_tokens, decode_tokens + chunk)


def most_urgent_slack_ms(
    now: float, decodes: Iterable[tuple[float, int]], ttft_ms: float, tpot_ms: float
) -> float:
    """The slack (ms) of the most urgent decode as of ``now`` (seconds): ``decodes`` are
    ``(arrival, index of the token its next step emits)`` pairs under one deadline SLO
    (``polyserve.slo.token_deadline``); inf with no decodes."""
    best = min((token_deadline(a, ttft_ms, tpot_ms, i) for a, i in decodes), default=math.inf)
    return (best - now) * 1000.0 if math.isfinite(best) else math.inf

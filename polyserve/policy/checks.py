"""The admission checks of SLO-aware placement, each explicit (PolyServe and pack-load share them).

A server *can take* a request under a per-token budget ``budget_ms`` (the host's TPOT) when:

1. **KV**: the projected peak KV (every resident and the newcomer at its expected output length)
   fits the KV cache, and the running cap (max_num_seqs) has room;
2. **TPOT at the projected peak**: a decode step with every resident at that peak stays within the
   budget. Using the peak, not today's KV, keeps an admitted request from breaking its neighbours'
   deadlines as they grow;
3. **first token**: the time already waited + the rest of the current step + the (chunked) prefill
   of the server's prefill backlog and this prompt stays within the TTFT. The chunk is the one the
   server can keep at its current decode load: with dynamic chunking the largest chunk whose step
   fits the budget (and at least one block), or with slack-aware chunking a bigger one (see
   ``PREDICT_SLACK_SHARE``), on plain vLLM the static token budget. A server whose
   decodes leave no room for a chunk is refused (continuous chunked-prefill prediction);
4. **second token**: the first token plus one decode step stays within ``TTFT + TPOT`` (the
   deadline of token 1).

``degrade=True`` skips checks 3 and 4 (the request is late anyway and the tier serves it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from polyserve.chunking import slack_aware_budget_ms
from polyserve.engine import SLACK_SHARE
from polyserve.policy.base import PendingRequest, ServerView


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str  # ok | kv | seqs | tpot | chunk | ttft | second_token
    ttft_pred_ms: float = math.nan


KV_HEADROOM = (
    0.9  # fraction of the KV cache admission plans to fill (blocks round up; outputs overrun)
)
#: Fraction of a TPOT that admission and dynamic chunking plan to use. Steps planned at exactly the
#: TPOT leave nothing for outputs longer than expected or a prefill that ran late.
TPOT_HEADROOM = 0.9


#: Share of the most urgent decode's slack the first-token check counts on for prefill chunks: half
#: what the engine spends on the next step (``engine.SLACK_SHARE``), because each big step spends
#: slack and a long prefill runs many. Measured: counting the engine's full share put 3-10% of the
#: tight tiers' requests past their TTFT (ShareGPT at 118 req/s, attainment 0.885 vs 0.936).
PREDICT_SLACK_SHARE = SLACK_SHARE / 2


def step_budget_ms(tpot_ms: float) -> float:
    """The step time a server hosting ``tpot_ms`` requests plans for."""
    return tpot_ms * TPOT_HEADROOM


def prefill_chunk(server: ServerView, budget_ms: float) -> int:
    """The chunk the server's engine will use next for prefill, at its current decode load: the
    engine's rule (``polyserve.chunking``), counting on less slack; 0 where the engine would
    only progress by its one-block floor (too slow to count on)."""
    prof = server.profile
    limit = max(0, server.max_batched_tokens - server.n_decode)
    if not server.chunk_budget_ms or not server.n_decode:
        return limit
    target = min(step_budget_ms(budget_ms), server.chunk_budget_ms)  # the engine's own target
    target = slack_aware_budget_ms(target, PREDICT_SLACK_SHARE, server.decode_slack_ms)
    chunk = prof.max_prefill_chunk(target, server.n_decode, server.kv_tokens, 0, limit)
    return chunk if chunk >= prof.block_size else 0


def peak_step_ms(server: ServerView, n_decode: int, decode_ctx: float) -> float:
    """The step at the server's peak: ``n_decode`` decodes over ``decode_ctx`` tokens, and on a
    static budget a first prefill chunk filling the rest of it (dynamic chunking cuts the chunk
    to fit instead)."""
    chunk = max(server.max_batched_tokens - n_decode, 0) if server.static_budget else 0
    return server.profile.step_ms(n_decode, decode_ctx, chunk, float(chunk * chunk))


def can_take(
    server: ServerView, req: PendingRequest, budget_ms: float, now: float, degrade: bool = False
) -> Verdict:
    prof = server.profile
    n = server.residents + 1
    if n > (server.max_num_seqs or prof.max_num_seqs):
        return Verdict(False, "seqs")
    peak_kv = server.projected_kv_tokens + req.prompt_tokens + req.expected_output
    if peak_kv > prof.kv_cache_tokens * KV_HEADROOM:
        return Verdict(False, "kv")
    if peak_step_ms(server, n, peak_kv) > step_budget_ms(budget_ms):
        return Verdict(False, "tpot")
    if degrade:
        return Verdict(True, "ok")
    chunk = prefill_chunk(server, budget_ms)
    if chunk <= 0:
        return Verdict(False, "chunk")
    backlog = server.prefill_backlog + req.prompt_tokens
    n_dec = server.n_decode
    ttft = server.busy_ms(now) + prof.prefill_ms(backlog, chunk, n_dec, server.kv_tokens)
    waited = req.wait_ms(now)
    if waited + ttft > req.ttft_ms:
        return Verdict(False, "ttft", ttft)
    second = ttft + prof.step_ms(n_dec + 1, server.kv_tokens + req.prompt_tokens)
    if waited + second > req.ttft_ms + req.tpot_ms:
        return Verdict(False, "second_token", ttft)
    return Verdict(True, "ok", ttft)


def ideal_ttft_ms(server: ServerView, prompt_tokens: int) -> float:
    """First-token time of a prompt alone on an idle server like this one (the best case; with no
    decodes to protect, dynamic chunking does not cut the prefill)."""
    return server.profile.prefill_ms(prompt_tokens, server.max_batched_tokens)

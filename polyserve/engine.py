"""A pure, deterministic model of one vLLM V1 engine, stepped in virtual time.

The model keeps vLLM V1's scheduler rules (reference/vllm-interface.md):

* a step first serves the running requests (one token for each decode, the next chunk for each
  partial prefill, in admission order), then admits waiting requests while token budget remains,
  fewer than ``max_num_seqs`` run, and nothing was preempted in this step;
* a chunk is ``min(remaining, long_prefill_token_threshold, budget left)``; the per-step budget is
  ``max_num_batched_tokens``;
* KV is allocated in blocks of ``block_size`` tokens; on a shortage the last running request
  (``fcfs``) or the one with the largest ``(priority, arrival)`` (``priority``) is preempted, loses
  its KV, and later recomputes its prompt and generated tokens as one prefill (vLLM's recompute);
* a preempted request goes back to the front of the waiting queue (``fcfs``) or into the priority
  order (``priority``); waiting admission stops at the first request whose blocks do not fit.

Decodes are always scheduled before partial prefills. In vLLM they are already ahead of any partial
prefill in the running list, except when a long-prefill threshold lets a later request be admitted
behind a partial one; the difference is then one step's order, not its size.

Speed: every decoding request gains exactly one token per step, so the decode set is kept in
aggregate (count, context sum, per-block-phase counts, a heap of finish steps) and a step costs
O(1) plus O(events), not O(batch). Per-request token timestamps stay recoverable: each request
records the segments of consecutive steps in which it emitted tokens, and the engine records every
step's end time.

The engine has no clock: ``step(now)`` is given the time the step starts and returns its duration
from the profile. It does no I/O.
"""

from __future__ import annotations

import heapq
import itertools
import math
from array import array
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from polyserve.chunking import dynamic_chunk, slack_aware_budget_ms
from polyserve.profile import Profile
from polyserve.slo import token_deadline

SchedulingPolicy = Literal["fcfs", "priority"]

#: Default share of the most urgent decode's slack that slack-aware chunking lets one step use.
SLACK_SHARE = 0.5


class EngineError(ValueError):
    """A request or configuration the engine refuses (as vLLM would)."""


class Phase(Enum):
    WAITING = "waiting"
    PREFILL = "prefill"  # running, prompt (or recompute) not fully computed
    DECODE = "decode"  # running, one token per step
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's start-up arguments (fixed for its lifetime, as in vLLM)."""

    kv_cache_tokens: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    long_prefill_token_threshold: int = 0  # 0 = off
    scheduling_policy: SchedulingPolicy = "fcfs"
    # PolyServe's dynamic chunking (an engine extension; 0 = off, plain vLLM): while decodes run,
    # each step's prefill chunks are cut so the predicted step stays within this many ms, but never
    # below one block.
    chunk_budget_ms: float = 0.0
    # Slack-aware chunking (with chunk_budget_ms > 0): when every running decode carries a deadline
    # (Request.first_deadline/tpot_ms), a step may run up to this fraction of the most urgent
    # decode's slack (time until its next token is due), when that is more than chunk_budget_ms.
    # The deadline SLO lets a request bank time; the bigger chunk spends part of it.
    slack_share: float = SLACK_SHARE

    def __post_init__(self) -> None:
        for name in (
            "kv_cache_tokens",
            "block_size",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
        ):
            if getattr(self, name) <= 0:
                raise EngineError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise EngineError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}), as vLLM requires"
            )
        if self.long_prefill_token_threshold < 0:
            raise EngineError("long_prefill_token_threshold must be >= 0")
        if not (self.chunk_budget_ms >= 0):
            raise EngineError("chunk_budget_ms must be >= 0")
        if not (0 <= self.slack_share < 1):
            raise EngineError("slack_share must be in [0, 1)")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise EngineError(f"unknown scheduling policy {self.scheduling_policy!r}")
        if self.kv_cache_tokens // self.block_size < 1:
            raise EngineError("the KV cache must hold at least one block")

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: object) -> EngineConfig:
        base: dict[str, object] = {
            "kv_cache_tokens": profile.kv_cache_tokens,
            "block_size": profile.block_size,
            "max_num_seqs": profile.max_num_seqs,
            "max_num_batched_tokens": profile.max_num_batched_tokens,
            "max_model_len": profile.max_model_len,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)  # type: ignore[arg-type]

    @property
    def num_blocks(self) -> int:
        return self.kv_cache_tokens // self.block_size


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(eq=False, slots=True)
class Request:
    """A request's state inside one engine. Fields after ``arrival`` are the engine's."""

    rid: Hashable
    prompt_tokens: int
    output_tokens: int
    priority: int = 0
    arrival: float = 0.0
    # The deadline SLO, when the caller knows it: token i is due at first_deadline + i * tpot_ms
    # (absolute seconds; inf = unknown). Only slack-aware chunking reads it.
    first_deadline: float = math.inf
    tpot_ms: float = 0.0
    phase: Phase = Phase.WAITING
    order: int = 0  # engine arrival order (tie-break of fcfs and priority)
    admitted: int = 0  # admission order into the running set (the preemption order)
    computed: int = 0  # tokens whose KV is computed (valid while not decoding)
    generated: int = 0  # tokens emitted (valid while not decoding)
    blocks: int = 0  # KV blocks held (valid while not decoding)
    preemptions: int = 0
    first_token_step: int = -1
    finish_step: int = -1
    # While decoding: computed == _c + (index of the step about to run); finishes at _end_step.
    _c: int = 0
    _end_step: int = 0
    _gen_base: int = 0  # generated when it joined the decode set
    _join_step: int = 0  # first decode step it takes part in
    segments: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def prefill_target(self) -> int:
        """Tokens to compute before the next token can be emitted (recompute includes output)."""
        return self.prompt_tokens + self.generated

    @property
    def done(self) -> bool:
        return self.phase in (Phase.FINISHED, Phase.ABORTED)


@dataclass(slots=True)
class StepResult:
    """What one step did. ``emitted`` lists every request that emitted a token (only when asked)."""

    index: int
    start: float
    duration_ms: float
    n_decode: int
    prefill_tokens: int
    decode_ctx: int
    first_tokens: list[Request]  # emitted the token that ends a (re)prefill
    finished: list[Request]
    preempted: list[Request]
    emitted: list[Request] | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration_ms / 1000.0

    @property
    def tokens(self) -> int:
        return self.n_decode + self.prefill_tokens


class Engine:
    """One vLLM V1 engine: add requests, step, abort, observe."""

    def __init__(
        self, profile: Profile, config: EngineConfig | None = None, record_timeline: bool = True
    ) -> None:
        self.profile = profile
        self.config = config or EngineConfig.from_profile(profile)
        self._bs = self.config.block_size
        self.free_blocks = self.config.num_blocks
        self.step_index = 0
        self.requests: dict[Hashable, Request] = {}  # every live request (waiting or running)
        self.running: dict[Hashable, Request] = {}  # admission order: the last is preempted first
        self._waiting: deque[Request] = deque()  # fcfs
        self._waiting_heap: list[tuple[int, int, Request]] = []  # priority: (priority, order, req)
        self._n_waiting = 0
        self._prefilling: dict[Hashable, Request] = {}  # running, not decoding (admission order)
        # aggregate decode set
        self._decoding: dict[Hashable, Request] = {}
        self._dec_c_sum = 0
        self._dec_phase = [0] * self._bs
        self._finish_heap: list[tuple[int, int, Request]] = []
        # decode deadlines per TPOT: (key, order, join step, req); the token a decode emits in step s
        # is due at key + s * tpot (lazy deletion: an entry is live while its request decodes from
        # that join step). Decodes without a deadline are counted: none may be outrun.
        self._deadlines: dict[float, list[tuple[float, int, int, Request]]] = {}
        self._dec_no_deadline = 0
        self.last_slack_ms = 0.0  # the most urgent decode's slack at the last step's start
        self._order = itertools.count()
        self._admit_seq = itertools.count()
        # counters (vLLM metric names in comments)
        self.preemptions_total = 0  # vllm:num_preemptions_total
        self.prompt_tokens_total = 0  # vllm:prompt_tokens_total
        self.generation_tokens_total = 0  # vllm:generation_tokens_total
        self.record_timeline = record_timeline
        self.step_ends: array[float] = array("d")

    # ---------------------------------------------------------------- observable state

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return self._n_waiting

    @property
    def used_blocks(self) -> int:
        return self.config.num_blocks - self.free_blocks

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use (vllm:kv_cache_usage_perc)."""
        return self.used_blocks / self.config.num_blocks

    @property
    def has_work(self) -> bool:
        return bool(self.running) or self._n_waiting > 0

    def decode_ctx(self) -> int:
        """Sum of decode context tokens (attended by the next step's decodes)."""
        return self._dec_c_sum + len(self._decoding) * (self.step_index + 1)

    def generated(self, req: Request) -> int:
        """Tokens a request has emitted so far."""
        if req.phase is Phase.DECODE:
            return req._gen_base + (self.step_index - req._join_step)
        return req.generated

    def context_tokens(self, req: Request) -> int:
        """Tokens whose KV the request holds now."""
        if req.phase is Phase.DECODE:
            return req._c + self.step_index
        return req.computed

    def waiting(self) -> Iterator[Request]:
        if self.config.scheduling_policy == "fcfs":
            yield from self._waiting
        else:
            yield from (
                r
                for _, _, r in sorted(self._waiting_heap, key=lambda e: (e[0], e[1]))
                if not r.done
            )

    def token_times(self, req: Request) -> list[float]:
        """End times of the steps in which the request emitted each token (needs the timeline)."""
        if not self.record_timeline:
            raise EngineError("this engine does not record its timeline")
        times: list[float] = []
        for start_step, _first, count in self._segments(req):
            times.extend(self.step_ends[start_step : start_step + count])
        return times

    def _segments(self, req: Request) -> list[tuple[int, int, int]]:
        segs = list(req.segments)
        if req.phase is Phase.DECODE and segs:
            start, first, _ = segs[-1]
            segs[-1] = (start, first, self.generated(req) - first)
        return segs

    # ---------------------------------------------------------------- requests in and out

    def add(self, req: Request) -> None:
        """Queue a request (vLLM's add_request). Refuses what vLLM would refuse with a 400."""
        if req.rid in self.requests:
            raise EngineError(f"duplicate request id {req.rid!r}")
        if req.prompt_tokens < 1:
            raise EngineError("a prompt must have at least one token")
        if req.output_tokens < 1:
            raise EngineError("a request must generate at least one token")
        if req.prompt_tokens + req.output_tokens > self.config.max_model_len:
            raise EngineError(
                f"This model's maximum context length is {self.config.max_model_len} tokens. However, you "
                f"requested {req.prompt_tokens + req.output_tokens} tokens ({req.prompt_tokens} in the "
                f"messages, {req.output_tokens} in the completion)."
            )
        if req.priority != 0 and self.config.scheduling_policy != "priority":
            raise EngineError("priority scheduling is not enabled (--scheduling-policy priority)")
        req.phase = Phase.WAITING
        req.order = next(self._order)
        self.requests[req.rid] = req
        self._push_waiting(req, front=False)

    def abort(self, rid: Hashable) -> Request | None:
        """Abort a request wherever it is; its KV is freed. Returns it, or None if unknown/done."""
        req = self.requests.pop(rid, None)
        if req is None:
            return None
        if req.phase is Phase.WAITING:
            if self.config.scheduling_policy == "fcfs":
                self._waiting.remove(req)
            # the priority heap drops aborted entries lazily
            self._n_waiting -= 1
        else:
            self._release_running(req)
        req.phase = Phase.ABORTED
        return req

    def _push_waiting(self, req: Request, front: bool) -> None:
        self._n_waiting += 1
        if self.config.scheduling_policy == "fcfs":
            if front:
                self._waiting.appendleft(req)
            else:
                self._waiting.append(req)
        else:
            heapq.heappush(self._waiting_heap, (req.priority, req.order, req))

    def _peek_waiting(self) -> Request | None:
        if self.config.scheduling_policy == "fcfs":
            return self._waiting[0] if self._waiting else None
        heap = self._waiting_heap
        while heap and heap[0][2].phase is not Phase.WAITING:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def _pop_waiting(self) -> None:
        self._n_waiting -= 1
        if self.config.scheduling_policy == "fcfs":
            self._waiting.popleft()
        else:
            heapq.heappop(self._waiting_heap)

    # ---------------------------------------------------------------- decode-set bookkeeping

    def _join_decode(self, req: Request, next_step: int) -> None:
        """Move a request that just emitted a token (and is not done) into the decode set."""
        req.phase = Phase.DECODE
        req._c = req.computed - next_step
        req._gen_base = req.generated
        req._join_step = next_step
        req._end_step = next_step + (req.output_tokens - req.generated) - 1
        self._decoding[req.rid] = req
        self._dec_c_sum += req._c
        self._dec_phase[req._c % self._bs] += 1
        heapq.heappush(self._finish_heap, (req._end_step, req.order, req))
        if req.tpot_ms > 0 and math.isfinite(req.first_deadline):
            # first_deadline is arrival + TTFT: token i is due TPOT * i after it
            key = token_deadline(req.first_deadline, 0.0, req.tpot_ms, req._gen_base - next_step)
            heap = self._deadlines.setdefault(req.tpot_ms, [])
            heapq.heappush(heap, (key, req.order, next_step, req))
        else:
            self._dec_no_deadline += 1

    def _leave_decode(self, req: Request) -> None:
        """Materialise a decoding request's state as of the current step boundary."""
        del self._decoding[req.rid]
        if not (req.tpot_ms > 0 and math.isfinite(req.first_deadline)):
            self._dec_no_deadline -= 1
        self._dec_c_sum -= req._c
        self._dec_phase[req._c % self._bs] -= 1
        req.computed = req._c + self.step_index
        req.generated = self.generated(req)
        req.blocks = _ceil_div(req.computed, self._bs)
        start, first, _ = req.segments[-1]
        req.segments[-1] = (start, first, req.generated - first)

    def _release_running(self, req: Request) -> None:
        """Take a running request out of the running set and free its KV."""
        if req.phase is Phase.DECODE:
            self._leave_decode(req)
        else:
            self._prefilling.pop(req.rid, None)
        del self.running[req.rid]
        self.free_blocks += req.blocks
        req.blocks = 0

    def _preempt_last(self, preempted: list[Request], among: dict[Hashable, Request]) -> Request:
        """Preempt the last admitted (fcfs) or lowest-priority (priority) request of ``among``."""
        if self.config.scheduling_policy == "fcfs":
            victim = among[next(reversed(among))]
        else:
            victim = max(among.values(), key=lambda r: (r.priority, r.order))
        self._release_running(victim)
        victim.computed = 0
        victim.phase = Phase.WAITING
        victim.preemptions += 1
        self.preemptions_total += 1
        self._push_waiting(victim, front=True)
        preempted.append(victim)
        return victim

    def decode_slack_ms(self, now: float) -> float:
        """Time until the most urgent decode's next token is due, as of a step starting at ``now``
        (inf with no decodes; 0 when a decode has no known deadline)."""
        if self._dec_no_deadline:
            return 0.0
        s = self.step_index
        best = math.inf
        for tpot, heap in self._deadlines.items():
            while heap:
                _key, _order, join, req = heap[0]
                if req.phase is Phase.DECODE and req._join_step == join:
                    break
                heapq.heappop(heap)
            if heap:
                best = min(best, token_deadline(heap[0][0], 0.0, tpot, s))
        return (best - now) * 1000.0 if math.isfinite(best) else math.inf

    # ---------------------------------------------------------------- the step

    def step(self, now: float = 0.0, collect_emitted: bool = False) -> StepResult:
        """Schedule and run one step starting at ``now``; returns what it did and how long it took.

        An engine with nothing runnable returns a step of zero duration and does not advance.
        """
        cfg = self.config
        s = self.step_index
        bs = self._bs
        preempted: list[Request] = []

        # 1. decodes: each needs a new block when its next slot starts one
        while self._decoding:
            need = self._dec_phase[(-s) % bs]
            if need <= self.free_blocks:
                break
            self._preempt_last(preempted, self.running)
        n_decode = len(self._decoding)
        if n_decode:
            self.free_blocks -= self._dec_phase[(-s) % bs]
        budget = cfg.max_num_batched_tokens - n_decode
        threshold = cfg.long_prefill_token_threshold
        decode_ctx = self._dec_c_sum + n_decode * (s + 1)
        scheduled = pairs = 0
        # the slack is only worth finding when slack-aware chunking can use it
        use_slack = cfg.chunk_budget_ms and n_decode and cfg.slack_share
        self.last_slack_ms = self.decode_slack_ms(now) if use_slack else 0.0
        chunk_budget = slack_aware_budget_ms(
            cfg.chunk_budget_ms, cfg.slack_share, self.last_slack_ms
        )

        chunks: list[tuple[Request, int]] = []

        def next_chunk(req: Request) -> tuple[int, int]:
            """The request's next chunk and the KV blocks it needs. The chunk is the rest of its
            prefill, capped by the budget left, the long-prefill threshold, and PolyServe's dynamic
            chunk (the largest that keeps the step within budget; not cut when no decodes run:
            there is nobody's TPOT to protect)."""
            chunk = min(req.prefill_target - req.computed, budget)
            if threshold:
                chunk = min(chunk, threshold)
            chunk = dynamic_chunk(
                self.profile,
                chunk_budget,
                n_decode,
                decode_ctx,
                req.computed,
                chunk,
                bs,
                scheduled,
                pairs,
            )
            return chunk, _ceil_div(req.computed + chunk, bs) - req.blocks

        def take(req: Request, chunk: int, need: int) -> None:
            nonlocal budget, scheduled, pairs
            self.free_blocks -= need
            req.blocks += need
            budget -= chunk
            scheduled += chunk
            pairs += chunk * (req.computed + chunk)
            chunks.append((req, chunk))

        # 2. partial prefills already running, in admission order
        for req in list(self._prefilling.values()):
            if budget <= 0:
                break
            if req.rid not in self._prefilling:  # preempted earlier in this loop
                continue
            chunk, need = next_chunk(req)
            # Decodes already hold this step's blocks, so only partial prefills are preempted here.
            while need > self.free_blocks and req.rid in self._prefilling:
                if self._preempt_last(preempted, self._prefilling) is req:
                    break
            if req.rid not in self._prefilling:
                continue
            take(req, chunk, need)

        # 3. admit waiting requests (not in a step that preempted)
        if not preempted:
            while budget > 0 and len(self.running) < cfg.max_num_seqs:
                head = self._peek_waiting()
                if head is None:
                    break
                chunk, need = next_chunk(head)
                if need > self.free_blocks:
                    break
                self._pop_waiting()
                head.phase = Phase.PREFILL
                head.admitted = next(self._admit_seq)
                self.running[head.rid] = head
                self._prefilling[head.rid] = head
                take(head, chunk, need)

        prefill_tokens = scheduled
        if n_decode == 0 and prefill_tokens == 0:
            return StepResult(
                s, now, 0.0, 0, 0, 0, [], [], preempted, [] if collect_emitted else None
            )

        duration = self.profile.step_ms(n_decode, decode_ctx, prefill_tokens, pairs)
        emitted: list[Request] | None = list(self._decoding.values()) if collect_emitted else None

        # 4. commit: decodes gain a token each (aggregate); finished decodes leave
        self.generation_tokens_total += n_decode
        finished: list[Request] = []
        heap = self._finish_heap
        while heap and heap[0][0] <= s:
            end, _, req = heapq.heappop(heap)
            if req.phase is not Phase.DECODE or req._end_step != end:
                continue  # stale entry: preempted or aborted
            self.step_index = s + 1  # materialise as of the end of this step
            self._leave_decode(req)
            self.step_index = s
            self._finish(req, s, finished)

        # 5. commit: prefill chunks; a completed (re)prefill emits a token
        first_tokens: list[Request] = []
        for req, chunk in chunks:
            req.computed += chunk
            if req.computed < req.prefill_target:
                continue
            req.generated += 1
            self.generation_tokens_total += 1
            if req.first_token_step < 0:
                req.first_token_step = s
                self.prompt_tokens_total += req.prompt_tokens
            req.segments.append((s, req.generated - 1, 1))
            first_tokens.append(req)
            if emitted is not None:
                emitted.append(req)
            del self._prefilling[req.rid]
            if req.generated >= req.output_tokens:
                self._finish(req, s, finished)
            else:
                self._join_decode(req, s + 1)

        self.step_index = s + 1
        if self.record_timeline:
            self.step_ends.append(now + duration / 1000.0)
        return StepResult(
            s,
            now,
            duration,
            n_decode,
            prefill_tokens,
            decode_ctx,
            first_tokens,
            finished,
            preempted,
            emitted,
        )

    def _finish(self, req: Request, s: int, finished: list[Request]) -> None:
        if req.rid in self.running:
            del self.running[req.rid]
            self.free_blocks += req.blocks
            req.blocks = 0
        req.phase = Phase.FINISHED
        req.finish_step = s
        self.requests.pop(req.rid, None)
        finished.append(req)

"""The wall-clock step loop: one asyncio task drives one :class:`~polyserve.engine.Engine`.

While the engine has work the loop calls ``engine.step(start)``, sleeps until
``start + duration * slowdown``, then releases that step's tokens to their streams (every request
in ``emitted`` gets one token). Deadlines are absolute: the next step starts at the previous
deadline, not at the (slightly later) wake-up, so timer slack does not accumulate; when the loop is
late the next step starts at once. Past :attr:`EngineRunner.catch_up_limit` of lateness the step
clock restarts from now (the mock itself is then the bottleneck; :class:`LatenessStats` shows it).
The loop aims its sleep short of the deadline by the timer's learnt mean overshoot (epoll rounds
timeouts up to whole milliseconds; at most :attr:`EngineRunner.max_slack`), so tokens leave on
time on average rather than always late. When the engine is idle the loop waits on an event that new requests set: an idle engine costs
no CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from array import array
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from polyserve.engine import Engine, Phase, Request, StepResult
from polyserve.mockengine.metrics import EngineMetrics
from polyserve.mockengine.textgen import OutputPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What vLLM's DP load balancer knows of one engine."""

    waiting: int
    running: int
    kv_usage: float  # fraction 0..1
    in_flight: int  # requests this front end sent it that have not finished


def dp_engine_choice(loads: Sequence[EngineLoad], start: int) -> int:
    """The engine a new request goes to, as vLLM's ``DPLBAsyncMPClient`` picks it with one front
    end (v1/engine/core_client.py:1762-1806): the lowest score max(in-flight, waiting +
    running), waiting requests weighing up to 3x more as KV usage climbs past 50 %, scanned from
    ``start`` (the caller rotates it) so that ties spread round-robin. The mock's counts are
    live, where vLLM's come from the coordinator every 100 ms."""
    best, best_score = 0, math.inf
    n = len(loads)
    for i in range(n):
        idx = (start + i) % n
        load = loads[idx]
        score = float(max(load.in_flight, load.waiting + load.running))
        if load.waiting:
            score += load.waiting * 6.0 * max(0.0, load.kv_usage - 0.5)
        if score < best_score:
            best, best_score = idx, score
    return best


class EngineDeadError(RuntimeError):
    """The engine stopped (crashed or shut down) while a request was in flight."""


@dataclass(eq=False, slots=True)
class TokenStream:
    """One request's view of the engine: how many tokens have been released to it so far."""

    rid: int
    req: Request
    plan: OutputPlan
    arrival: float
    max_tokens: int = 0  # the sampling limit (vllm:request_params_max_tokens)
    scheduled: float | None = None
    first_token: float | None = None
    last_token: float = 0.0
    released: int = 0
    finished: bool = False
    failed: bool = False
    _waiter: asyncio.Future[None] | None = field(default=None, repr=False)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_beyond(self, seen: int) -> int:
        """Wait until more than ``seen`` tokens are released; returns how many are."""
        while True:
            if self.failed:
                raise EngineDeadError("the engine stopped")
            if self.released > seen or self.finished:
                return self.released
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiter = fut
            try:
                await fut
            finally:
                self._waiter = None

    async def wait_finished(self) -> None:
        while not self.finished:
            await self.wait_beyond(self.released)


class LatenessStats:
    """How late the loop woke after each step's deadline, in 0.1 ms bins up to 100 ms."""

    BIN_S = 1e-4
    N_BINS = 1001

    def __init__(self) -> None:
        self.bins = array("q", bytes(8 * self.N_BINS))
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.resets = 0  # steps whose clock restarted because the loop was too late
        self.requested = 0.0  # sum of the steps' requested durations (seconds)

    def record(self, lateness: float, requested: float = 0.0) -> None:
        self.requested += requested
        lateness = max(lateness, 0.0)
        self.bins[min(int(lateness / self.BIN_S), self.N_BINS - 1)] += 1
        self.count += 1
        self.total += lateness
        self.max = max(self.max, lateness)

    def percentile(self, q: float) -> float:
        """Upper edge of the bin holding the q-th percentile (seconds)."""
        if not self.count:
            return 0.0
        rank = q / 100.0 * self.count
        seen = 0
        for i, n in enumerate(self.bins):
            seen += n
            if seen >= rank:
                return (i + 1) * self.BIN_S
        return self.max

    def summary(self) -> str:
        if not self.count:
            return "no steps"
        return (
            f"{self.count} steps of mean {self.requested / self.count * 1e3:.2f} ms, "
            f"lateness mean {self.total / self.count * 1e3:.2f} ms, "
            f"p50 {self.percentile(50) * 1e3:.1f} ms, p99 {self.percentile(99) * 1e3:.1f} ms, "
            f"max {self.max * 1e3:.1f} ms, clock restarts {self.resets}"
        )


class EngineRunner:
    """Steps an engine on the wall clock and streams its tokens."""

    #: Lateness beyond which the step clock restarts from now instead of catching up.
    catch_up_limit = 0.05
    #: The most the loop sleeps short of a deadline to make up for the timer's late wake-ups.
    max_slack = 0.002

    def __init__(
        self,
        engine: Engine,
        metrics: EngineMetrics,
        slowdown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not slowdown > 0:
            raise ValueError(f"slowdown must be positive, got {slowdown}")
        self.engine = engine
        self.metrics = metrics
        self.slowdown = slowdown
        self.clock = clock
        self.lateness = LatenessStats()
        self.dead = False
        self._streams: dict[Hashable, TokenStream] = {}
        self._unscheduled: dict[Hashable, TokenStream] = {}
        self._ids = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._seen_prompt = 0
        self._seen_generation = 0
        self._seen_preemptions = 0
        self._slack = 0.0  # running mean of the timer's overshoot (seconds)

    # ---------------------------------------------------------------- requests

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    def submit(
        self, prompt_tokens: int, plan: OutputPlan, priority: int = 0, max_tokens: int = 0
    ) -> TokenStream:
        """Queue a request in the engine; raises EngineError for what vLLM refuses."""
        if self.dead:
            raise EngineDeadError("the engine is dead")
        rid = next(self._ids)
        now = self.clock()
        req = Request(rid, prompt_tokens, plan.tokens, priority=priority, arrival=now)
        self.engine.add(req)
        stream = TokenStream(rid, req, plan, now, max_tokens or plan.tokens)
        self._streams[rid] = stream
        self._unscheduled[rid] = stream
        self._wakeup.set()
        return stream

    def abort(self, stream: TokenStream) -> None:
        """Abort a request (client gone): the engine frees its KV; counted as ``abort``."""
        if stream.finished or self.dead or self._streams.pop(stream.rid, None) is None:
            return
        self._unscheduled.pop(stream.rid, None)
        self.engine.abort(stream.rid)
        stream.failed = True
        stream._wake()
        now = self.clock()
        self.metrics.finished(
            "abort",
            e2e=now - stream.arrival,
            queue=None if stream.scheduled is None else stream.scheduled - stream.arrival,
            prefill=None,
            decode=None,
            prompt_tokens=stream.req.prompt_tokens,
            generation_tokens=stream.released,
            max_tokens=stream.max_tokens,
            preemptions=stream.req.preemptions,
        )
        self._wakeup.set()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def kill(self) -> None:
        """Stop at once (a crash or shutdown): every in-flight stream fails."""
        if self.dead:
            return
        self.dead = True
        if self._task is not None:
            self._task.cancel()
        for stream in self._streams.values():
            stream.failed = True
            stream._wake()
        self._streams.clear()
        self._unscheduled.clear()

    async def stop(self) -> None:
        self.kill()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---------------------------------------------------------------- the loop

    async def _run(self) -> None:
        engine = self.engine
        clock = self.clock
        next_start: float | None = None
        while True:
            if not engine.has_work:
                self._wakeup.clear()
                await self._wakeup.wait()
                next_start = None
            now = clock()
            if next_start is None:
                start = now
            elif now - next_start > self.catch_up_limit:
                start = now
                self.lateness.resets += 1
            else:
                start = next_start
            res = engine.step(start, collect_emitted=True)
            if res.duration_ms <= 0.0:
                # nothing runnable (cannot happen with a valid config): wait for a change
                self._wakeup.clear()
                await self._wakeup.wait()
                next_start = None
                continue
            self._mark_scheduled(start)
            deadline = start + res.duration_ms * self.slowdown / 1000.0
            target = deadline - self._slack
            delay = target - clock()
            if delay > 0:
                await asyncio.sleep(delay)
                now = clock()
                # learn how late the timer wakes (ms rounding of epoll, scheduling)
                overshoot = min(max(now - target, 0.0), self.max_slack)
                self._slack += (overshoot - self._slack) * 0.1
            else:
                now = clock()
            self.lateness.record(now - deadline, deadline - start)
            self._release(res, now)
            next_start = deadline

    def _mark_scheduled(self, start: float) -> None:
        if not self._unscheduled:
            return
        fcfs = self.engine.config.scheduling_policy == "fcfs"
        done: list[Hashable] = []
        for rid, stream in self._unscheduled.items():
            if stream.req.phase is Phase.WAITING:
                if fcfs:
                    break  # admitted in arrival order: the rest wait too
                continue
            stream.scheduled = start
            # vLLM counts a query of the prompt's tokens at a new request's admission, not at a
            # preempted one's re-admission (v1/core/sched/scheduler.py:1508, metrics/stats.py:146);
            # the mock caches nothing, so vllm:prefix_cache_hits stays 0
            self.metrics.prefix_cache_queries.inc(stream.req.prompt_tokens)
            done.append(rid)
        for rid in done:
            del self._unscheduled[rid]

    @staticmethod
    def _emit(s: TokenStream, now: float, itl: Callable[[float], None]) -> None:
        if s.released:
            itl(now - s.last_token)
        s.released += 1
        s.last_token = now
        s._wake()

    def _release(self, res: StepResult, now: float) -> None:
        streams = self._streams
        m = self.metrics
        itl = m.itl.observe
        # First tokens go out first: a step's writes take time, and TTFT is the tighter SLO.
        first_ids = set()
        for req in res.first_tokens:
            first_ids.add(req.rid)
            s = streams.get(req.rid)
            if s is None:
                continue  # aborted during the step
            if s.first_token is None:
                s.first_token = now
                m.ttft.observe(now - s.arrival)
            self._emit(s, now, itl)
        for req in res.emitted or ():
            if req.rid in first_ids:
                continue
            s = streams.get(req.rid)
            if s is not None:
                self._emit(s, now, itl)
        for req in res.finished:
            s = streams.pop(req.rid, None)
            if s is None:
                continue
            s.finished = True
            s._wake()
            first = s.first_token if s.first_token is not None else now
            scheduled = s.scheduled if s.scheduled is not None else first
            m.finished(
                s.plan.finish_reason,
                e2e=now - s.arrival,
                queue=scheduled - s.arrival,
                prefill=first - scheduled,
                decode=now - first,
                prompt_tokens=req.prompt_tokens,
                generation_tokens=s.released,
                max_tokens=s.max_tokens,
                preemptions=req.preemptions,
            )
        m.iteration_tokens.observe(res.tokens)
        e = self.engine
        if e.prompt_tokens_total != self._seen_prompt:
            m.prompt_tokens.inc(e.prompt_tokens_total - self._seen_prompt)
            m.prompt_tokens_computed.inc(e.prompt_tokens_total - self._seen_prompt)
            self._seen_prompt = e.prompt_tokens_total
        if e.generation_tokens_total != self._seen_generation:
            m.generation_tokens.inc(e.generation_tokens_total - self._seen_generation)
            self._seen_generation = e.generation_tokens_total
        if e.preemptions_total != self._seen_preemptions:
            m.preemptions.inc(e.preemptions_total - self._seen_preemptions)
            self._seen_preemptions = e.preemptions_total

"""A discrete-event fleet simulator: N engine models in virtual time, a policy placing arrivals.

The simulator is one of the three bodies of the shared brain: a request's lifecycle (queues,
placement, accounting, release) is the router's :class:`~polyserve.policy.ledger.Ledger`, fed here
from the engine model's events; the simulator itself only steps the engines in virtual time. Every
token is timestamped (the engine's step end times), and each finished request is judged by the
deadline SLO.

Router-side queues: for policies that queue, a FIFO per tier; heads are retried whenever a step
finishes a request or a prefill (the only events that free capacity). A head that can no longer
meet its TTFT even on an idle server is handled per ``on_deadline_miss``: ``reject`` (shed: a 429
at the router), ``degrade`` (served anyway where it hurts nobody's TPOT), or ``wait``.

Scaling mode (a :class:`Scaler` given): the fleet starts with ``n_servers`` (0 allowed) and the scaler,
called every ``interval_s`` of virtual time, starts servers (ready after a start-up delay, pinned to
a tier or floating) and stops them (a stopping server takes no new requests, finishes what it has,
then leaves). Instance-seconds then run from each start request to the server's stop; without a
scaler they count the time a server holds a tier (the idle pool is free: instant scale-up).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np

from polyserve.engine import Engine, EngineConfig, Request, StepResult
from polyserve.policy.base import FleetView, PendingRequest, Placement, Policy, ServerView
from polyserve.policy.checks import step_budget_ms
from polyserve.policy.dispatch import (
    DEADLINE_MISS_CHOICES,
    DEFAULT_LOOKAHEAD,
    DeadlineMiss,
    TierQueues,
)
from polyserve.policy.ledger import Ledger
from polyserve.profile import Profile
from polyserve.sim.workload import Arrival
from polyserve.slo import RequestOutcome, Summary, TierSet, check_deadlines, summarize
from polyserve.tier_engine import derive_tier_engine

ChunkMode = Literal["dynamic", "static", "vllm", "tier"]
CHUNK_MODES: tuple[ChunkMode, ...] = ("dynamic", "static", "vllm", "tier")


@dataclass(frozen=True, slots=True)
class SimConfig:
    profile: Profile
    tiers: TierSet
    n_servers: int
    #: dynamic: PolyServe's chunk sizing (step within the tightest TPOT on the server);
    #: static: a fixed token budget of ``static_chunk``; vllm: the profile's default budget;
    #: tier: stock vLLM with each tier's derived flags (``tier_engine``): a server pinned to a tier
    #: runs its tier's, a floating one the tightest tier's (a shared pool has one configuration).
    chunk_mode: ChunkMode = "dynamic"
    static_chunk: int = 512
    #: servers pinned to each tier at the start (a tier's own Deployment); None: all float
    pinned: tuple[int, ...] | None = None
    on_deadline_miss: DeadlineMiss = "reject"
    output_prior: float = 256.0
    #: requests behind a blocked head offered to the policy (0: strict FIFO; see policy.dispatch)
    lookahead: int = DEFAULT_LOOKAHEAD

    def __post_init__(self) -> None:
        if self.n_servers < 0:
            raise ValueError("a fleet cannot have a negative number of servers")
        if self.chunk_mode not in CHUNK_MODES:
            raise ValueError(f"unknown chunk mode {self.chunk_mode!r}")
        if self.pinned is not None and (
            len(self.pinned) != len(self.tiers)
            or sum(self.pinned) != self.n_servers
            or min(self.pinned) < 0
        ):
            raise ValueError(
                f"pinned servers {self.pinned} must give each of the {len(self.tiers)} tiers a "
                f"count >= 0, {self.n_servers} in all"
            )
        if self.on_deadline_miss not in DEADLINE_MISS_CHOICES:
            raise ValueError(f"unknown deadline-miss handling {self.on_deadline_miss!r}")


@dataclass(eq=False, slots=True)
class _Live:
    """A request inside the fleet: its arrival, its pending record and its engine state."""

    arrival: Arrival
    pending: PendingRequest
    engine_req: Request | None = None
    placement: Placement | None = None
    got_first: bool = False


@dataclass(eq=False)
class _Server:
    view: ServerView
    engine: Engine
    step: StepResult | None = None
    live: dict[Hashable, _Live] = field(default_factory=dict)
    active_since: float | None = None  # assigned (tiered) or switched on
    active_seconds: float = 0.0
    served: int = 0
    ready: bool = True
    stopping: bool = False
    stopped: bool = False
    idle_since: float = 0.0  # when its last request left (or it became ready)


class Scaler(Protocol):
    """Drives a scaling fleet: ``tick`` runs at time 0 and then every ``interval_s`` seconds."""

    @property
    def interval_s(self) -> float: ...

    def tick(self, now: float, sim: FleetSim) -> None: ...


@dataclass
class SimResult:
    outcomes: list[RequestOutcome]
    summary: Summary
    served_per_server: list[int]
    instance_seconds: float
    makespan: float
    steps: int
    wall_seconds: float
    promoted: int
    rejected: int


def _pinned_tier(pinned: Sequence[int], index: int) -> int:
    """The tier of the ``index``-th initial server when ``pinned`` servers go to each tier."""
    for tier, count in enumerate(pinned):
        if index < count:
            return tier
        index -= count
    raise IndexError(index)


class FleetSim:
    def __init__(self, config: SimConfig, policy: Policy, scaler: Scaler | None = None) -> None:
        self.cfg = config
        self.policy = policy
        self.scaler = scaler
        prof = config.profile
        self._configs = self._engine_configs()
        self.servers: list[_Server] = []
        for i in range(config.n_servers):
            tier = None if config.pinned is None else _pinned_tier(config.pinned, i)
            view = self._view(i, tier, pinned=tier is not None)
            self.servers.append(_Server(view, Engine(prof, self._config_of(tier))))
        n_tiers = len(config.tiers)
        # a tier's ideal TTFT is an idle server's of its own engine configuration
        templates = {
            id(c): ServerView("ideal", prof, c.max_num_batched_tokens) for c in self._configs
        }
        self.ledger: Ledger[_Live] = Ledger(
            config.tiers,
            policy,
            [s.view for s in self.servers],
            [templates[id(self._config_of(t, config.pinned is not None))] for t in range(n_tiers)],
            [config.on_deadline_miss] * n_tiers,
            output_prior=config.output_prior,
            lookahead=config.lookahead,
        )
        self.outcomes: list[RequestOutcome] = []
        self._events: list[tuple[float, int, int]] = []  # (time, seq, server index)
        self._seq = 0
        self._kick: set[int] = set()
        self.steps = 0
        self.promoted = 0
        # scaling mode: timed callbacks (a server becoming ready)
        self._timers: list[tuple[float, int, int]] = []  # (time, seq, server index)

    def _engine_configs(self) -> list[EngineConfig]:
        """The engine configurations this fleet runs: one per tier in ``tier`` mode, then one for
        floating servers (the last); in the other modes one for every server."""
        cfg, prof = self.cfg, self.cfg.profile
        if cfg.chunk_mode == "tier":
            tiers = cfg.tiers
            per_tier = [derive_tier_engine(prof, t.tpot_ms, t.ttft_ms) for t in tiers]
            pool = derive_tier_engine(prof, tiers[0].tpot_ms, tiers[0].ttft_ms, shared=True)
            return [e.engine_config(prof) for e in (*per_tier, pool)]
        budget = cfg.static_chunk if cfg.chunk_mode == "static" else prof.max_num_batched_tokens
        one = EngineConfig.from_profile(
            prof,
            max_num_batched_tokens=max(budget, 1),
            max_num_seqs=min(prof.max_num_seqs, max(budget, 1)),
        )
        return [one]

    def _config_of(self, tier: int | None, pinned: bool = True) -> EngineConfig:
        """A server's engine configuration (fixed for its life, as vLLM's flags)."""
        if len(self._configs) == 1:
            return self._configs[0]
        return self._configs[tier] if tier is not None and pinned else self._configs[-1]

    def _view(self, idx: int, tier: int | None, pinned: bool, healthy: bool = True) -> ServerView:
        return ServerView(
            name=f"s{idx}",
            profile=self.cfg.profile,
            max_batched_tokens=self._config_of(tier, pinned).max_num_batched_tokens,
            max_num_seqs=self._config_of(tier, pinned).max_num_seqs,
            # the stock mode's engines fill their derived budget in every step that prefills;
            # vllm/static run the load balancers, which place without the checks
            static_budget=self.cfg.chunk_mode == "tier",
            chunk_budget_ms=0.0,
            index=idx,
            tier=tier,
            pinned=pinned and tier is not None,
            healthy=healthy,
        )

    # ---------------------------------------------------------------- what the scaler reads

    @property
    def fleet(self) -> FleetView:
        return self.ledger.fleet

    @property
    def queues(self) -> TierQueues[_Live]:
        return self.ledger.queues

    @property
    def arrivals_by_tier(self) -> list[int]:
        return [self.ledger.arrivals.get(t.name, 0) for t in self.cfg.tiers]

    @property
    def shed_by_tier(self) -> list[int]:
        return [self.ledger.shed.get(t.name, 0) for t in self.cfg.tiers]

    # ---------------------------------------------------------------- chunk budget

    def _chunk_budget(self, srv: _Server) -> float:
        """PolyServe's dynamic chunk target: the tightest TPOT the server must honour."""
        if self.cfg.chunk_mode != "dynamic":
            return 0.0
        tier = srv.view.tier
        tier_tpot = (
            self.cfg.tiers[tier].tpot_ms if tier is not None and self.policy.tiered else math.inf
        )
        budget = min(tier_tpot, srv.view.tightest_tpot_ms)
        return step_budget_ms(budget) if math.isfinite(budget) else 0.0

    def _refresh_chunk_budget(self, srv: _Server) -> None:
        budget = self._chunk_budget(srv)
        if budget != srv.view.chunk_budget_ms:
            srv.view.chunk_budget_ms = budget
            srv.engine.config = replace(srv.engine.config, chunk_budget_ms=budget)

    # ---------------------------------------------------------------- run

    def run(
        self, arrivals: Sequence[Arrival], progress: Callable[[int], None] | None = None
    ) -> SimResult:
        if not self.servers and self.scaler is None:
            raise ValueError("a fleet needs at least one server (or a scaler that starts some)")
        wall0 = time.perf_counter()
        arrivals = sorted(arrivals, key=lambda a: a.time)
        if not self.policy.tiered or self.scaler is not None:
            for s in self.servers:
                s.active_since = 0.0
        i, n = 0, len(arrivals)
        now = 0.0
        next_tick = 0.0 if self.scaler is not None else math.inf
        while i < n or self._events or self._timers:
            next_arrival = arrivals[i].time if i < n else math.inf
            first_event = self._events[0][0] if self._events else math.inf
            if self.scaler is not None and min(
                next_tick, self._timers[0][0] if self._timers else math.inf
            ) < min(next_arrival, first_event):
                if self._timers and self._timers[0][0] <= next_tick:
                    now, _, idx = heapq.heappop(self._timers)
                    self._on_ready(self.servers[idx], now)
                else:
                    now = next_tick
                    self.scaler.tick(now, self)
                    self._dispatch(now)  # sheds heads that can no longer make it
                    self._start_kicked(now)
                    if i < n or self._events or self._timers:
                        next_tick = now + self.scaler.interval_s
                    else:  # nothing runs, arrives or starts: what waits can never be placed
                        self._drain_queues(now)
                        next_tick = math.inf
                self._start_kicked(now)
                continue
            if self._events and self._events[0][0] <= next_arrival:
                now, _, idx = heapq.heappop(self._events)
                self._on_step_end(self.servers[idx], now)
            else:
                now = next_arrival
                self._on_arrival(arrivals[i], now)
                i += 1
                if progress is not None and i % 1000 == 0:
                    progress(1000)
            if i >= n or arrivals[i].time > now:  # same-instant arrivals join one step
                self._start_kicked(now)
            if not self._events and i >= n and not self._timers:
                self._drain_queues(now)
        if progress is not None:
            progress(n % 1000)
        for s in self.servers:
            if s.active_since is not None:
                s.active_seconds += now - s.active_since
                s.active_since = None
        inst = sum(s.active_seconds for s in self.servers) * self.cfg.profile.gpus
        summary = summarize(self.outcomes, [t.name for t in self.cfg.tiers], instance_seconds=inst)
        return SimResult(
            outcomes=self.outcomes,
            summary=summary,
            served_per_server=[s.served for s in self.servers],
            instance_seconds=inst,
            makespan=now,
            steps=self.steps,
            wall_seconds=time.perf_counter() - wall0,
            promoted=self.promoted,
            rejected=sum(self.ledger.shed.values()),
        )

    # ---------------------------------------------------------------- events

    def _on_arrival(self, a: Arrival, now: float) -> None:
        pending = self.ledger.arrive(a.rid, a.tier, a.prompt_tokens, a.ttft_ms, a.tpot_ms, a.time)
        self.ledger.queue(_Live(a, pending))
        self._dispatch(now, only_tier=a.tier)
        if not self.policy.queues and self.queues.queues[a.tier]:
            raise RuntimeError(f"policy {self.policy.name} returned no server without a queue")

    def _dispatch(self, now: float, only_tier: int | None = None) -> None:
        for live, placement in self.ledger.dispatch(now, only_tier):
            if placement is None:
                self._reject(live)
            else:
                self._admit(live, placement, now)

    def _drain_queues(self, now: float) -> None:
        """Nothing runs and nothing arrives: whatever still waits can never be placed."""
        for live in self.ledger.shed_all():
            self._reject(live)

    def _outcome(self, a: Arrival, **measured: object) -> RequestOutcome:
        """An outcome carrying the arrival's SLO; ``measured`` holds what happened to it."""
        return RequestOutcome(
            request_id=str(a.rid),
            tier=self.cfg.tiers[a.tier].name,
            arrival=a.time,
            ttft_ms=a.ttft_ms,
            tpot_ms=a.tpot_ms,
            prompt_tokens=a.prompt_tokens,
            **measured,  # type: ignore[arg-type]
        )

    def _reject(self, live: _Live) -> None:
        self.outcomes.append(self._outcome(live.arrival, output_tokens=0, rejected=True))

    def _admit(self, live: _Live, placement: Placement, now: float) -> None:
        """The engine's part of an admission (the ledger has claimed and accounted it)."""
        view = placement.server
        srv = self.servers[view.index]
        if srv.active_since is None:
            srv.active_since = now
        a = live.arrival
        self.promoted += placement.promoted
        req = Request(
            a.rid,
            a.prompt_tokens,
            a.output_tokens,
            arrival=now,
            first_deadline=a.time + a.ttft_ms / 1000.0,
            tpot_ms=a.tpot_ms,
        )
        live.engine_req = req
        srv.engine.add(req)
        srv.live[a.rid] = live
        srv.served += 1
        self._refresh_chunk_budget(srv)
        if srv.step is None:
            self._kick.add(view.index)

    def _start_kicked(self, now: float) -> None:
        for idx in sorted(self._kick):
            srv = self.servers[idx]
            if srv.step is None:
                self._start_step(srv, now)
        self._kick.clear()

    def _start_step(self, srv: _Server, now: float) -> None:
        if not srv.engine.has_work:
            srv.step = None
            srv.view.busy_until = 0.0
            return
        res = srv.engine.step(now)
        if res.duration_ms <= 0:  # nothing schedulable (cannot happen with valid requests)
            srv.step = None
            return
        self.steps += 1
        srv.step = res
        srv.view.busy_until = res.end
        srv.view.decode_slack_ms = srv.engine.last_slack_ms
        self._seq += 1
        heapq.heappush(self._events, (res.end, self._seq, srv.view.index))

    def _on_step_end(self, srv: _Server, now: float) -> None:
        res = srv.step
        assert res is not None
        srv.step = None
        view = srv.view
        ledger = self.ledger
        for req in res.first_tokens:
            ledger.first_token(srv.live[req.rid])
        ledger.tokens(view, res.n_decode + len(res.first_tokens))
        released = False
        for req in res.finished:
            live = srv.live.pop(req.rid)
            a = live.arrival
            released |= ledger.finish(live, a.output_tokens, a.tier)
            self._record(srv, live, req)
        if res.finished:
            self._refresh_chunk_budget(srv)  # its tightest TPOT, or its tier, may have changed
        if released and srv.active_since is not None and self.scaler is None:
            srv.active_seconds += now - srv.active_since
            srv.active_since = None
        if res.finished and view.n_requests == 0:
            srv.idle_since = now
            if srv.stopping:
                self._finish_stop(srv, now)
        self._start_step(srv, now)
        if self.policy.queues and (res.finished or res.first_tokens):
            self._dispatch(now)

    def _record(self, srv: _Server, live: _Live, req: Request) -> None:
        a = live.arrival
        ends = np.frombuffer(srv.engine.step_ends, dtype=np.float64)
        times = (
            np.concatenate([ends[s : s + c] for s, _f, c in req.segments])
            if req.segments
            else ends[:0]
        )
        del ends  # release the buffer so the engine's timeline can grow
        verdict = check_deadlines(a.time, times, a.ttft_ms, a.tpot_ms)
        self.outcomes.append(
            self._outcome(
                a,
                output_tokens=int(times.size),
                first_token=float(times[0]) if times.size else None,
                last_token=float(times[-1]) if times.size else None,
                attained=verdict.attained and times.size == a.output_tokens,
                first_miss=verdict.first_miss,
                late_by_ms=verdict.late_by_ms,
                server=srv.view.name,
                promoted=live.placement is not None and live.placement.promoted,
            )
        )

    # ---------------------------------------------------------------- scaling mode (the actuator)

    def start_server(
        self, now: float, startup_s: float, tier: int | None = None, pinned: bool = True
    ) -> ServerView:
        """Ask for a new server; it serves ``startup_s`` later. Counted from now (GPUs held)."""
        if startup_s < 0:
            raise ValueError(f"start-up delay must be >= 0, got {startup_s}")
        idx = len(self.servers)
        view = self._view(idx, tier, pinned, healthy=False)
        srv = _Server(view, Engine(self.cfg.profile, self._config_of(tier, pinned)), ready=False)
        srv.active_since = now
        self.servers.append(srv)
        self.fleet.servers.append(view)
        if startup_s == 0:
            self._on_ready(srv, now)
        else:
            self._seq += 1
            heapq.heappush(self._timers, (now + startup_s, self._seq, idx))
        return view

    def stop_server(self, index: int, now: float) -> None:
        """Take a server out: no new requests; it leaves once its residents have finished."""
        srv = self.servers[index]
        if srv.stopped or srv.stopping:
            return
        srv.stopping = True
        srv.view.draining = True
        if not srv.ready or srv.view.n_requests == 0:
            self._finish_stop(srv, now)

    def _on_ready(self, srv: _Server, now: float) -> None:
        if srv.stopped or srv.ready:
            return
        srv.ready = True
        srv.idle_since = now
        srv.view.healthy = True
        self._refresh_chunk_budget(srv)
        self._dispatch(now)

    def _finish_stop(self, srv: _Server, now: float) -> None:
        srv.stopped = True
        srv.view.healthy = False
        if srv.active_since is not None:
            srv.active_seconds += now - srv.active_since
            srv.active_since = None
        if srv.view in self.fleet.servers:
            self.fleet.servers.remove(srv.view)

    def live_servers(self) -> list[tuple[ServerView, bool, float]]:
        """Servers not stopped: (view, ready, idle since) in start order."""
        return [(s.view, s.ready, s.idle_since) for s in self.servers if not s.stopped]

    def engine_of(self, view: ServerView) -> Engine:
        return self.servers[view.index].engine

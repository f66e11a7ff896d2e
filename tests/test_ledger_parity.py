"""The simulator and the router place alike: the same arrivals and token events give the same
decisions, because both feed one :class:`~polyserve.policy.ledger.Ledger`.

A real simulation is recorded (arrivals, each step's first tokens, tokens and finishes, each
dispatch) and replayed into the router's :class:`ModelPool`. Before every dispatch the pool's views
are given what an engine reports (the end of its current step), and the test checks that both
bodies hold the same load on every server at that moment; then that each request is settled at the
same time, in the same order, on the same server (or shed), promoted and degraded alike.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest

from polyserve.policy import make_policy
from polyserve.policy.base import Placement, ServerView
from polyserve.policy.dispatch import DeadlineMiss
from polyserve.profile import load_profile
from polyserve.router.pool import ModelPool, Ticket
from polyserve.router.spec import BackendSpec, TierSpec
from polyserve.sim.fleet import FleetSim, SimConfig, _Live, _Server
from polyserve.sim.optimal import fluid_bound
from polyserve.sim.workload import Arrival, SLOAssigner, at_rate, shapes_for
from polyserve.slo import PAPER_TIERS

PROFILE = "llama-3.1-8b-h100"
MODEL = "m"
N_SERVERS = 4

#: a decision: request, its server (None: shed), when, promoted, degraded
Decision = tuple[Hashable, str | None, float, bool, bool]


def load(v: ServerView) -> tuple[Any, ...]:
    """Everything of a server's accounting that a policy reads."""
    return (
        v.name,
        v.tier,
        v.n_requests,
        v.n_prefill,
        v.prompt_tokens,
        v.generated_tokens,
        round(v.expected_tokens, 6),
        v.prefill_backlog,
        dict(v.tpot_counts),
    )


class RecordingSim(FleetSim):
    """A FleetSim that logs the lifecycle events it feeds its ledger and the decisions it gets."""

    def __init__(self, config: SimConfig, policy_name: str) -> None:
        super().__init__(config, make_policy(policy_name, shares=[1.0] * len(config.tiers)))
        self.events: list[tuple[Any, ...]] = []
        self.decisions: list[Decision] = []
        self._seen: dict[Hashable, int] = {}  # tokens out per request so far

    def _on_arrival(self, a: Arrival, now: float) -> None:
        self.events.append(("arrive", a))
        super()._on_arrival(a, now)

    def _dispatch(self, now: float, only_tier: int | None = None) -> None:
        engines = {s.view.name: s.view.busy_until for s in self.servers}
        loads = [load(s.view) for s in self.servers]
        self.events.append(("dispatch", now, only_tier, engines, loads))
        super()._dispatch(now, only_tier)

    def _on_step_end(self, srv: _Server, now: float) -> None:
        res = srv.step
        assert res is not None
        tokens: dict[Hashable, int] = {}
        for rid, live in srv.live.items():
            assert live.engine_req is not None
            out = srv.engine.generated(live.engine_req)
            tokens[rid] = out - self._seen.get(rid, 0)
            self._seen[rid] = out
        first = [r.rid for r in res.first_tokens]
        done = [r.rid for r in res.finished]
        self.events.append(("step", now, first, tokens, done))
        super()._on_step_end(srv, now)

    def _drain_queues(self, now: float) -> None:
        self.events.append(("drain", now))
        super()._drain_queues(now)

    def _admit(self, live: _Live, placement: Placement, now: float) -> None:
        self.decisions.append(
            (live.arrival.rid, placement.server.name, now, placement.promoted, placement.degraded)
        )
        super()._admit(live, placement, now)

    def _reject(self, live: _Live) -> None:
        now = self.events[-1][1]  # the dispatch or final drain that shed it
        self.decisions.append((live.arrival.rid, None, now, False, False))
        super()._reject(live)


def replay(sim: RecordingSim, miss: DeadlineMiss, policy_name: str) -> list[Decision]:
    """Feed the recorded events to a router pool of the same servers; its decisions."""
    specs = [
        TierSpec(
            name=t.name,
            model=MODEL,
            tpot_ms=t.tpot_ms,
            ttft_ms=t.ttft_ms,
            profile=PROFILE,
            on_deadline_miss=miss,
        )
        for t in PAPER_TIERS
    ]
    pool = ModelPool(MODEL, specs, policy_name)
    backends = [
        BackendSpec(name=s.view.name, url=f"http://127.0.0.1:{9000 + i}", model=MODEL)
        for i, s in enumerate(sim.servers)
    ]
    pool.set_backends(backends, now=0.0)
    views = {b.name: b.view for b in pool.backends.values()}
    tickets: dict[Hashable, Ticket] = {}
    decisions: list[Decision] = []
    for event in sim.events:
        kind = event[0]
        if kind == "arrive":
            a: Arrival = event[1]
            t = pool.new_ticket(str(a.rid), specs[a.tier], a.ttft_ms, a.prompt_tokens, None, a.time)
            pool.enqueue(t, a.time)
            tickets[a.rid] = t
        elif kind == "step":
            _, now, first, tokens, done = event
            for rid in first:
                pool.on_first_token(tickets[rid])
            for rid, n in tokens.items():
                pool.on_tokens(tickets[rid], n)
            for rid in done:
                pool.release(tickets[rid], now, completed=True)
        elif kind == "dispatch":
            _, now, only_tier, engines, sim_loads = event
            for name, busy_until in engines.items():
                views[name].busy_until = busy_until  # what the engine reports
            assert [load(views[name]) for name in engines] == sim_loads, f"at t={now}"
            for t in pool.dispatch(now, only_tier):
                p = t.placement
                if t.state == "placed":
                    assert p is not None
                    decisions.append((int(t.rid), t.backend, now, p.promoted, p.degraded))
                else:
                    decisions.append((int(t.rid), None, now, False, False))
        else:  # drain: nothing can ever place what still waits
            decisions.extend((int(t.rid), None, event[1], False, False) for t in pool.take_queued())
    return decisions


@pytest.mark.parametrize(
    ("policy_name", "miss", "load_factor"),
    [
        ("polyserve", "reject", 1.5),  # queues, sheds and promotes
        ("polyserve", "degrade", 1.5),
        ("pack-load", "wait", 1.2),
        ("least-outstanding", "reject", 0.8),  # no router queue: placed on arrival
    ],
)
def test_router_pool_and_simulator_decide_alike(
    policy_name: str, miss: DeadlineMiss, load_factor: float
) -> None:
    prof = load_profile(PROFILE)
    base = SLOAssigner(PAPER_TIERS, prof).assign(shapes_for("sharegpt", 600, 1), seed=3)
    rate = load_factor * fluid_bound(prof, PAPER_TIERS, base).goodput(N_SERVERS)
    cfg = SimConfig(prof, PAPER_TIERS, N_SERVERS, chunk_mode="vllm", on_deadline_miss=miss)
    sim = RecordingSim(cfg, policy_name)
    arrivals = at_rate(base, rate)
    result = sim.run(arrivals)

    decisions = replay(sim, miss, policy_name)

    assert decisions == sim.decisions
    assert len({d[0] for d in decisions}) == len(base)  # every request settled once
    assert result.rejected == sum(d[1] is None for d in decisions)
    arrived = {a.rid: a.time for a in arrivals}
    queued = sum(d[2] > arrived[d[0]] for d in decisions)
    if sim.policy.queues:  # the runs exercise what they are meant to
        assert queued > 0, "nothing waited in the router's queue"
    if policy_name == "polyserve":
        assert any(d[3] for d in decisions), "no promotion"
        if miss == "reject":
            assert result.rejected > 0, "nothing shed"
        else:
            assert any(d[4] for d in decisions), "nothing degraded"

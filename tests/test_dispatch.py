"""The per-tier queues of policy/dispatch.py: FIFO heads, the deadline rule, and bounded backfill."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from polyserve.policy.base import FleetView, PendingRequest, Placement, ServerView
from polyserve.policy.dispatch import TierQueues
from polyserve.profile import Profile
from polyserve.slo import Tier, TierSet


@dataclass
class BudgetPolicy:
    """Places a request on the one server while its prompt fits in what is left of ``budget``."""

    server: ServerView
    budget: int
    name: str = "budget"
    queues: bool = True
    tiered: bool = False

    def place(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None:
        if req.prompt_tokens > self.budget:
            return None
        self.budget -= req.prompt_tokens
        return Placement(self.server)


def _req(rid: int, prompt: int, *, arrival: float = 0.0, ideal_ms: float = 10.0) -> PendingRequest:
    return PendingRequest(
        rid, 0, prompt, ttft_ms=500.0, tpot_ms=50.0, arrival=arrival, ideal_ttft_ms=ideal_ms
    )


def _setup(
    profile: Profile, budget: int, lookahead: int
) -> tuple[TierQueues[PendingRequest], BudgetPolicy, FleetView]:
    server = ServerView("s0", profile, max_batched_tokens=2048)
    fleet = FleetView(TierSet([Tier("t50", 50.0, 500.0)]), [server])
    queues: TierQueues[PendingRequest] = TierQueues(["reject"], lambda r: r, lookahead=lookahead)
    return queues, BudgetPolicy(server, budget), fleet


def test_backfill_places_what_fits_behind_a_blocked_head(profile: Profile) -> None:
    queues, policy, fleet = _setup(profile, budget=300, lookahead=2)
    reqs = [_req(0, 1000), _req(1, 200), _req(2, 200), _req(3, 50), _req(4, 10)]
    for r in reqs:
        queues.push(r)
    placed = [item.rid for item, p in queues.drain(policy, fleet, now=0.0) if p is not None]
    # the head does not fit; of the next two only the first fits what is left; #3 and #4 are
    # beyond the lookahead although they would fit
    assert placed == [1]
    assert [r.rid for r in queues.queues[0]] == [0, 2, 3, 4]


def test_lookahead_zero_is_strict_fifo(profile: Profile) -> None:
    queues, policy, fleet = _setup(profile, budget=300, lookahead=0)
    for r in [_req(0, 1000), _req(1, 10)]:
        queues.push(r)
    assert list(queues.drain(policy, fleet, now=0.0)) == []
    assert len(queues) == 2


def test_the_head_goes_first_once_it_fits(profile: Profile) -> None:
    queues, policy, fleet = _setup(profile, budget=2000, lookahead=4)
    for r in [_req(0, 1000), _req(1, 10), _req(2, 20)]:
        queues.push(r)
    order = [item.rid for item, _ in queues.drain(policy, fleet, now=0.0)]
    assert order == [0, 1, 2]


def test_a_hopeless_request_behind_the_head_is_left_for_the_deadline_rule(
    profile: Profile,
) -> None:
    queues, policy, fleet = _setup(profile, budget=300, lookahead=4)
    # #1 arrived 1 s ago: even an idle server misses its 500 ms TTFT; #2 is fresh
    for r in [_req(0, 1000, arrival=1.0), _req(1, 10, arrival=0.0), _req(2, 10, arrival=1.0)]:
        queues.push(r)
    placed = [item.rid for item, p in queues.drain(policy, fleet, now=1.0) if p is not None]
    assert placed == [2]
    assert [r.rid for r in queues.queues[0]] == [0, 1]


def test_negative_lookahead_is_refused() -> None:
    with pytest.raises(ValueError, match="lookahead"):
        TierQueues(["reject"], lambda r: r, lookahead=-1)


def test_take_expired_takes_the_heads_that_waited_too_long(profile: Profile) -> None:
    queues, _, _ = _setup(profile, budget=0, lookahead=4)
    for r in [_req(0, 10, arrival=0.0), _req(1, 10, arrival=5.0), _req(2, 10, arrival=1.0)]:
        queues.push(r)
    # #2 is old enough but behind a fresh one: heads only
    assert [r.rid for r in queues.take_expired(now=9.0, max_wait_s=8.0)] == [0]
    assert [r.rid for r in queues.queues[0]] == [1, 2]


def test_hopeless_at_is_when_hopeless_turns_true() -> None:
    # 300 ms TTFT, 120 ms of prefill at best: hopeless once it waited 180 ms
    req = PendingRequest(
        rid=1,
        tier=0,
        prompt_tokens=10,
        ttft_ms=300.0,
        tpot_ms=20.0,
        arrival=10.0,
        ideal_ttft_ms=120.0,
    )
    assert req.hopeless_at == pytest.approx(10.18)
    assert not req.hopeless(req.hopeless_at - 1e-6) and req.hopeless(req.hopeless_at + 1e-6)

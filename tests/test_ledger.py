"""The request lifecycle of policy/ledger.py on its own: claim, accounting, learning, release, shed."""

from __future__ import annotations

from dataclasses import dataclass

from polyserve.policy.base import PendingRequest, Placement, ServerView
from polyserve.policy.ledger import Ledger
from polyserve.policy.polyserve import PolyServePolicy
from polyserve.profile import Profile
from polyserve.slo import Tier, TierSet

TIERS = TierSet([Tier("t20", 20.0, 1000.0), Tier("t100", 100.0, 1000.0)])


@dataclass(eq=False)
class Rec:
    pending: PendingRequest
    placement: Placement | None = None
    got_first: bool = False


def _ledger(profile: Profile) -> tuple[Ledger[Rec], ServerView]:
    server = ServerView("s0", profile, profile.max_num_batched_tokens)
    template = ServerView("ideal", profile, profile.max_num_batched_tokens)
    ledger: Ledger[Rec] = Ledger(
        TIERS, PolyServePolicy(), [server], [template] * 2, ["reject", "reject"], output_prior=100
    )
    return ledger, server


def test_a_request_claims_an_idle_server_and_releases_it_when_drained(profile: Profile) -> None:
    ledger, server = _ledger(profile)
    recs = [Rec(ledger.arrive(i, 1, 200, 1000.0, 100.0, now=0.0)) for i in range(2)]
    for r in recs:
        ledger.queue(r)
    placed = list(ledger.dispatch(now=0.0))
    assert [r for r, _ in placed] == recs and all(p is not None for _, p in placed)
    assert server.tier == 1 and (server.n_requests, server.prefill_backlog) == (2, 400)
    for r in recs:
        ledger.first_token(r)
        ledger.first_token(r)  # a re-prefill's token: counted once
    ledger.tokens(server, 2)
    assert (server.n_prefill, server.prefill_backlog, server.generated_tokens) == (0, 0, 2)
    assert not ledger.finish(recs[0], 1, learn_tier=1)  # one resident left: stays in its tier
    assert ledger.finish(recs[1], 1, learn_tier=None)  # drained: back to the idle pool
    assert server.tier is None and (server.n_requests, server.kv_tokens) == (0, 0)
    assert server.tpot_counts == {} and abs(server.expected_tokens) < 1e-9
    # one output of 1 token learned (the prior of 100 over 16 samples), the other not
    assert ledger.estimator.expected(1) == (100 * 15 + 1) / 16
    assert ledger.arrivals == {"t100": 2} and ledger.shed == {}


def test_hopeless_heads_are_shed_and_counted_by_tier_name(profile: Profile) -> None:
    ledger, server = _ledger(profile)
    late = Rec(ledger.arrive("late", 0, 4000, 1.0, 20.0, now=0.0))  # no prefill fits 1 ms
    ledger.queue(late)
    assert list(ledger.dispatch(now=0.0)) == [(late, None)]
    assert server.n_requests == 0 and late.placement is None
    waiting = Rec(ledger.arrive("w", 0, 10, 1000.0, 20.0, now=0.0))
    ledger.queue(waiting)
    assert ledger.shed_all() == [waiting] and len(ledger.queues) == 0
    assert ledger.shed == {"t20": 2}

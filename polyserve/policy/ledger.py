"""The request lifecycle, written once for the simulator and the router (pure: no I/O, no clock).

A :class:`Ledger` owns what both bodies decide with: the tier queues, the fleet view, the per-tier
output-length estimate and the policy. A request goes through it in this order:

1. **arrive**: :meth:`Ledger.arrive` builds its :class:`PendingRequest` (the tier's expected output,
   its ideal TTFT) and counts it;
2. **queue**: :meth:`Ledger.queue` puts it in its tier's FIFO (a retry at the front);
3. **claim + admit**: :meth:`Ledger.dispatch` asks the policy for the queue heads (the rules are
   :meth:`TierQueues.drain`'s); a placement claims its server (an idle server joins the tier) and
   is accounted on the server's view before the body sees it, a refusal is counted as shed;
4. **first token**, **tokens**: :meth:`Ledger.first_token`, :meth:`Ledger.tokens`;
5. **finish**: :meth:`Ledger.finish` takes it off its server; an output that ran to its end teaches
   the tier's estimate;
6. **release when drained**: the same call returns a tiered policy's floating server to the idle
   pool once its last request has left.

The body keeps only what is its own: the simulator its engines and virtual time, the router its
backends, HTTP and the ticket states it answers clients by. Each body's record of a request is a
:class:`Booking` (the router's ``Ticket``, the simulator's ``_Live``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

from polyserve.policy.base import FleetView, PendingRequest, Placement, Policy, ServerView
from polyserve.policy.checks import ideal_ttft_ms
from polyserve.policy.dispatch import (
    DEFAULT_LOOKAHEAD,
    DeadlineMiss,
    TierQueues,
    claim,
    release_if_drained,
)
from polyserve.policy.estimator import OutputLengthEstimator
from polyserve.slo import TierSet


class Booking(Protocol):
    """What the ledger reads and writes on a body's record of one request."""

    pending: PendingRequest
    placement: Placement | None  # set on admission
    got_first: bool


B = TypeVar("B", bound=Booking)


def _pending(item: Booking) -> PendingRequest:
    return item.pending


class Ledger(Generic[B]):
    """The lifecycle of one fleet's requests (one model's, in the router)."""

    def __init__(
        self,
        tiers: TierSet,
        policy: Policy,
        servers: list[ServerView],
        templates: Sequence[ServerView],
        on_deadline_miss: Sequence[DeadlineMiss],
        *,
        output_prior: float = 256.0,
        lookahead: int = DEFAULT_LOOKAHEAD,
        arrivals: dict[str, int] | None = None,
        shed: dict[str, int] | None = None,
    ) -> None:
        """``templates``: per tier, an idle server of the tier (its ideal TTFT). ``arrivals`` and
        ``shed``: the counters to continue (per tier name: they outlive a change of tiers)."""
        if len(templates) != len(tiers) or len(on_deadline_miss) != len(tiers):
            raise ValueError("one template and one deadline-miss rule per tier")
        self.tiers = tiers
        self.policy = policy
        self.fleet = FleetView(tiers, servers)
        self.queues: TierQueues[B] = TierQueues(on_deadline_miss, _pending, lookahead=lookahead)
        self.estimator = OutputLengthEstimator(len(tiers), prior=output_prior)
        self.arrivals: dict[str, int] = {} if arrivals is None else arrivals
        self.shed: dict[str, int] = {} if shed is None else shed
        self._names = [t.name for t in tiers]
        self._templates = list(templates)
        # ideal TTFT by prompt length, one cache per distinct template (the simulator has one)
        caches: dict[int, dict[int, float]] = {}
        self._ideal = [caches.setdefault(id(t), {}) for t in templates]

    # ---------------------------------------------------------------- arrive, queue

    def arrive(
        self,
        rid: Hashable,
        tier: int,
        prompt_tokens: int,
        ttft_ms: float,
        tpot_ms: float,
        now: float,
        max_tokens: int | None = None,
    ) -> PendingRequest:
        """A new request of ``tier`` (counted), not yet queued."""
        name = self._names[tier]
        self.arrivals[name] = self.arrivals.get(name, 0) + 1
        return PendingRequest(
            rid=rid,
            tier=tier,
            prompt_tokens=prompt_tokens,
            ttft_ms=ttft_ms,
            tpot_ms=tpot_ms,
            arrival=now,
            expected_output=self.estimator.expected(tier, max_tokens),
            ideal_ttft_ms=self._ideal_ttft(tier, prompt_tokens),
        )

    def _ideal_ttft(self, tier: int, prompt_tokens: int) -> float:
        cache = self._ideal[tier]
        ms = cache.get(prompt_tokens)
        if ms is None:
            ms = cache[prompt_tokens] = ideal_ttft_ms(self._templates[tier], prompt_tokens)
        return ms

    def queue(self, item: B, front: bool = False) -> None:
        self.queues.push(item, front)

    def cancel(self, item: B) -> bool:
        """Take a queued item out (its client left). False if it was not queued."""
        return self.queues.remove(item)

    # ---------------------------------------------------------------- claim, admit, shed

    def dispatch(
        self, now: float, only_tier: int | None = None
    ) -> Iterator[tuple[B, Placement | None]]:
        """Settle what the queues can settle: each item comes out admitted on its placement's server
        or, with ``None``, shed. The body applies its own part before asking for the next one (the
        next decision reads the fleet that this admission changed)."""
        for item, placement in self.queues.drain(self.policy, self.fleet, now, only_tier):
            if placement is None:
                self._count_shed(item)
            else:
                p = item.pending
                item.placement = placement
                item.got_first = False
                claim(placement).on_admit(p.prompt_tokens, p.expected_output, p.tpot_ms)
            yield item, placement

    def _count_shed(self, item: B) -> None:
        name = self._names[item.pending.tier]
        self.shed[name] = self.shed.get(name, 0) + 1

    def shed_all(self) -> list[B]:
        """Take out everything queued, counted as shed: nothing can ever place it."""
        items = self.queues.take_all()
        for item in items:
            self._count_shed(item)
        return items

    def take_all(self) -> list[B]:
        """Take out everything queued, uncounted (the body answers them for its own reason)."""
        return self.queues.take_all()

    def expire(self, now: float, max_wait_s: float) -> list[B]:
        """Take out what arrived ``max_wait_s`` or more ago (see :meth:`TierQueues.take_expired`)."""
        return self.queues.take_expired(now, max_wait_s)

    # ---------------------------------------------------------------- tokens, finish, release

    def first_token(self, item: B) -> None:
        """Its first token came (a second one, after a re-prefill, changes nothing)."""
        if not item.got_first and item.placement is not None:
            item.got_first = True
            item.placement.server.on_first_token(item.pending.prompt_tokens)

    @staticmethod
    def tokens(server: ServerView, n: int) -> None:
        """``n`` more tokens held on ``server`` (per request in the router, per step in the sim)."""
        server.on_tokens(n)

    def finish(self, item: B, generated: int, learn_tier: int | None) -> bool:
        """Take an admitted item off its server, ``generated`` tokens out. ``learn_tier``: the tier
        whose estimate learns the output length (None: it did not run to its end). True when its
        server went back to the idle pool."""
        assert item.placement is not None, "finish of a request that was never admitted"
        p = item.pending
        server = item.placement.server
        server.on_finish(p.prompt_tokens, generated, p.expected_output, p.tpot_ms, item.got_first)
        if learn_tier is not None:
            self.estimator.observe(learn_tier, generated)
        return release_if_drained(server, self.policy)

    # ---------------------------------------------------------------- signals

    def oldest_wait_s(self, tier: int, now: float) -> float:
        arrival = self.queues.oldest_arrival(tier)
        return 0.0 if arrival is None else max(0.0, now - arrival)

    def next_deadline(self, max_wait_s: float = math.inf) -> float:
        """When the earliest queued head becomes hopeless or times out (dispatch again then)."""
        soonest = math.inf
        for q in self.queues.queues:
            if q:
                p = q[0].pending
                soonest = min(soonest, p.hopeless_at, p.arrival + max_wait_s)
        return soonest

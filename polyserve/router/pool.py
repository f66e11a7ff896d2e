"""The router's live state for one model: tiers, backends, tickets (pure, no I/O).

The router keeps one :class:`ModelPool` per model. Everything here is synchronous and takes ``now``
as an argument (monotonic seconds). The request lifecycle (queues, placement, accounting, release)
is the simulator's too: :class:`~polyserve.policy.ledger.Ledger`. The pool adds the backends the
router discovers and the ticket states it answers clients by; the I/O layer (``router.server``)
only carries out the decisions.

A :class:`Ticket` is one client request. Its life: ``queued`` (in its tier's FIFO) -> ``placed``
(on a backend, accounted in the backend's ``ServerView``) -> ``done``; or ``rejected`` (its TTFT
can no longer be met and its tier rejects late requests); or ``cancelled`` (the client left while it
was queued). A failed attempt before the first byte returns it to the front of its queue.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from polyserve.policy import make_policy
from polyserve.policy.base import FleetView, PendingRequest, Placement, ServerView
from polyserve.policy.dispatch import TierQueues
from polyserve.policy.ledger import Ledger
from polyserve.profile import Profile, load_profile
from polyserve.router.spec import BackendSpec, TierSpec
from polyserve.slo import Tier, TierSet

TicketState = Literal["new", "queued", "placed", "done", "rejected", "cancelled"]


@dataclass(eq=False, slots=True)
class Ticket:
    rid: str
    model: str
    tier: TierSpec
    pending: PendingRequest
    max_tokens: int | None = None
    state: TicketState = "new"
    placement: Placement | None = None
    backend: str | None = None
    attempts: int = 0
    got_first: bool = False
    generated: int = 0
    queued_at: float = 0.0  # when it (last) entered a queue
    delivered: bool = False  # the whole answer reached the client (its end is not a cancellation)
    prompt: str | None = None  # kept only when the router logs prompts
    reason: str = ""  # why it was rejected: deadline, tier_removed, model_removed, shutdown


@dataclass(eq=False, slots=True)
class Backend:
    spec: BackendSpec
    view: ServerView
    removed: bool = False  # gone from discovery: leaves once its requests finish
    idle_since: float | None = None  # since when it has held no request (None: it holds some)
    healthy: bool = True  # its health checks and connections say it answers
    #: it refused a request as busy (a 503) since its last passing health check; the policy sees
    #: ``view.healthy`` = healthy and not busy
    busy: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class ModelPool:
    model: str
    tier_specs: list[TierSpec]
    policy_name: str = "polyserve"
    output_prior: float = 256.0
    backends: dict[str, Backend] = field(default_factory=dict)
    measured_total: dict[str, int] = field(default_factory=dict)  # judged against the SLO
    attained_total: dict[str, int] = field(default_factory=dict)  # ... that met every deadline
    _next_index: int = 0
    ledger: Ledger[Ticket] = field(init=False)

    def __post_init__(self) -> None:
        self._build_tiers(self.tier_specs, queued=[], last=None)

    # ---------------------------------------------------------------- the ledger's parts

    @property
    def tiers(self) -> TierSet:
        return self.ledger.tiers

    @property
    def fleet(self) -> FleetView:
        return self.ledger.fleet

    @property
    def queues(self) -> TierQueues[Ticket]:
        return self.ledger.queues

    @property
    def arrivals_total(self) -> dict[str, int]:
        """Requests received per tier name, since start (the ledger counts them)."""
        return self.ledger.arrivals

    @property
    def shed_total(self) -> dict[str, int]:
        """Requests refused for their deadline per tier name, since start: the one count (the
        state and ``polyserve_router_shed_total`` read it)."""
        return self.ledger.shed

    # ---------------------------------------------------------------- configuration

    def _build_tiers(
        self, specs: list[TierSpec], queued: list[Ticket], last: Ledger[Ticket] | None
    ) -> list[Ticket]:
        """(Re)build tier-indexed state, a fresh ledger continuing ``last``'s counters; returns the
        queued tickets whose tier disappeared."""
        tiers = TierSet(Tier(t.name, t.tpot_ms, t.ttft_ms) for t in specs)
        self.tier_specs = [next(s for s in specs if s.name == t.name) for t in tiers]
        self.profiles: list[Profile] = [load_profile(s.profile) for s in self.tier_specs]
        self.ledger = Ledger(
            tiers,
            make_policy(self.policy_name, shares=[1.0] * len(tiers)),
            [b.view for b in self.backends.values()],
            [ServerView("ideal", p, p.max_num_batched_tokens) for p in self.profiles],
            [s.on_deadline_miss for s in self.tier_specs],
            output_prior=self.output_prior,
            arrivals=last.arrivals if last is not None else None,
            shed=last.shed if last is not None else None,
        )
        orphans: list[Ticket] = []
        names = {s.name: i for i, s in enumerate(self.tier_specs)}
        self._tier_pos = names
        for ticket in queued:
            index = names.get(ticket.tier.name)
            if index is None:
                orphans.append(ticket)
                continue
            ticket.tier = self.tier_specs[index]
            ticket.pending.tier = index
            self.ledger.queue(ticket)
        for b in self.backends.values():
            b.view.tier = names.get(b.spec.tier) if b.spec.tier is not None else None
        return orphans

    def set_tiers(self, specs: list[TierSpec]) -> list[Ticket]:
        """Apply a new tier list; returns queued tickets whose tier is gone (to be answered)."""
        if specs == self.tier_specs:
            return []
        return self._build_tiers(specs, self.ledger.take_all(), self.ledger)

    def set_backends(self, specs: Iterable[BackendSpec], now: float) -> None:
        """Reconcile to a discovery snapshot: add, update, and retire (after their requests)."""
        wanted = {s.name: s for s in specs}
        for name, gone in list(self.backends.items()):
            if name not in wanted:
                gone.removed = True
                gone.view.draining = True
                self._forget_if_done(gone)
        for name, spec in wanted.items():
            b = self.backends.get(name)
            if b is None:
                self._add(spec, now)
            else:
                self._update(b, spec)
        self.fleet.servers = [b.view for b in self.backends.values()]

    def _add(self, spec: BackendSpec, now: float) -> None:
        tier = self.tiers.index(spec.tier) if spec.tier is not None else None
        profile = self.profiles[tier if tier is not None else len(self.tiers) - 1]
        view = ServerView(
            name=spec.name,
            profile=profile,
            max_batched_tokens=spec.max_num_batched_tokens or profile.max_num_batched_tokens,
            max_num_seqs=spec.max_num_seqs or 0,
            # a known static budget (the engine's flags, no dynamic chunking) is modelled as such
            static_budget=spec.max_num_batched_tokens is not None and not spec.chunk_budget_ms,
            chunk_budget_ms=spec.chunk_budget_ms,
            tier=tier,
            pinned=tier is not None,
            draining=spec.draining,
            index=self._next_index,
        )
        self._next_index += 1
        self.backends[spec.name] = Backend(spec, view, idle_since=now)

    @staticmethod
    def _update(b: Backend, spec: BackendSpec) -> None:
        b.removed = False
        b.view.draining = spec.draining
        b.spec = spec

    def _forget_if_done(self, b: Backend) -> None:
        if b.removed and b.view.n_requests == 0:
            del self.backends[b.name]
            self.fleet.servers = [x.view for x in self.backends.values()]

    def set_health(self, name: str, healthy: bool) -> bool:
        """A health check's (or a failed connection's) verdict; a passing one also ends a busy
        hold. Returns True when the backend became available (queues may now move)."""
        b = self.backends.get(name)
        if b is None:
            return False
        b.healthy = healthy
        if healthy:
            b.busy = False
        return self._sync(b)

    def set_busy(self, name: str) -> None:
        """The backend refused a request as busy: no placements until its next passing health
        check, and it stays healthy (its load, not its health, was misjudged)."""
        b = self.backends.get(name)
        if b is not None:
            b.busy = True
            self._sync(b)

    @staticmethod
    def _sync(b: Backend) -> bool:
        available = b.healthy and not b.busy
        woke = available and not b.view.healthy
        b.view.healthy = available
        return woke

    # ---------------------------------------------------------------- requests

    def new_ticket(
        self,
        rid: str,
        tier: TierSpec,
        ttft_ms: float,
        prompt_tokens: int,
        max_tokens: int | None,
        now: float,
    ) -> Ticket:
        index = self.tiers.index(tier.name)
        pending = self.ledger.arrive(
            rid, index, prompt_tokens, ttft_ms, tier.tpot_ms, now, max_tokens
        )
        return Ticket(rid, self.model, tier, pending, max_tokens, queued_at=now)

    def enqueue(self, ticket: Ticket, now: float, front: bool = False) -> None:
        ticket.state = "queued"
        ticket.queued_at = now
        self.ledger.queue(ticket, front)

    def cancel(self, ticket: Ticket) -> bool:
        """The client left while queued. False if the ticket was no longer queued."""
        if ticket.state != "queued" or not self.ledger.cancel(ticket):
            return False
        ticket.state = "cancelled"
        return True

    def dispatch(self, now: float, only_tier: int | None = None) -> list[Ticket]:
        """Place what can be placed; returns the tickets it settled (placed or rejected)."""
        settled: list[Ticket] = []
        for ticket, placement in self.ledger.dispatch(now, only_tier):
            if placement is None:
                ticket.state = "rejected"
                ticket.reason = "deadline"
            else:
                ticket.state = "placed"
                ticket.backend = placement.server.name
                ticket.attempts += 1
                ticket.generated = 0
                self.backends[ticket.backend].idle_since = None
            settled.append(ticket)
        return settled

    def on_first_token(self, ticket: Ticket) -> None:
        if ticket.state == "placed" and ticket.backend in self.backends:
            self.ledger.first_token(ticket)

    def on_tokens(self, ticket: Ticket, n: int) -> None:
        b = self.backends.get(ticket.backend or "")
        if b is not None and n > 0:
            ticket.generated += n
            self.ledger.tokens(b.view, n)

    def release(self, ticket: Ticket, now: float, completed: bool) -> None:
        """Take a placed ticket off its backend (finished, failed, or its client left).

        ``completed``: the output ran to its end, so its length teaches the tier's estimate.
        """
        b = self.backends.get(ticket.backend or "")
        if ticket.state != "placed" or b is None:
            return
        # by name: the tier list may have changed since it was placed
        learn = self._tier_pos.get(ticket.tier.name) if completed else None
        self.ledger.finish(ticket, ticket.generated, learn)
        if b.view.n_requests == 0:
            b.idle_since = now
        ticket.state = "done"
        self._forget_if_done(b)

    def judged(self, tier: str, attained: bool) -> None:
        """Count an ended request of ``tier`` against its SLO: the one count (the state's
        attainment counters and ``polyserve_router_slo_{measured,attained}_total`` read it)."""
        self.measured_total[tier] = self.measured_total.get(tier, 0) + 1
        if attained:
            self.attained_total[tier] = self.attained_total.get(tier, 0) + 1

    def take_queued(self) -> list[Ticket]:
        return self.ledger.take_all()

    # ---------------------------------------------------------------- signals

    @staticmethod
    def idle_s(b: Backend, now: float) -> float:
        """Seconds the backend has held no request (0 while it holds one): what drains it."""
        return 0.0 if b.idle_since is None else max(0.0, now - b.idle_since)

    def oldest_wait_s(self, tier: int, now: float) -> float:
        return self.ledger.oldest_wait_s(tier, now)

    def next_deadline(self, now: float, max_wait_s: float = math.inf) -> float:
        """When the earliest queued head becomes hopeless or times out (the router re-dispatches
        then)."""
        return self.ledger.next_deadline(max_wait_s)

    def expire(self, now: float, max_wait_s: float) -> list[Ticket]:
        """Take out the queued tickets that arrived ``max_wait_s`` or more ago (to be answered).

        A tier that waits (``wait``, or ``degrade`` with nowhere to degrade to) would otherwise
        hold a request forever when no server can ever take it.
        """
        out = self.ledger.expire(now, max_wait_s)
        for ticket in out:
            ticket.state = "rejected"
        return out

"""Waiting for a placement: the handlers waiting on their tickets, and what wakes them.

A handler queues its ticket and waits (:meth:`Dispatcher.place`) until the pool's policy places it
or it is refused. :meth:`Dispatcher.kick` runs the policy whenever something changed (an arrival,
a release, a backend back, a new fleet) and at the next moment a queued head becomes hopeless or
times out (the deadline timer), so no ticket waits past its deadline for want of an event.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from polyserve.router.metrics import RouterMetrics
from polyserve.router.pool import ModelPool, Ticket
from polyserve.router.requests import UNPLACED, Refused
from polyserve.router.settings import RouterSettings


class Dispatcher:
    def __init__(
        self,
        settings: RouterSettings,
        pools: Callable[[], list[ModelPool]],
        now: Callable[[], float],
        metrics: RouterMetrics,
    ) -> None:
        self.settings = settings
        self._pools = pools  # the served pools (not retired ones: they take no new requests)
        self._now = now
        self._metrics = metrics
        self._waiters: dict[Ticket, asyncio.Future[None]] = {}
        self._deadline_timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        """Handlers waiting for their ticket's placement now."""
        return len(self._waiters)

    def settle(self, ticket: Ticket, reason: str) -> None:
        """Refuse the ticket for ``reason`` (a key of UNPLACED): its handler answers so."""
        ticket.state = "rejected"
        ticket.reason = reason
        self._wake(ticket)

    def _wake(self, ticket: Ticket) -> None:
        """The ticket was settled (placed or refused): its handler goes on."""
        fut = self._waiters.get(ticket)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def kick(self, pool: ModelPool | None = None, tier: int | None = None) -> None:
        """Place what can be placed, wake the waiters, and re-arm the deadline timer."""
        now = self._now()
        for p in [pool] if pool is not None else self._pools():
            for ticket in p.dispatch(now, tier):
                self._wake(ticket)
            for ticket in p.expire(now, self.settings.queue_timeout_s):
                self.settle(ticket, "queue_timeout")
        self._arm_deadline_timer(now)

    def _arm_deadline_timer(self, now: float) -> None:
        wait = self.settings.queue_timeout_s
        soonest = min((p.next_deadline(now, wait) for p in self._pools()), default=math.inf)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if math.isfinite(soonest):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # not serving yet: the first request re-arms it
            self._deadline_timer = loop.call_at(max(soonest, now) + 0.001, self.kick)

    def stop(self) -> None:
        """No more timed re-dispatch (the router is closing)."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()

    async def place(self, pool: ModelPool, ticket: Ticket) -> None:
        """Queue the ticket and wait until the policy places it (or it is refused: Refused)."""
        if ticket.state != "queued":
            pool.enqueue(ticket, self._now())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = fut
        try:
            self.kick(pool, ticket.pending.tier)
            await fut
        finally:
            self._waiters.pop(ticket, None)
        if ticket.state == "placed":
            tier = pool.tier_specs[ticket.pending.tier].name
            wait = self._now() - ticket.queued_at
            self._metrics.queue_wait.labels(pool.model, tier).observe(wait)
            placement = ticket.placement
            if placement is not None and placement.promoted:
                host = pool.backends[ticket.backend or ""].spec.tier or ""
                self._metrics.promotions.labels(pool.model, tier, host).inc()
            return
        reason = ticket.reason or "deadline"
        if reason == "deadline" and not pool.fleet.available():  # the pool counted it as shed
            reason = "no_backend"
        status, msg, outcome = UNPLACED[reason]
        raise Refused(status, msg, outcome, retry=status == 429)

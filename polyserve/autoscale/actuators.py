"""What carries a decision out: one small interface, one implementation per body.

- :class:`~polyserve.autoscale.virtual.VirtualActuator`: the simulator's servers (start-up delay);
- :class:`~polyserve.local.up.LocalFleet`: mock-engine processes for ``polyserve up``;
- :class:`~polyserve.operator.autoscaling.PassActuator`: the operator's; the new count waits for
  the tier's next pass, which records it in ``status.desiredReplicas`` and drains safely (mark,
  wait for the streams to end, the lowest ``controller.kubernetes.io/pod-deletion-cost``, then
  the Deployment's replicas).

An actuator owns the count it reports: ``replicas`` must return what was last set (by anyone), so
the decision core can tell its own changes from someone else's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from polyserve.autoscale.decide import Decision


class Actuator(Protocol):
    def replicas(self, tier: str) -> int:
        """The tier's replica count as set now (starting servers included)."""
        ...

    def scale(self, tier: str, desired: int, drain: Sequence[str], now: float) -> None:
        """Set the tier's count; when it drops, release the servers named in ``drain`` first."""
        ...


def apply(actuator: Actuator, decisions: Sequence[Decision], now: float) -> int:
    """Carry out the decisions that change a count; returns how many did."""
    changed = 0
    for d in decisions:
        if d.desired != d.replicas:
            actuator.scale(d.tier, d.desired, d.drain, now)
            changed += 1
    return changed

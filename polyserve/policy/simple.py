"""Load-balancing baselines that place at once and let the engine queue: random, round-robin,
least-outstanding-requests (vLLM production-stack's and AIBrix's default), and Minimal (the paper's:
the server with the shortest predicted iteration time). CO-Chunk is Minimal on engines that all run a
static chunked-prefill token budget (the simulator sets the budget). With no server available they
return ``None`` (the request waits in the router until one is)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from polyserve.policy.base import FleetView, PendingRequest, Placement, ServerView


@dataclass
class RandomPolicy:
    seed: int = 0
    name: str = "random"
    queues: bool = False
    tiered: bool = False
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def place(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None:
        pool = fleet.available()
        return Placement(self._rng.choice(pool)) if pool else None


@dataclass
class RoundRobinPolicy:
    name: str = "round-robin"
    queues: bool = False
    tiered: bool = False
    _next: int = 0

    def place(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None:
        pool = fleet.available()
        if not pool:
            return None
        server = pool[self._next % len(pool)]
        self._next += 1
        return Placement(server)


@dataclass
class LeastOutstandingPolicy:
    name: str = "least-outstanding"
    queues: bool = False
    tiered: bool = False

    def place(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None:
        pool = fleet.available()
        return Placement(min(pool, key=lambda s: (s.residents, s.index))) if pool else None


def predicted_step_ms(server: ServerView, extra_prompt: int = 0) -> float:
    """The server's next step if it took a prompt of ``extra_prompt`` tokens now."""
    limit = max(0, server.max_batched_tokens - server.n_decode)
    chunk = min(server.prefill_backlog + extra_prompt, limit)
    return server.profile.step_ms(server.n_decode, server.kv_tokens, chunk, chunk * chunk)


@dataclass
class MinimalPolicy:
    name: str = "minimal"
    queues: bool = False
    tiered: bool = False

    def place(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None:
        pool = fleet.available()
        if not pool:
            return None
        return Placement(
            min(pool, key=lambda s: (predicted_step_ms(s, req.prompt_tokens), s.index))
        )

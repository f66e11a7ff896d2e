"""The placement interface shared by the simulator and the router.

A policy is given a pending request and a read-only view of the fleet and returns a
:class:`Placement` or ``None`` (wait in the router's queue). Policies are pure: no I/O, no clock
(``now`` is an argument), deterministic given their seed.

:class:`ServerView` is the one place where a server's load is accounted: the simulator feeds it from
the engine model's events and the router from the requests it proxies (tokens streamed back), with
the same four calls (admit, first token, tokens, finish).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from polyserve.profile import Profile
from polyserve.slo import TierSet


@dataclass(slots=True)
class PendingRequest:
    """A request waiting for a server. ``tier`` indexes the TierSet (0 = tightest)."""

    rid: Hashable
    tier: int
    prompt_tokens: int
    ttft_ms: float
    tpot_ms: float
    arrival: float
    expected_output: float = 0.0  # filled from the online estimate when queued
    ideal_ttft_ms: float = 0.0  # prefill on an idle server of its tier: the best it could do

    def wait_ms(self, now: float) -> float:
        return (now - self.arrival) * 1000.0

    def hopeless(self, now: float) -> bool:
        """True once even an idle server could no longer produce its first token in time."""
        return self.wait_ms(now) + self.ideal_ttft_ms > self.ttft_ms

    @property
    def hopeless_at(self) -> float:
        """When :meth:`hopeless` turns true (the router re-dispatches then)."""
        return self.arrival + (self.ttft_ms - self.ideal_ttft_ms) / 1000.0


@dataclass(slots=True)
class ServerView:
    """What the policy knows about one server. Mutated only through the accounting methods."""

    name: str
    profile: Profile
    max_batched_tokens: int  # the engine's per-step token budget
    chunk_budget_ms: float = 0.0  # > 0: the engine cuts prefill chunks to this step time
    max_num_seqs: int = 0  # the engine's running cap (--max-num-seqs; 0: the profile's)
    #: the engine runs stock vLLM's static token budget (no dynamic chunking): a step that
    #: prefills fills the budget, so a decode's TPOT must hold in such a step
    static_budget: bool = False
    tier: int | None = None  # assigned tier; None = idle pool (or a shared pool)
    pinned: bool = False  # the tier is fixed (a tier's own deployment): never released to the pool
    draining: bool = False
    healthy: bool = True
    busy_until: float = 0.0  # when its current step ends (0: idle)
    n_requests: int = 0
    n_prefill: int = 0  # residents that have not produced their first token
    prompt_tokens: int = 0
    generated_tokens: int = 0
    expected_tokens: float = 0.0  # sum of the residents' expected output lengths at admission
    prefill_backlog: int = 0  # prompt tokens of residents without a first token
    tpot_counts: dict[float, int] = field(default_factory=dict)
    index: int = 0  # position in the fleet (stable tie-break)
    # Load the server carries that this body did not send (other routers, direct clients), from
    # the engine's own metrics; always 0 in the simulator. Counted as decoding residents.
    foreign_requests: int = 0
    foreign_kv_tokens: int = 0
    # Slack of the most urgent decode at the start of the current step (ms until its next token is
    # due; 0 = unknown). Where known (the simulator), the TTFT check predicts the bigger prefill
    # chunks that slack-aware chunking runs.
    decode_slack_ms: float = 0.0

    # -------------------------------------------------------------- accounting (sim and router)

    def on_admit(self, prompt_tokens: int, expected_output: float, tpot_ms: float) -> None:
        self.n_requests += 1
        self.n_prefill += 1
        self.prompt_tokens += prompt_tokens
        self.prefill_backlog += prompt_tokens
        self.expected_tokens += expected_output
        self.tpot_counts[tpot_ms] = self.tpot_counts.get(tpot_ms, 0) + 1

    def on_first_token(self, prompt_tokens: int) -> None:
        self.n_prefill -= 1
        self.prefill_backlog -= prompt_tokens

    def on_tokens(self, n: int) -> None:
        self.generated_tokens += n

    def on_finish(
        self,
        prompt_tokens: int,
        generated: int,
        expected_output: float,
        tpot_ms: float,
        got_first: bool,
    ) -> None:
        self.n_requests -= 1
        self.prompt_tokens -= prompt_tokens
        self.generated_tokens -= generated
        self.expected_tokens -= expected_output
        if not got_first:
            self.n_prefill -= 1
            self.prefill_backlog -= prompt_tokens
        left = self.tpot_counts[tpot_ms] - 1
        if left:
            self.tpot_counts[tpot_ms] = left
        else:
            del self.tpot_counts[tpot_ms]

    # -------------------------------------------------------------- derived load

    @property
    def residents(self) -> int:
        """Requests on the server: this body's and the foreign ones."""
        return self.n_requests + self.foreign_requests

    @property
    def kv_tokens(self) -> int:
        """KV the residents hold now (prompt + generated)."""
        return self.prompt_tokens + self.generated_tokens + self.foreign_kv_tokens

    @property
    def projected_kv_tokens(self) -> float:
        """KV the residents will hold when each reaches its expected output length (foreign
        residents at what they hold now: nothing is known about their outputs)."""
        own = max(self.expected_tokens, self.generated_tokens + self.n_requests)
        return self.prompt_tokens + own + self.foreign_kv_tokens

    @property
    def n_decode(self) -> int:
        return self.residents - self.n_prefill

    @property
    def tightest_tpot_ms(self) -> float:
        return min(self.tpot_counts) if self.tpot_counts else math.inf

    @property
    def available(self) -> bool:
        return self.healthy and not self.draining

    def busy_ms(self, now: float) -> float:
        return max(0.0, (self.busy_until - now) * 1000.0)


@dataclass(frozen=True, slots=True)
class Placement:
    server: ServerView
    assign_tier: int | None = None  # take this idle server into that tier
    promoted: bool = False  # a looser request on a tighter tier's server
    degraded: bool = False  # placed although its deadline can no longer be met
    ttft_pred_ms: float = math.nan


@dataclass(slots=True)
class FleetView:
    """Servers by tier plus the idle pool; maintained by the body (simulator or router)."""

    tiers: TierSet
    servers: list[ServerView]

    def idle(self) -> list[ServerView]:
        return [s for s in self.servers if s.tier is None and s.available]

    def available(self) -> list[ServerView]:
        return [s for s in self.servers if s.available]


class Policy(Protocol):
    """Places one request; ``None`` means wait in the router's queue."""

    name: str
    #: True when requests wait in the router (admission binds); False: placed at once.
    queues: bool
    #: True when servers belong to tiers (the body releases empty servers to the idle pool).
    tiered: bool

    def place(self, req: PendingRequest, fleet: FleetView, now: float) -> Placement | None: ...


def by_load_desc(servers: Sequence[ServerView]) -> list[ServerView]:
    """Most loaded first: projected KV, then residents; the fleet index breaks ties (stable)."""
    return sorted(servers, key=lambda s: (-s.projected_kv_tokens, -s.residents, s.index))

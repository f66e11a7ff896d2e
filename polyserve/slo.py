"""SLO tiers, deadline SLOs (DSLO), attainment and the fleet-level aggregates.

A request's SLO is a TTFT budget and a per-token (TPOT) budget. Under the deadline SLO, token ``i``
(``i = 0`` is the first token) must be out by ``arrival + TTFT + i * TPOT``: a slow iteration can be
made up by faster ones later. A request *attains* its SLO when every token meets its deadline.

Times in this module are seconds (floats on any clock); SLO budgets are milliseconds, as users
write them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray


class SLOError(ValueError):
    """A tier set or an SLO that cannot be used."""


class HasSLO(Protocol):
    """Anything with a tier's targets (a :class:`Tier`, the router's tier specs)."""

    @property
    def tpot_ms(self) -> float: ...

    @property
    def ttft_ms(self) -> float: ...


T = TypeVar("T", bound=HasSLO)


def meets(tier: HasSLO, tpot_ms: float | None, ttft_ms: float | None) -> bool:
    """The tier promises the asked targets or tighter ones (None: not asked)."""
    return (tpot_ms is None or tier.tpot_ms <= tpot_ms) and (
        ttft_ms is None or tier.ttft_ms <= ttft_ms
    )


def bin_tier(tiers: Iterable[T], tpot_ms: float | None, ttft_ms: float | None = None) -> T | None:
    """Binning: the loosest of ``tiers`` that meets the targets, or None if none does.

    A target rounds *down* to the next tighter tier: a request that asks for 40 ms per token is
    served by the 30 ms tier, which meets its target; it never lands in a looser tier.
    """
    fits = [t for t in tiers if meets(t, tpot_ms, ttft_ms)]
    return max(fits, key=lambda t: (t.tpot_ms, t.ttft_ms), default=None)


@dataclass(frozen=True, slots=True)
class Tier:
    """A per-token latency tier. ``ttft_ms`` is the tier's default first-token budget."""

    name: str
    tpot_ms: float
    ttft_ms: float

    def __post_init__(self) -> None:
        if not self.name:
            raise SLOError("a tier needs a name")
        for label, value in (("tpot_ms", self.tpot_ms), ("ttft_ms", self.ttft_ms)):
            if not (math.isfinite(value) and value > 0):
                raise SLOError(
                    f"tier {self.name!r}: {label} must be a positive number, got {value}"
                )


class TierSet:
    """Tiers ordered tightest (smallest TPOT) first (requests are binned by :func:`bin_tier`)."""

    def __init__(self, tiers: Iterable[Tier]) -> None:
        ordered = sorted(tiers, key=lambda t: t.tpot_ms)
        if not ordered:
            raise SLOError("a tier set needs at least one tier")
        names = [t.name for t in ordered]
        if len(set(names)) != len(names):
            raise SLOError(f"tier names must be unique, got {names}")
        tpots = [t.tpot_ms for t in ordered]
        if len(set(tpots)) != len(tpots):
            raise SLOError(f"tier TPOTs must be distinct, got {tpots}")
        self.tiers: tuple[Tier, ...] = tuple(ordered)
        self._by_name = {t.name: i for i, t in enumerate(ordered)}

    def __len__(self) -> int:
        return len(self.tiers)

    def __iter__(self) -> Iterator[Tier]:
        return iter(self.tiers)

    def __getitem__(self, index: int) -> Tier:
        return self.tiers[index]

    def __repr__(self) -> str:
        return f"TierSet({[t.name for t in self.tiers]})"

    def index(self, name: str) -> int:
        """Position of a tier (0 = tightest)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise SLOError(f"unknown tier {name!r}; tiers are {list(self._by_name)}") from None

    def by_name(self, name: str) -> Tier:
        return self.tiers[self.index(name)]


#: The paper's evaluation tiers (TPOT 20/30/50/100 ms). TTFT is drawn per request in the paper;
#: the tier default here is the middle of its {300, 500, 1000} ms menu.
PAPER_TIERS = TierSet(
    [
        Tier("t20", 20.0, 500.0),
        Tier("t30", 30.0, 500.0),
        Tier("t50", 50.0, 500.0),
        Tier("t100", 100.0, 500.0),
    ]
)


# --------------------------------------------------------------------------------------------
# Deadline SLO of one request


@dataclass(frozen=True, slots=True)
class DeadlineCheck:
    """The verdict of the deadline SLO on one request's token timestamps.

    ``first_miss`` is the index of the first token past its deadline (None when all met);
    ``late_by_ms`` how late that token was; ``worst_slack_ms`` the smallest margin over all tokens
    (negative when a deadline was missed).
    """

    attained: bool
    first_miss: int | None
    late_by_ms: float
    worst_slack_ms: float


#: Rounding of summed step times (nanoseconds) is not a miss.
DEADLINE_TOLERANCE_MS = 1e-6


@overload
def token_deadline(arrival: float, ttft_ms: float, tpot_ms: float, index: float) -> float: ...
@overload
def token_deadline(
    arrival: float, ttft_ms: float, tpot_ms: float, index: NDArray[np.float64]
) -> NDArray[np.float64]: ...
def token_deadline(
    arrival: float, ttft_ms: float, tpot_ms: float, index: float | NDArray[np.float64]
) -> float | NDArray[np.float64]:
    """The deadline SLO: when token ``index`` (0: the first) is due, ``arrival + TTFT + index *
    TPOT`` (seconds; the budgets in ms). ``index`` may be an array of indices."""
    return arrival + (ttft_ms + index * tpot_ms) / 1000.0


def check_deadlines(
    arrival: float, token_times: ArrayLike, ttft_ms: float, tpot_ms: float
) -> DeadlineCheck:
    """Apply the deadline SLO to a request's token timestamps (seconds, token 0 first).

    A request with no tokens has missed its first deadline by an unknown amount: it does not attain.
    """
    times = np.asarray(token_times, dtype=np.float64)
    if times.size == 0:
        return DeadlineCheck(False, 0, math.inf, -math.inf)
    deadlines = token_deadline(arrival, ttft_ms, tpot_ms, np.arange(times.size, dtype=np.float64))
    slack = (deadlines - times) * 1000.0
    late = np.flatnonzero(slack < -DEADLINE_TOLERANCE_MS)
    worst = float(slack.min())
    if late.size == 0:
        return DeadlineCheck(True, None, 0.0, worst)
    first = int(late[0])
    return DeadlineCheck(False, first, float(-slack[first]), worst)


# --------------------------------------------------------------------------------------------
# Outcomes and aggregates


@dataclass(slots=True)
class RequestOutcome:
    """What happened to one request, as the simulator, the router or a load client saw it."""

    request_id: str
    tier: str
    arrival: float
    ttft_ms: float
    tpot_ms: float
    prompt_tokens: int
    output_tokens: int
    first_token: float | None = None
    last_token: float | None = None
    attained: bool = False
    first_miss: int | None = None
    late_by_ms: float = 0.0
    server: str | None = None
    rejected: bool = False
    promoted: bool = False

    @property
    def ttft(self) -> float | None:
        """Measured time to first token in ms."""
        if self.first_token is None:
            return None
        return (self.first_token - self.arrival) * 1000.0

    @property
    def tpot(self) -> float | None:
        """Measured mean time per output token after the first, in ms."""
        if self.first_token is None or self.last_token is None or self.output_tokens < 2:
            return None
        return (self.last_token - self.first_token) * 1000.0 / (self.output_tokens - 1)


def _percentiles(values: Sequence[float], qs: Sequence[float]) -> dict[str, float]:
    if not values:
        return {f"p{q:g}": math.nan for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}


@dataclass(slots=True)
class TierSummary:
    requests: int
    attained: int
    rejected: int
    promoted: int
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]

    @property
    def attainment(self) -> float:
        return self.attained / self.requests if self.requests else math.nan


@dataclass(slots=True)
class Summary:
    """Attainment overall and per tier, latency percentiles, and cost."""

    requests: int
    attained: int
    per_tier: dict[str, TierSummary] = field(default_factory=dict)
    instance_seconds: float = math.nan

    @property
    def attainment(self) -> float:
        return self.attained / self.requests if self.requests else math.nan

    @property
    def cost_per_request(self) -> float:
        """Instance-seconds (GPU-seconds x GPUs per instance) per request."""
        return self.instance_seconds / self.requests if self.requests else math.nan


PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


def summarize(
    outcomes: Iterable[RequestOutcome],
    tier_order: Sequence[str] | None = None,
    instance_seconds: float = math.nan,
    percentiles: Sequence[float] = PERCENTILES,
) -> Summary:
    """Aggregate outcomes. ``tier_order`` fixes the order (and presence) of the per-tier rows."""
    groups: dict[str, list[RequestOutcome]] = {name: [] for name in (tier_order or ())}
    for o in outcomes:
        groups.setdefault(o.tier, []).append(o)
    per_tier: dict[str, TierSummary] = {}
    total = attained = 0
    for name, items in groups.items():
        ttfts = [v for o in items if (v := o.ttft) is not None]
        tpots = [v for o in items if (v := o.tpot) is not None]
        n_ok = sum(1 for o in items if o.attained)
        per_tier[name] = TierSummary(
            requests=len(items),
            attained=n_ok,
            rejected=sum(1 for o in items if o.rejected),
            promoted=sum(1 for o in items if o.promoted),
            ttft_ms=_percentiles(ttfts, percentiles),
            tpot_ms=_percentiles(tpots, percentiles),
        )
        total += len(items)
        attained += n_ok
    return Summary(total, attained, per_tier, instance_seconds)


# --------------------------------------------------------------------------------------------
# Goodput


@dataclass(frozen=True, slots=True)
class GoodputPoint:
    rate: float
    attainment: float


@dataclass(frozen=True, slots=True)
class Goodput:
    """The highest rate found with attainment >= threshold, and every rate tried on the way."""

    rate: float
    threshold: float
    points: tuple[GoodputPoint, ...]


def goodput_search(
    attainment_at: Callable[[float], float],
    lo: float,
    hi: float,
    threshold: float = 0.9,
    rel_tol: float = 0.02,
    max_evals: int = 20,
    on_point: Callable[[GoodputPoint], None] | None = None,
) -> Goodput:
    """Bisect on the arrival rate for the highest rate whose attainment is >= ``threshold``.

    ``attainment_at(rate)`` runs a workload at that rate. ``hi`` is doubled (within ``max_evals``)
    until it fails, so a low first guess is safe. Returns rate 0 when even ``lo`` fails.
    """
    if not (0 < lo < hi):
        raise SLOError(f"goodput search needs 0 < lo < hi, got lo={lo}, hi={hi}")
    if not (0 < threshold <= 1):
        raise SLOError(f"attainment threshold must be in (0, 1], got {threshold}")
    points: list[GoodputPoint] = []

    def probe(rate: float) -> bool:
        p = GoodputPoint(rate, attainment_at(rate))
        points.append(p)
        if on_point is not None:
            on_point(p)
        return p.attainment >= threshold

    if not probe(lo):
        return Goodput(0.0, threshold, tuple(points))
    good = lo
    while probe(hi):
        good = hi
        hi *= 2.0
        if len(points) >= max_evals:
            return Goodput(good, threshold, tuple(points))
    bad = hi
    while (bad - good) > rel_tol * good and len(points) < max_evals:
        mid = 0.5 * (good + bad)
        if probe(mid):
            good = mid
        else:
            bad = mid
    return Goodput(good, threshold, tuple(points))

"""From the router's cumulative counters to the per-tier rates the decision core reads (pure).

``ArrivalTrend`` keeps a tier's counter samples for two trend windows and answers the rate over the
last window and over the window before it. ``StateReader`` turns each :class:`RouterState` into one
:class:`Observation` per tier; the simulator feeds it the same snapshots, so both bodies share it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque

from polyserve.autoscale.signals import (
    Observation,
    RouterState,
    ServerObservation,
    window_attainment,
)


class ArrivalTrend:
    """Rates from samples of one cumulative counter (a counter that goes down is a reset)."""

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"the trend window must be > 0 s, got {window_s}")
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._values: deque[float] = deque()
        self._base = 0.0  # what the counter had counted before its last reset
        self._last_raw: float | None = None

    def add(self, time: float, total: float) -> None:
        if self._times and time <= self._times[-1]:
            return  # the same or an older snapshot again
        if self._last_raw is not None and total < self._last_raw:
            self._base += self._last_raw
        self._last_raw = total
        self._times.append(time)
        self._values.append(self._base + total)
        keep_from = time - 2 * self.window_s
        while len(self._times) > 2 and self._times[1] <= keep_from:
            self._times.popleft()
            self._values.popleft()

    def _value_at(self, t: float) -> float:
        times, values = self._times, self._values
        if t <= times[0]:
            return values[0]
        if t >= times[-1]:
            return values[-1]
        i = bisect_left(times, t)
        t0, t1 = times[i - 1], times[i]
        v0, v1 = values[i - 1], values[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    def rates(self) -> tuple[float, float]:
        """(rate over the last window, rate over the window before), in events per second."""
        if len(self._times) < 2:
            return 0.0, 0.0
        now, w = self._times[-1], self.window_s
        span = now - self._times[0]
        if span < 2 * w:  # too short a history to show a trend: the mean so far, twice
            seen = min(span, w)
            rate = (self._values[-1] - self._value_at(now - seen)) / seen
            return rate, rate
        v_now, v_mid, v_old = (self._value_at(now - k * w) for k in (0, 1, 2))
        return (v_now - v_mid) / w, (v_mid - v_old) / w


class StateReader:
    """Router snapshots in, one observation per tier out (in the snapshot's tier order)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._arrivals: dict[str, ArrivalTrend] = {}
        self._shed: dict[str, ArrivalTrend] = {}
        self._measured: dict[str, ArrivalTrend] = {}
        self._attained: dict[str, ArrivalTrend] = {}

    def _trend(self, trends: dict[str, ArrivalTrend], tier: str) -> ArrivalTrend:
        return trends.setdefault(tier, ArrivalTrend(self.window_s))

    def read(self, state: RouterState) -> list[Observation]:
        servers: dict[str, list[ServerObservation]] = {}
        for b in state.backends:
            if b.tier is None:
                continue
            servers.setdefault(b.tier, []).append(ServerObservation.of(b))
        out = []
        for t in state.tiers:
            arrivals, shed = self._trend(self._arrivals, t.name), self._trend(self._shed, t.name)
            measured = self._trend(self._measured, t.name)
            attained = self._trend(self._attained, t.name)
            arrivals.add(state.time, t.arrivals_total)
            shed.add(state.time, t.shed_total)
            measured.add(state.time, t.measured_total)
            attained.add(state.time, t.attained_total)
            rate, prev = arrivals.rates()
            shed_rate = shed.rates()[0]
            out.append(
                Observation(
                    tier=t.name,
                    observed_at=state.time,
                    pending=t.pending,
                    oldest_wait_s=t.oldest_wait_s,
                    arrival_rate=rate,
                    arrival_rate_prev=prev,
                    shed_rate=shed_rate,
                    attainment=window_attainment(
                        measured.rates()[0], attained.rates()[0], shed_rate
                    ),
                    servers=tuple(servers.get(t.name, ())),
                )
            )
        return out

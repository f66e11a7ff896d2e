"""Where the live autoscaler reads its signals: the router's state endpoint, or Prometheus.

A source answers one :class:`~polyserve.autoscale.signals.Observation` per tier, or raises
:class:`SignalError`; the loop then decides without signals, which holds every tier
(``hold_stale_metrics``). Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
from pydantic import ValidationError

from polyserve.autoscale.signals import (
    PROMQL,
    STATE_PATH,
    Observation,
    RouterState,
    ServerObservation,
    window_attainment,
)
from polyserve.autoscale.trend import StateReader


class SignalError(RuntimeError):
    """The signals could not be read (the source is down, or answered something unusable)."""


class SignalSource(Protocol):
    async def observe(self) -> list[Observation]: ...


class RouterSource:
    """``GET {router}/polyserve/v1/state``; counters become rates over ``window_s``."""

    def __init__(
        self,
        router_url: str,
        window_s: float,
        session: aiohttp.ClientSession,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = router_url.rstrip("/") + STATE_PATH
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.reader = StateReader(window_s)

    async def fetch(self) -> RouterState:
        try:
            async with self.session.get(self.url, timeout=self.timeout) as resp:
                if resp.status != 200:
                    raise SignalError(f"{self.url}: HTTP {resp.status}")
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise SignalError(f"{self.url}: {err or type(err).__name__}") from err
        try:
            return RouterState.model_validate_json(body)
        except ValidationError as err:
            raise SignalError(f"{self.url}: not a router state: {err}") from err

    async def observe(self) -> list[Observation]:
        return self.reader.read(await self.fetch())


Vector = list[dict[str, Any]]


class PrometheusSource:
    """The same signals through Prometheus (prometheus-api-client), with the PromQL in
    :data:`~polyserve.autoscale.signals.PROMQL`. A tier with no series reads as 0 (no traffic);
    a query that fails raises :class:`SignalError`. ``observed_at`` is the oldest sample time."""

    def __init__(
        self,
        prometheus_url: str,
        tiers: Sequence[str],
        window_s: float,
        timeout_s: float = 5.0,
        client: Any = None,
    ) -> None:
        if client is None:
            from prometheus_api_client import PrometheusConnect

            client = PrometheusConnect(url=prometheus_url, disable_ssl=True, timeout=timeout_s)
        self.client = client
        self.tiers = list(tiers)
        self.window = max(1, round(window_s))

    def _query(self, key: str) -> Vector:
        query = PROMQL[key].format(w=self.window)
        try:
            result = self.client.custom_query(query)
        except Exception as err:  # the client raises requests' and its own errors alike
            raise SignalError(f"prometheus query {key!r} failed: {err}") from err
        if not isinstance(result, list):
            raise SignalError(f"prometheus query {key!r}: not an instant vector")
        return result

    def observe_sync(self) -> list[Observation]:
        results = {key: self._query(key) for key in PROMQL}
        times: list[float] = []

        def by_tier(key: str) -> dict[str, float]:
            out: dict[str, float] = {}
            for series in results[key]:
                t, v = series["value"]
                times.append(float(t))
                out[series["metric"].get("tier", "")] = float(v)
            return out

        def by_backend(key: str) -> dict[tuple[str, str], float]:
            out: dict[tuple[str, str], float] = {}
            for series in results[key]:
                t, v = series["value"]
                times.append(float(t))
                m = series["metric"]
                out[m.get("tier", ""), m.get("backend", "")] = float(v)
            return out

        pending, oldest = by_tier("pending"), by_tier("oldest_wait")
        rate, prev, shed = by_tier("rate"), by_tier("rate_prev"), by_tier("shed_rate")
        measured, attained = by_tier("measured_rate"), by_tier("attained_rate")
        ready, draining = by_backend("ready"), by_backend("draining")
        requests, idle = by_backend("requests"), by_backend("idle")
        observed_at = min(times) if times else math.nan
        out = []
        for tier in self.tiers:
            servers = tuple(
                ServerObservation(
                    name=name,
                    ready=ready[t, name] >= 1,
                    draining=draining.get((t, name), 0.0) >= 1,
                    requests=_count(requests.get((t, name), math.nan)),
                    idle_s=idle.get((t, name), math.nan),
                )
                for (t, name) in sorted(ready)
                if t == tier
            )
            p = pending.get(tier, 0.0)
            out.append(
                Observation(
                    tier=tier,
                    observed_at=observed_at,
                    pending=_count(p),
                    oldest_wait_s=oldest.get(tier, 0.0),
                    arrival_rate=rate.get(tier, 0.0),
                    arrival_rate_prev=prev.get(tier, 0.0),
                    shed_rate=shed.get(tier, 0.0),
                    attainment=window_attainment(
                        measured.get(tier, 0.0), attained.get(tier, 0.0), shed.get(tier, 0.0)
                    ),
                    servers=servers,
                )
            )
        return out

    async def observe(self) -> list[Observation]:
        return await asyncio.to_thread(self.observe_sync)


def _count(value: float) -> int:
    """A gauge read as a count; -1 (which the decision core refuses) when it is not a number."""
    return int(value) if math.isfinite(value) else -1

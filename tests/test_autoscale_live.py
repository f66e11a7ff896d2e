"""The live parts: the router and Prometheus sources over loopback HTTP, the loop, the local
actuator with real mock-engine processes."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import ClientSession, web
from prometheus_client import generate_latest

from polyserve.autoscale.decide import Autoscaler, Reason, TierTarget
from polyserve.autoscale.loop import decide_once
from polyserve.autoscale.metrics import AutoscalerMetrics
from polyserve.autoscale.signals import (
    PROMQL,
    STATE_PATH,
    BackendState,
    Observation,
    RouterState,
    TierState,
)
from polyserve.autoscale.sources import PrometheusSource, RouterSource, SignalError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(path: str, handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def state(t: float, arrivals: int) -> RouterState:
    return RouterState(
        time=t,
        tiers=[
            TierState(
                name="chat", pending=3, oldest_wait_s=0.4, arrivals_total=arrivals, shed_total=0
            )
        ],
        backends=[
            BackendState(name="b0", tier="chat", ready=True, draining=False, requests=5, idle_s=0),
            BackendState(name="p0", tier=None, ready=True, draining=False, requests=0, idle_s=9),
        ],
    )


def test_router_source_reads_the_state_and_derives_rates() -> None:
    answers = [state(100.0, 0), state(110.0, 80)]

    async def handler(request: web.Request) -> web.Response:
        body = answers.pop(0) if answers else None
        if body is None:
            return web.Response(status=500)
        return web.Response(text=body.model_dump_json(), content_type="application/json")

    async def main() -> tuple[list[Observation], str]:
        async with serve(STATE_PATH, handler) as url, ClientSession() as session:
            src = RouterSource(url, window_s=10.0, session=session)
            await src.observe()
            obs = await src.observe()
            with pytest.raises(SignalError, match="HTTP 500") as err:
                await src.observe()
            return obs, str(err.value)

    (obs,), _ = asyncio.run(main())
    assert obs.tier == "chat" and obs.pending == 3 and obs.observed_at == 110.0
    assert obs.arrival_rate == pytest.approx(8.0)
    assert [s.name for s in obs.servers] == ["b0"]  # the pool server belongs to no tier


def test_router_source_refuses_what_is_not_a_state() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"version": 1, "time": 1.0, "tiers": "x"}))

    async def main() -> None:
        async with serve(STATE_PATH, handler) as url, ClientSession() as session:
            with pytest.raises(SignalError, match="not a router state"):
                await RouterSource(url, 10.0, session).observe()
        async with ClientSession() as session:  # nothing listens there any more
            with pytest.raises(SignalError):
                await RouterSource(url, 10.0, session, timeout_s=2.0).observe()

    asyncio.run(main())


def vector(samples: Sequence[tuple[dict[str, str], float]], t: float) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [t, str(v)]} for m, v in samples],
        },
    }


def test_prometheus_source_runs_the_documented_promql() -> None:
    t = 1_700_000_000.0
    answers: dict[str, list[tuple[dict[str, str], float]]] = {
        "pending": [({"tier": "chat"}, 4)],
        "oldest_wait": [({"tier": "chat"}, 0.7)],
        "rate": [({"tier": "chat"}, 12.5), ({"tier": "batch"}, 1.0)],
        "rate_prev": [({"tier": "chat"}, 10.0)],
        "shed_rate": [],
        "measured_rate": [({"tier": "chat"}, 10.0)],
        "attained_rate": [({"tier": "chat"}, 9.0)],
        "ready": [({"tier": "chat", "backend": "b1"}, 1), ({"tier": "chat", "backend": "b0"}, 0)],
        "draining": [({"tier": "chat", "backend": "b1"}, 0)],
        "requests": [({"tier": "chat", "backend": "b1"}, 7)],
        "idle": [({"tier": "chat", "backend": "b1"}, 0), ({"tier": "chat", "backend": "b0"}, 3)],
    }
    by_query = {PROMQL[k].format(w=60): v for k, v in answers.items()}
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        q = request.query.get("query", "")
        seen.append(q)
        if q not in by_query:
            return web.json_response({"status": "error", "error": "bad query"}, status=400)
        return web.json_response(vector(by_query[q], t))

    async def main() -> list[Observation]:
        async with serve("/api/v1/query", handler) as url:
            src = PrometheusSource(url, ["chat", "batch"], window_s=60.0)
            out = await src.observe()
            src.window = 30  # queries Prometheus does not know: an error answer
            with pytest.raises(SignalError):
                await src.observe()
            return out

    chat, batch = asyncio.run(main())
    assert seen[: len(PROMQL)] == [PROMQL[k].format(w=60) for k in PROMQL]
    assert (chat.pending, chat.oldest_wait_s, chat.arrival_rate, chat.arrival_rate_prev) == (
        4,
        0.7,
        12.5,
        10.0,
    )
    assert chat.observed_at == t
    assert chat.attainment == 0.9 and batch.attainment is None
    assert [(s.name, s.ready, s.requests) for s in chat.servers] == [
        ("b0", False, -1),
        ("b1", True, 7),
    ]
    assert batch.arrival_rate == 1.0 and batch.pending == 0 and batch.servers == ()


class FailingSource:
    async def observe(self) -> list[Observation]:
        raise SignalError("router down")


class CountingActuator:
    def __init__(self) -> None:
        self.counts = {"chat": 2}

    def replicas(self, tier: str) -> int:
        return self.counts[tier]

    def scale(self, tier: str, desired: int, drain: Sequence[str], now: float) -> None:
        self.counts[tier] = desired


def test_a_round_without_signals_holds_and_is_recorded() -> None:
    metrics = AutoscalerMetrics()
    scaler = Autoscaler([TierTarget("chat", 1, 5, 10.0)])
    act = CountingActuator()
    (d,) = asyncio.run(decide_once(FailingSource(), scaler, act, 100.0, metrics))
    assert d.reason is Reason.HOLD_STALE_METRICS and act.counts == {"chat": 2}
    text = generate_latest(metrics.registry).decode()
    assert (
        'polyserve_autoscaler_decisions_total{reason="hold_stale_metrics",tier="chat"} 1.0' in text
    )
    assert 'polyserve_autoscaler_desired_replicas{tier="chat"} 2.0' in text


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False

"""Routers and mock engines on loopback for the fault suite, and the router-side accounting checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from polyserve.mockengine import MockEngineSettings, MockEngineThread
from polyserve.router.settings import RouterSettings
from polyserve.router.spec import BackendSpec, FleetSpec, TierSpec
from polyserve.router.testing import RouterThread
from tests.mockengine.conftest import scrape, wait_until

PROFILE = "llama-3.1-8b-h100"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TIGHT = TierSpec(name="t20", model=MODEL, tpot_ms=20, ttft_ms=2000, profile=PROFILE)
LOOSE = TierSpec(name="t100", model=MODEL, tpot_ms=100, ttft_ms=4000, profile=PROFILE)
TIERS = [TIGHT, LOOSE]
FAST = {"health_interval_s": 0.1, "scrape_interval_s": 0.1, "health_timeout_s": 0.5}


def backend(name: str, url: str, tier: str | None = "t100", **kw: Any) -> BackendSpec:
    return BackendSpec(name=name, url=url, model=MODEL, tier=tier, **kw)


@pytest.fixture
def start_engine() -> Iterator[Callable[..., MockEngineThread]]:
    """One mock engine (the shipped H100 profile) per call, on a free port; stopped at teardown."""
    started: list[MockEngineThread] = []

    def start(**settings: Any) -> MockEngineThread:
        opts: dict[str, Any] = {"port": 0, "profile": PROFILE, **settings}
        fleet = MockEngineThread(MockEngineSettings(**opts))
        fleet.start()
        started.append(fleet)
        return fleet

    yield start
    for fleet in started:
        fleet.stop()


@pytest.fixture
def start_router() -> Iterator[Callable[..., RouterThread]]:
    started: list[RouterThread] = []

    def start(fleet: FleetSpec, **settings: Any) -> RouterThread:
        opts: dict[str, Any] = {"port": 0, "auth": False, **FAST, **settings}
        r = RouterThread(RouterSettings(**opts), fleet).__enter__()
        started.append(r)
        return r

    yield start
    for r in started:
        if r.router is not None:
            r.__exit__(None, None, None)


def residents(r: RouterThread) -> int:
    return r.call(
        lambda rt: sum(b.view.n_requests for p in rt.all_pools() for b in p.backends.values())
    )


def queued(r: RouterThread) -> int:
    return r.call(lambda rt: sum(len(p.queues) for p in rt.all_pools()))


def router_outcomes(url: str) -> dict[str, float]:
    """``polyserve_router_requests_total`` summed over tiers, by outcome."""
    out: dict[str, float] = {}
    for (name, labels), v in scrape(url).items():
        if name == "polyserve_router_requests_total":
            key = dict(labels)["outcome"]
            out[key] = out.get(key, 0.0) + v
    return out


def metric_sum(url: str, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lab), v in scrape(url).items()
        if n == name and all(dict(lab).get(k) == w for k, w in labels.items())
    )


def assert_router_settled(r: RouterThread, sent: int) -> None:
    """Nothing is left on the router's books, and it counted every request exactly once."""
    wait_until(lambda: residents(r) == 0 and queued(r) == 0, 10.0, "the router's books to empty")
    counted = router_outcomes(r.url)
    assert sum(counted.values()) == sent, (sent, counted)

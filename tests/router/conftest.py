"""The router tests' fleet (a tight and a loose tier of one model) and a router starter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from polyserve.router.auth import KeyRing
from polyserve.router.settings import RouterSettings
from polyserve.router.spec import BackendSpec, FleetSpec, TierSpec
from polyserve.router.testing import RouterThread

PROFILE = "llama-3.1-8b-h100"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TIERS = [
    TierSpec(name="t20", model=MODEL, tpot_ms=20, ttft_ms=1000, profile=PROFILE),
    TierSpec(name="t100", model=MODEL, tpot_ms=100, ttft_ms=2000, profile=PROFILE),
]
FAST = {"health_interval_s": 0.1, "scrape_interval_s": 0.1}


def backend(name: str, url: str, tier: str | None = "t100", **kw: Any) -> BackendSpec:
    return BackendSpec(name=name, url=url, model=MODEL, tier=tier, **kw)


@pytest.fixture
def start_router() -> Iterator[Callable[..., RouterThread]]:
    """Start a router on a free loopback port (auth on when given keys); stopped at teardown."""
    started: list[RouterThread] = []

    def start(fleet: FleetSpec, keyring: KeyRing | None = None, **settings: Any) -> RouterThread:
        opts: dict[str, Any] = {"port": 0, "auth": keyring is not None, **FAST, **settings}
        r = RouterThread(RouterSettings(**opts), fleet, keyring).__enter__()
        started.append(r)
        return r

    yield start
    for r in started:
        r.__exit__(None, None, None)

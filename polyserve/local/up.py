"""``polyserve up``: mock engines as local processes behind an in-process router."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from polyserve.local.config import LocalConfig
from polyserve.local.processes import EngineProcess, EngineProcesses
from polyserve.profile import load_profile
from polyserve.router.server import Router
from polyserve.router.settings import RouterSettings
from polyserve.router.spec import BackendSpec, FleetSpec

log = logging.getLogger("polyserve.local")

#: The line ``polyserve up`` prints once it serves (``polyserve demo`` waits for it).
READY_PREFIX = "polyserve up: router on "


class LocalFleet:
    """The engines and the router of one ``polyserve up``; the fleet the router sees is the
    engines that are running (``sync`` after every start or stop)."""

    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg
        self.model = cfg.model or load_profile(cfg.profile).model
        self.engines = EngineProcesses(cfg.profile)
        self.router: Router | None = None
        self._serial = 0

    def fleet_spec(self) -> FleetSpec:
        backends = [
            BackendSpec(name=e.name, url=e.url, model=self.model, tier=e.tier)
            for e in self.engines.running.values()
        ]
        return FleetSpec(tiers=self.cfg.tier_specs(self.model), backends=backends)

    def sync(self) -> None:
        if self.router is not None:
            self.router.apply_fleet(self.fleet_spec())

    async def add_engine(self, tier: str) -> EngineProcess:
        self._serial += 1
        engine = await self.engines.start(f"{tier}-{self._serial}", tier)
        self.sync()
        return engine

    async def start(self) -> Router:
        await asyncio.gather(
            *(self.add_engine(t.name) for t in self.cfg.tiers for _ in range(t.replicas))
        )
        settings = RouterSettings(
            host=self.cfg.host, port=self.cfg.port, policy=self.cfg.policy, auth=False
        )
        self.router = Router(settings, self.fleet_spec())
        await self.router.start()
        return self.router

    async def close(self) -> None:
        if self.router is not None:
            await self.router.close()
        await self.engines.stop_all()


async def run_up(
    cfg: LocalConfig, stop: asyncio.Event, announce: Callable[[str], None] = print
) -> None:
    fleet = LocalFleet(cfg)
    try:
        router = await fleet.start()
        for e in fleet.engines.running.values():
            announce(f"  engine {e.name} ({e.tier}) {e.url} pid {e.proc.pid}")
        announce(f"{READY_PREFIX}{router.url} (model {fleet.model}, policy {cfg.policy})")
        announce(
            f"  try: curl -N {router.url}/v1/chat/completions -H 'x-polyserve-tier: {cfg.tiers[0].name}' "
            '-d \'{"messages":[{"role":"user","content":"hi"}],"max_tokens":20,"stream":true}\''
        )
        await stop.wait()
    finally:
        await fleet.close()
        log.info("local fleet stopped")

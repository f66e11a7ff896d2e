"""``polyserve up``: mock engines as local processes behind an in-process router."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from polyserve.autoscale.capacity import typical_capacity_rps
from polyserve.autoscale.decide import Autoscaler, TierTarget
from polyserve.autoscale.loop import decide_once
from polyserve.autoscale.settings import AutoscaleSettings
from polyserve.autoscale.signals import Observation
from polyserve.autoscale.sources import SignalError
from polyserve.autoscale.trend import StateReader
from polyserve.local.config import LocalConfig
from polyserve.local.processes import EngineProcess, EngineProcesses
from polyserve.policy.checks import step_budget_ms
from polyserve.profile import load_profile
from polyserve.router.server import Router
from polyserve.router.settings import RouterSettings
from polyserve.router.spec import BackendSpec, FleetSpec
from polyserve.router.state import router_state
from polyserve.tier_engine import derive_tier_engine

log = logging.getLogger("polyserve.local")

#: The line ``polyserve up`` prints once it serves (``polyserve demo`` waits for it).
READY_PREFIX = "polyserve up: router on "


#: Autoscaling on one machine: mock engines start in about a second, so decide often and release
#: an idle engine after a short while (a GPU cluster uses the slower defaults of the settings).
LOCAL_AUTOSCALE = AutoscaleSettings(
    decision_interval_s=2.0,
    startup_s=2.0,
    drain_after_s=15.0,
    scale_down_cooldown_s=10.0,
    trend_window_s=10.0,
)


class InProcessState:
    """The autoscaler's signal source for the local fleet: the in-process router's state."""

    def __init__(self, fleet: LocalFleet, window_s: float) -> None:
        self.fleet = fleet
        self.reader = StateReader(window_s)

    async def observe(self) -> list[Observation]:
        router = self.fleet.router
        if router is None:
            raise SignalError("the router is not running")
        return self.reader.read(router_state(router.all_pools(), router.now(), time.time()))


class LocalFleet:
    """The engines and the router of one ``polyserve up``; it is also the autoscaler's local
    actuator. The router sees the engines that are ready (``sync`` after every change); draining
    engines get no new requests and stop once the router holds none of their requests."""

    def __init__(self, cfg: LocalConfig, announce: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.announce = announce
        self.profile = load_profile(cfg.profile)
        self.model = cfg.model or self.profile.model
        # each tier's stock vLLM flags, as the operator derives them (looser tiers' requests may
        # run on any tier's engines, so they schedule by priority)
        self.tier_engines = {
            t.name: derive_tier_engine(self.profile, t.tpot_ms, t.ttft_ms, shared=True)
            for t in cfg.tiers
        }
        self.engines = EngineProcesses(cfg.profile)
        self.router: Router | None = None
        self.ready: set[str] = set()
        self.draining: set[str] = set()
        self._serial = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def fleet_spec(self) -> FleetSpec:
        backends = [
            BackendSpec(
                name=e.name,
                url=e.url,
                model=self.model,
                tier=e.tier,
                priority=self.tier_engines[e.tier].scheduling_policy == "priority",
                max_num_batched_tokens=self.tier_engines[e.tier].max_num_batched_tokens,
                max_num_seqs=self.tier_engines[e.tier].max_num_seqs,
                chunk_budget_ms=self.chunk_budget_ms(e.tier),
                draining=e.name in self.draining,
            )
            for e in self.engines.running.values()
            if e.name in self.ready
        ]
        return FleetSpec(tiers=self.cfg.tier_specs(self.model), backends=backends)

    def sync(self) -> None:
        if self.router is not None:
            self.router.apply_fleet(self.fleet_spec())

    def replicas(self, tier: str) -> int:
        """Engines of the tier running or starting, less those draining (the Actuator count)."""
        return sum(
            1
            for e in self.engines.running.values()
            if e.tier == tier and e.name not in self.draining
        )

    def scale(self, tier: str, desired: int, drain: Sequence[str], now: float) -> None:
        """The autoscaler's Actuator: start engines up to ``desired``, or drain ``drain`` first."""
        delta = desired - self.replicas(tier)
        for _ in range(max(0, delta)):
            self._spawn(self.add_engine(tier))
        for name in list(drain)[: max(0, -delta)]:
            self._spawn(self.drain(name))

    def chunk_budget_ms(self, tier: str) -> float:
        """With the ``polyserve`` engine, each engine cuts its prefill chunks to its tier's step
        budget (PolyServe's dynamic chunking, as the simulator runs it); 0 on stock vLLM."""
        if self.cfg.engine != "polyserve":
            return 0.0
        tpot = next(t.tpot_ms for t in self.cfg.tiers if t.name == tier)
        return round(step_budget_ms(tpot), 3)

    def engine_args(self, tier: str) -> tuple[str, ...]:
        """A tier's mock-engine flags: the derived vLLM flags, and the chunk budget if any."""
        args = self.tier_engines[tier].vllm_args()
        budget = self.chunk_budget_ms(tier)
        return (*args, "--chunk-budget-ms", str(budget)) if budget else tuple(args)

    async def add_engine(self, tier: str) -> EngineProcess:
        self._serial += 1
        engine = await self.engines.start(f"{tier}-{self._serial}", tier, self.engine_args(tier))
        self.ready.add(engine.name)
        self.sync()
        return engine

    async def drain(self, name: str, deadline_s: float = 300.0) -> None:
        """No new requests; stop the engine once its requests are done (or at the deadline)."""
        self.draining.add(name)
        self.sync()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and self._requests_on(name) > 0:
            await asyncio.sleep(0.5)
        self.ready.discard(name)
        self.sync()  # out of the router first, then stopped: no probe sees it die
        await self.engines.stop(name)
        self.draining.discard(name)

    def _requests_on(self, name: str) -> int:
        assert self.router is not None
        for pool in self.router.all_pools():
            b = pool.backends.get(name)
            if b is not None:
                return b.view.residents
        return 0

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as e:  # an engine that failed to start: the next decision retries
                log.warning("local actuator: %s", e)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def autoscale(self) -> None:
        """Every interval: the router's state -> the decision core -> start or drain engines."""
        targets = [
            TierTarget(t.name, t.min, t.max, typical_capacity_rps(self.profile, t.tpot_ms))
            for t in self.cfg.tiers
        ]
        scaler = Autoscaler(targets, default_settings=LOCAL_AUTOSCALE)
        source = InProcessState(self, LOCAL_AUTOSCALE.trend_window_s)
        while True:
            await asyncio.sleep(LOCAL_AUTOSCALE.decision_interval_s)
            for d in await decide_once(source, scaler, self, time.time()):
                if d.delta:
                    self.announce(
                        f"  autoscale {d.tier}: {d.replicas} -> {d.desired} ({d.reason}: {d.detail})"
                    )

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
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.router is not None:
            await self.router.close()
        await self.engines.stop_all()


async def run_up(
    cfg: LocalConfig, stop: asyncio.Event, announce: Callable[[str], None] = print
) -> None:
    fleet = LocalFleet(cfg, announce)
    try:
        router = await fleet.start()
        if cfg.autoscale:
            fleet._spawn(fleet.autoscale())
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

"""The local actuator: each replica is a ``polyserve mock-engine`` process on a loopback port.

The router learns about the processes through a :data:`BackendSink`: after every change the
actuator hands it the whole backend snapshot (``polyserve.router.spec.BackendSpec`` list, a
removed server first marked ``draining``), which ``polyserve up`` passes to the router's
``apply_fleet`` (or ``PUT /polyserve/v1/fleet``). A process is stopped once it is drained: at once
when the decision core released it (it released only servers idle for ``drain_after_s``), or when
:meth:`LocalActuator.reap` sees its backend empty in the router's state.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from polyserve.autoscale.signals import RouterState
from polyserve.devcluster.procs import ManagedProcess, free_port
from polyserve.router.spec import BackendSpec

BackendSink = Callable[[Sequence[BackendSpec]], None]


@dataclass
class _Engine:
    spec: BackendSpec
    process: ManagedProcess


class LocalActuator:
    """Mock-engine processes per tier; ``models`` maps each tier to the model it serves."""

    def __init__(
        self,
        models: Mapping[str, str],
        sink: BackendSink,
        workdir: Path,
        profile: str = "llama-3.1-8b-h100",
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
    ) -> None:
        self.models = dict(models)
        self.sink = sink
        self.workdir = workdir
        self.profile = profile
        self.extra_args = list(extra_args)
        self.python = python
        self._engines: dict[str, _Engine] = {}
        self._serial = 0

    # ---------------------------------------------------------------- Actuator

    def replicas(self, tier: str) -> int:
        return sum(1 for e in self._engines.values() if e.spec.tier == tier and not e.spec.draining)

    def scale(self, tier: str, desired: int, drain: Sequence[str], now: float) -> None:
        if tier not in self.models:
            raise ValueError(f"unknown tier {tier!r}; this fleet serves {sorted(self.models)}")
        group = [e for e in self._engines.values() if e.spec.tier == tier and not e.spec.draining]
        for _ in range(desired - len(group)):
            self._start(tier)
        surplus = len(group) - desired
        if surplus > 0:
            named = [e for n in drain for e in group if e.spec.name == n]
            rest = [e for e in reversed(group) if e not in named]  # newest first
            for e in (named + rest)[:surplus]:
                if e.spec.name in drain:
                    self._stop(e)  # released by the decision core: idle, nothing to finish
                else:
                    e.spec = e.spec.model_copy(update={"draining": True})
        self.publish()

    # ---------------------------------------------------------------- the rest

    def snapshot(self) -> list[BackendSpec]:
        return [e.spec for e in self._engines.values()]

    def publish(self) -> None:
        self.sink(self.snapshot())

    def reap(self, state: RouterState) -> list[str]:
        """Stop the draining engines that the router reports empty; returns their names."""
        empty = {b.name for b in state.backends if b.requests == 0}
        gone = [e for e in list(self._engines.values()) if e.spec.draining and e.spec.name in empty]
        for e in gone:
            self._stop(e)
        if gone:
            self.publish()
        return [e.spec.name for e in gone]

    def close(self) -> None:
        for e in list(self._engines.values()):
            self._stop(e)
        self.publish()

    def _start(self, tier: str) -> None:
        self._serial += 1
        name = f"{tier}-{self._serial}"
        port = free_port()
        argv = [
            self.python,
            "-m",
            "polyserve",
            "mock-engine",
            "--port",
            str(port),
            "--profile",
            self.profile,
            "--served-model-name",
            self.models[tier],
            *self.extra_args,
        ]
        proc = ManagedProcess(name, argv, self.workdir / f"{name}.log")
        spec = BackendSpec(
            name=name, url=f"http://127.0.0.1:{port}", model=self.models[tier], tier=tier
        )
        self._engines[name] = _Engine(spec, proc)

    def _stop(self, engine: _Engine) -> None:
        engine.process.stop(grace_s=5.0)
        self._engines.pop(engine.spec.name, None)

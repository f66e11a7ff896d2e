"""Mock-engine processes on this machine: start one on a free loopback port, wait until it is
ready, stop it (SIGTERM, then SIGKILL after a grace period). Children are tied to this process
(Linux ``PR_SET_PDEATHSIG``), so even a ``kill -9`` of the parent leaves no engine behind."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass

import aiohttp

from polyserve.devcluster.procs import exit_with_parent, free_port

HOST = "127.0.0.1"


@dataclass
class EngineProcess:
    name: str
    tier: str
    port: int
    proc: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class EngineStartError(RuntimeError):
    pass


class EngineProcesses:
    def __init__(
        self, profile: str, extra_args: tuple[str, ...] = (), start_timeout_s: float = 30.0
    ):
        self.profile = profile
        self.extra_args = extra_args
        self.start_timeout_s = start_timeout_s
        self.running: dict[str, EngineProcess] = {}

    async def start(self, name: str, tier: str, args: tuple[str, ...] = ()) -> EngineProcess:
        """Start an engine (``args``: more mock-engine flags) and return once ``/health`` is 200."""
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "polyserve",
            "mock-engine",
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        argv += ["--profile", self.profile, "--log-level", "warning", *self.extra_args, *args]
        proc = await asyncio.create_subprocess_exec(*argv, preexec_fn=exit_with_parent)
        engine = EngineProcess(name, tier, port, proc)
        self.running[name] = engine
        try:
            await self._wait_ready(engine)
        except BaseException:
            await self.stop(name)
            raise
        return engine

    async def _wait_ready(self, engine: EngineProcess) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if engine.proc.returncode is not None:
                    raise EngineStartError(
                        f"engine {engine.name} exited with {engine.proc.returncode} while starting"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        engine.url + "/health", timeout=aiohttp.ClientTimeout(total=1.0)
                    ) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise EngineStartError(
            f"engine {engine.name} did not become ready in {self.start_timeout_s:.0f} s"
        )

    async def stop(self, name: str, grace_s: float = 10.0) -> None:
        engine = self.running.pop(name, None)
        if engine is None or engine.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            engine.proc.terminate()
        try:
            await asyncio.wait_for(engine.proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                engine.proc.kill()
            await engine.proc.wait()

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(n) for n in list(self.running)))

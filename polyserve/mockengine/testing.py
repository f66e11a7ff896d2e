"""Run mock engines in a background thread (for tests and benchmarks in synchronous code).

>>> with MockEngineThread(MockEngineSettings(port=0), profile) as fleet:
...     client = openai.OpenAI(base_url=fleet.urls[0] + "/v1", api_key="x")
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from polyserve.loopthread import LoopThread
from polyserve.mockengine.server import EngineServer, MockFleet
from polyserve.mockengine.settings import MockEngineSettings
from polyserve.profile import Profile

T = TypeVar("T")


def free_port_run(n: int, tries: int = 100) -> int:
    """A loopback port p such that p..p+n-1 were all free a moment ago (for ``--replicas n``)."""
    for _ in range(tries):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + n > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for i in range(n):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no run of {n} free loopback ports found in {tries} tries")


class MockEngineThread:
    """A :class:`MockFleet` on its own event loop in a daemon thread."""

    def __init__(
        self,
        settings: MockEngineSettings,
        profile: Profile | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.profile = profile
        self.start_timeout = start_timeout
        self._loop = LoopThread("mock-engine")
        self.loop = self._loop.loop
        self.fleet: MockFleet | None = None

    def __enter__(self) -> MockEngineThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._loop.start()

        async def _start() -> MockFleet:
            fleet = MockFleet(self.settings, self.profile)
            await fleet.start()
            return fleet

        try:
            self.fleet = self._loop.run(_start(), self.start_timeout)
        except BaseException:
            self._loop.stop()
            raise

    def stop(self) -> None:
        if self.fleet is not None:
            fleet, self.fleet = self.fleet, None
            self._loop.run(fleet.close())
        self._loop.stop()

    @property
    def servers(self) -> list[EngineServer]:
        if self.fleet is None:
            raise RuntimeError("the fleet is not running")
        return self.fleet.servers

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the fleet's loop (to read or poke engine state safely)."""
        return self._loop.call(fn, timeout)

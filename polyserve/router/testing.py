"""Run a router in a background thread (tests and benchmarks in synchronous code)."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from polyserve.loopthread import LoopThread
from polyserve.router.auth import KeyRing
from polyserve.router.server import Router
from polyserve.router.settings import RouterSettings
from polyserve.router.spec import FleetSpec

T = TypeVar("T")


class RouterThread:
    def __init__(
        self, settings: RouterSettings, fleet: FleetSpec, keyring: KeyRing | None = None
    ) -> None:
        self._loop = LoopThread("router")
        self.router: Router | None = None
        self._args = (settings, fleet, keyring)

    def __enter__(self) -> RouterThread:
        self._loop.start()

        async def start() -> Router:
            r = Router(*self._args)
            await r.start()
            return r

        try:
            self.router = self._loop.run(start())
        except BaseException:
            self._loop.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.router is not None:
            self._loop.run(self.router.close())
        self._loop.stop()

    @property
    def url(self) -> str:
        assert self.router is not None
        return self.router.url

    def apply(self, fleet: FleetSpec) -> None:
        self.call(lambda r: r.apply_fleet(fleet))

    def call(self, fn: Callable[[Router], T], timeout: float = 10.0) -> T:
        """Run ``fn(router)`` on the router's loop (to read or poke its state safely)."""
        router = self.router
        assert router is not None
        return self._loop.call(lambda: fn(router), timeout)

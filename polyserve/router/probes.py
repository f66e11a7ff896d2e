"""The router's probes of its backends: health checks (``/health``) and load scrapes (``/metrics``).

A health check marks a backend healthy or not (a change may let queued requests be placed); a
scrape reads the load other clients put on a backend (``foreign`` requests and KV tokens), which
is forgotten once no page has been read for ``scrape_stale_s``. The probes have their own few
connections: sharing the proxy's pool, they would keep every pooled connection alive, so it never
shrank from its peak.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

import aiohttp

from polyserve.router.engine_metrics import foreign_load
from polyserve.router.pool import ModelPool
from polyserve.router.settings import RouterSettings
from polyserve.wire.vllm_metrics import parse_engine_load

log = logging.getLogger("polyserve.router")
PROBE_LIMIT_BYTES = 4 * 1024 * 1024  # largest /metrics page read


class Probes:
    """Probe every backend of ``pools()``; calls ``on_available()`` when one became available
    (queues may now move)."""

    def __init__(
        self,
        settings: RouterSettings,
        pools: Callable[[], list[ModelPool]],
        now: Callable[[], float],
        on_available: Callable[[], None],
    ) -> None:
        self.settings = settings
        self._pools = pools
        self._now = now
        self._on_available = on_available
        #: when each (model, backend)'s /metrics page was last read as load (the loop's clock)
        self.scraped_at: dict[tuple[str, str], float] = {}
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=2, keepalive_timeout=30.0)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _targets(self) -> list[tuple[ModelPool, str, str]]:
        return [(p, b.name, b.spec.url) for p in self._pools() for b in p.backends.values()]

    async def _get(self, url: str, timeout: float) -> tuple[int, bytes]:
        """The whole body of a probe (``content.read(n)`` would return the first chunk only: half
        a metrics page, its numbers cut); a body over the limit is a failed probe (ValueError)."""
        assert self._session is not None
        timeout_ = aiohttp.ClientTimeout(total=timeout)
        async with self._session.get(url, timeout=timeout_) as resp:
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > PROBE_LIMIT_BYTES:
                    raise ValueError(f"{url}: more than {PROBE_LIMIT_BYTES} bytes")
            return resp.status, bytes(body)

    async def check_health(self) -> None:
        targets = self._targets()

        async def probe(url: str) -> bool:
            try:
                status, _ = await self._get(url + "/health", self.settings.health_timeout_s)
            except (TimeoutError, aiohttp.ClientError, ValueError):
                return False
            return status == 200

        results = await asyncio.gather(*(probe(url) for _, _, url in targets))
        woke = False
        for (pool, name, _), ok in zip(targets, results, strict=True):
            changed = pool.backends.get(name)
            was = changed.healthy if changed else ok
            woke |= pool.set_health(name, ok)
            if changed is not None and was != ok:
                log.warning("backend %s is %s", name, "healthy again" if ok else "unhealthy")
        if woke:
            self._on_available()

    async def scrape(self) -> None:
        targets = self._targets()
        timeout = min(self.settings.scrape_interval_s, 2.0)

        async def scrape(url: str) -> str | None:
            try:
                status, body = await self._get(url + "/metrics", timeout)
            except (TimeoutError, aiohttp.ClientError, ValueError):
                return None
            return body.decode(errors="replace") if status == 200 else None

        pages = await asyncio.gather(*(scrape(url) for _, _, url in targets))
        now = self._now()
        for (pool, name, _), page in zip(targets, pages, strict=True):
            b = pool.backends.get(name)
            if b is None:
                continue
            load = parse_engine_load(page) if page is not None else None
            key = (pool.model, name)
            if load is not None:
                v = b.view
                own_kv = v.prompt_tokens + v.generated_tokens
                v.foreign_requests, v.foreign_kv_tokens = foreign_load(
                    load, v.n_requests, own_kv, v.profile.kv_cache_tokens
                )
                self.scraped_at[key] = now
            elif now - self.scraped_at.get(key, -math.inf) > self.settings.scrape_stale_s:
                b.view.foreign_requests = b.view.foreign_kv_tokens = 0

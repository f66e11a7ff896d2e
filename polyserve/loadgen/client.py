"""Send a planned load to an OpenAI-compatible endpoint and time every token at the client.

Each request is sent at its planned time (open loop: a slow server does not slow the arrivals),
streamed, and judged by the deadline SLO of its tier on the token times the client saw. The run is
bounded: every request has a client-side timeout, and the run ends at ``deadline_s`` whatever is
still in flight (those requests are reported as ``timeout``, never dropped from the count).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from polyserve.autoscale.signals import STATE_PATH, RouterState
from polyserve.loadgen.plan import Planned, prompt_text
from polyserve.slo import check_deadlines
from polyserve.wire.openai import SSEDecoder


@dataclass
class Result:
    planned: Planned
    sent: float = 0.0  # seconds from the start
    status: int = 0  # HTTP status (0: no answer)
    outcome: str = "pending"  # ok | rejected (429) | error | timeout
    token_times: list[float] = field(default_factory=list)  # seconds from the start
    backend: str | None = None
    error: str | None = None
    attained: bool = False

    @property
    def ttft_ms(self) -> float | None:
        return (self.token_times[0] - self.sent) * 1000.0 if self.token_times else None

    @property
    def tpot_ms(self) -> float | None:
        t = self.token_times
        return (t[-1] - t[0]) * 1000.0 / (len(t) - 1) if len(t) > 1 else None


@dataclass
class Sample:
    """The endpoint's state at one moment (from a PolyServe router's ``/polyserve/v1/state``)."""

    time: float
    pending: dict[str, int]
    backends: dict[str, int]  # tier -> ready backends


@dataclass
class Run:
    results: list[Result]
    samples: list[Sample]
    wall_s: float


class LoadClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        request_timeout_s: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.request_timeout_s = request_timeout_s

    def _headers(self, tier: str | None = None) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        if tier is not None:
            h["x-polyserve-tier"] = tier
        return h

    async def run(
        self,
        planned: list[Planned],
        deadline_s: float,
        on_update: Callable[[list[Result], list[Sample], float], None] | None = None,
    ) -> Run:
        results = [Result(p) for p in planned]
        samples: list[Sample] = []
        t0 = time.monotonic()
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            tasks = [asyncio.ensure_future(self._one(session, r, t0)) for r in results]
            sampler = asyncio.ensure_future(self._sample(session, samples, t0))
            done_all = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))
            try:
                while not done_all.done():
                    elapsed = time.monotonic() - t0
                    if elapsed > deadline_s:
                        break
                    if on_update is not None:
                        on_update(results, samples, elapsed)
                    await asyncio.wait([done_all], timeout=0.25)
            finally:
                for t in [*tasks, sampler]:
                    t.cancel()
                await asyncio.gather(*tasks, sampler, return_exceptions=True)
                done_all.cancel()
        for r in results:
            if r.outcome == "pending":
                r.outcome, r.error = "timeout", "the run ended before the request did"
        if on_update is not None:
            on_update(results, samples, time.monotonic() - t0)
        return Run(results, samples, time.monotonic() - t0)

    async def _one(self, session: aiohttp.ClientSession, r: Result, t0: float) -> None:
        p = r.planned
        await asyncio.sleep(max(0.0, t0 + p.time - time.monotonic()))
        body = {
            "model": self.model,
            "prompt": prompt_text(p.prompt_tokens, p.index),
            "max_tokens": p.output_tokens,
            "ignore_eos": True,
            "stream": True,
        }
        r.sent = time.monotonic() - t0
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        try:
            async with session.post(
                self.base_url + "/v1/completions",
                data=json.dumps(body),
                headers=self._headers(p.tier.name),
                timeout=timeout,
            ) as resp:
                r.status = resp.status
                r.backend = resp.headers.get("X-PolyServe-Backend")
                if resp.status != 200:
                    text = (await resp.read()).decode(errors="replace")
                    r.outcome = "rejected" if resp.status == 429 else "error"
                    r.error = _error_message(text, resp.status)
                    return
                await self._read_stream(resp, r, t0)
        except asyncio.CancelledError:
            raise
        except (TimeoutError, aiohttp.ClientError) as e:
            r.outcome, r.error = "error", f"{type(e).__name__}: {e}"

    async def _read_stream(self, resp: aiohttp.ClientResponse, r: Result, t0: float) -> None:
        decoder = SSEDecoder()
        done = False
        async for data in resp.content.iter_any():
            now = time.monotonic() - t0
            for payload in decoder.feed(data):
                if payload.strip() == "[DONE]":
                    done = True
                    continue
                obj: Any = json.loads(payload)
                if "error" in obj:
                    r.error = _error_message(payload, 502)
                    continue
                for choice in obj.get("choices") or ():
                    if choice.get("text"):
                        r.token_times.append(now)
        p = r.planned
        complete = done and r.error is None and len(r.token_times) == p.output_tokens
        r.outcome = "ok" if complete else "error"
        if not complete and r.error is None:
            r.error = f"stream ended after {len(r.token_times)} of {p.output_tokens} tokens"
        verdict = check_deadlines(r.sent, r.token_times, p.tier.ttft_ms, p.tier.tpot_ms)
        r.attained = complete and verdict.attained

    async def _sample(self, session: aiohttp.ClientSession, out: list[Sample], t0: float) -> None:
        """Poll the router's state once a second (skipped quietly for endpoints without it)."""
        url = self.base_url + STATE_PATH
        while True:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                    if resp.status == 404:
                        return
                    if resp.status == 200:
                        state = RouterState.model_validate(await resp.json())
                        backends: dict[str, int] = {}
                        for b in state.backends:
                            if b.ready and not b.draining and b.tier:
                                backends[b.tier] = backends.get(b.tier, 0) + 1
                        pending = {t.name: t.pending for t in state.tiers}
                        out.append(Sample(time.monotonic() - t0, pending, backends))
            except (TimeoutError, aiohttp.ClientError, ValueError):  # a bad state: skip it
                pass
            await asyncio.sleep(1.0)


def _error_message(text: str, status: int) -> str:
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {text[:200]}"


async def fetch_tiers(
    base_url: str, api_key: str | None, model: str | None
) -> tuple[str, list[dict[str, Any]]]:
    """The model to load and its tiers, from a PolyServe router's ``/v1/models``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            base_url.rstrip("/") + "/v1/models",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=10.0),
        ) as resp,
    ):
        if resp.status != 200:
            raise ConnectionError(f"{base_url}/v1/models answered {resp.status}")
        data = (await resp.json())["data"]
    if not data:
        raise ConnectionError(f"{base_url} serves no model")
    chosen = next((m for m in data if m["id"] == model), None) if model else data[0]
    if chosen is None:
        raise ConnectionError(
            f"{base_url} does not serve {model!r}; it serves {[m['id'] for m in data]}"
        )
    return str(chosen["id"]), list(chosen.get("tiers") or [])

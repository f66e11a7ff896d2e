"""Strict request accounting for fault tests: send a mix, classify every answer, list what broke.

Every request a client sends to the router must end in exactly one outcome the client can act on:

- ``complete``: a whole JSON answer with ``choices`` and ``usage``, or a stream whose last chunk
  carries a ``finish_reason`` and that ends with ``data: [DONE]``;
- ``error``: a 4xx/5xx with an OpenAI-shaped body ``{"error": {"message": ...}}`` and no stack
  trace, or a stream that carries such an error event;
- ``rejected``: a 429 with a ``Retry-After`` header (and an OpenAI-shaped body).

Anything else is an ``anomaly`` with the reason: the client timed out (a hang), the connection
dropped without an error event, the stream stopped without ``[DONE]``, an error body that is not
JSON, a 429 without Retry-After, a traceback in a body. :meth:`Tally.check` fails listing them.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from polyserve.wire.openai import SSEDecoder

Kind = Literal["complete", "error", "rejected", "anomaly"]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass(frozen=True)
class Req:
    index: int
    path: str
    stream: bool
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        tier = self.headers.get("x-polyserve-tier", "default")
        return f"#{self.index} {self.path} stream={self.stream} tier={tier}"


@dataclass(frozen=True)
class Outcome:
    req: Req
    kind: Kind
    detail: str  # what was seen: "200 whole", "stream error event: ...", "timeout after 20 s"
    status: int | None = None
    backend: str | None = None  # X-PolyServe-Backend, where the router placed it
    tokens: int = 0  # output events (stream) or usage.completion_tokens (whole)


def mix(
    n: int,
    model: str,
    tiers: tuple[str, ...] = ("t100",),
    max_tokens: tuple[int, int] = (4, 24),
    seed: int = 0,
    ignore_eos: bool = True,
) -> list[Req]:
    """``n`` requests alternating chat/completions and streamed/whole, spread over ``tiers``."""
    rng = random.Random(seed)
    out: list[Req] = []
    for i in range(n):
        path = CHAT if i % 2 == 0 else COMPLETIONS
        stream = (i // 2) % 2 == 0
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": rng.randint(*max_tokens),
            "stream": stream,
            "ignore_eos": ignore_eos,
        }
        words = " ".join(f"w{rng.randint(0, 999)}" for _ in range(rng.randint(4, 40)))
        if path == CHAT:
            body["messages"] = [{"role": "user", "content": words}]
        else:
            body["prompt"] = words
        out.append(Req(i, path, stream, body, {"x-polyserve-tier": tiers[i % len(tiers)]}))
    return out


def _error_body(status: int, text: str) -> tuple[bool, str]:
    """Whether a non-200 body is an OpenAI-shaped error without a traceback; and why not."""
    if "Traceback" in text or 'File "' in text:
        return False, f"{status} with a stack trace: {text[:200]!r}"
    try:
        obj = json.loads(text)
    except ValueError:
        return False, f"{status} with a non-JSON body: {text[:200]!r}"
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
        return False, f"{status} with a body that is not an OpenAI error: {text[:200]!r}"
    return True, f"{status}: {err['message'][:120]}"


def _classify_whole(req: Req, status: int, text: str, backend: str | None) -> Outcome:
    if status == 200:
        try:
            obj = json.loads(text)
        except ValueError:
            return Outcome(req, "anomaly", f"200 with a non-JSON body: {text[:200]!r}", status)
        choices = obj.get("choices") if isinstance(obj, dict) else None
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not choices or not isinstance(usage, dict):
            return Outcome(req, "anomaly", f"200 without choices/usage: {text[:200]!r}", status)
        tokens = int(usage.get("completion_tokens") or 0)
        return Outcome(req, "complete", "200 whole", status, backend, tokens)
    return _classify_error(req, status, text, None, backend)


def _classify_error(
    req: Req, status: int, text: str, retry_after: str | None, backend: str | None
) -> Outcome:
    ok, why = _error_body(status, text)
    if not ok:
        return Outcome(req, "anomaly", why, status, backend)
    if status == 429:
        if retry_after is None or not retry_after.strip().isdigit():
            return Outcome(req, "anomaly", f"429 without a Retry-After: {why}", status, backend)
        return Outcome(req, "rejected", why, status, backend)
    if status < 400:
        return Outcome(req, "anomaly", f"unexpected status {why}", status, backend)
    return Outcome(req, "error", why, status, backend)


@dataclass
class _StreamState:
    tokens: int = 0
    finished: bool = False  # a chunk with a finish_reason came
    done: bool = False  # data: [DONE] came
    error: str | None = None
    junk: str | None = None  # an event that is not JSON

    def feed(self, decoder: SSEDecoder, data: bytes) -> None:
        for payload in decoder.feed(data):
            if payload.strip() == "[DONE]":
                self.done = True
                continue
            try:
                obj = json.loads(payload)
            except ValueError:
                self.junk = self.junk or payload[:200]
                continue
            if not isinstance(obj, dict):
                self.junk = self.junk or payload[:200]
            elif "error" in obj:
                err = obj["error"]
                ok = isinstance(err, dict) and isinstance(err.get("message"), str)
                self.error = err["message"] if ok else f"malformed error event {payload[:200]!r}"
                if not ok:
                    self.junk = self.junk or payload[:200]
            else:
                for choice in obj.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if choice.get("text") or delta.get("content"):
                        self.tokens += 1
                    if choice.get("finish_reason"):
                        self.finished = True

    def outcome(self, req: Req, backend: str | None, cut: str | None) -> Outcome:
        if self.junk is not None:
            return Outcome(req, "anomaly", f"stream with a non-JSON event {self.junk!r}", 200)
        if self.error is not None:  # an error event tells the client how it ended
            return Outcome(req, "error", f"stream error event: {self.error[:120]}", 200, backend)
        if cut is not None:
            return Outcome(req, "anomaly", f"stream cut without an error event ({cut})", 200)
        if not self.done:
            return Outcome(req, "anomaly", "stream ended without [DONE] or an error event", 200)
        if not self.finished:
            return Outcome(req, "anomaly", "[DONE] without a final chunk", 200)
        return Outcome(req, "complete", "200 stream", 200, backend, self.tokens)


async def send_one(
    session: aiohttp.ClientSession, base: str, req: Req, timeout_s: float
) -> Outcome:
    """Send ``req`` and classify what came back; never raises (a failure is an outcome)."""
    state = _StreamState()
    backend: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(base + req.path, json=req.body, headers=req.headers) as resp:
                backend = resp.headers.get("X-PolyServe-Backend")
                if resp.status != 200:
                    text = (await resp.read()).decode(errors="replace")
                    return _classify_error(
                        req, resp.status, text, resp.headers.get("Retry-After"), backend
                    )
                if not req.stream:
                    text = (await resp.read()).decode(errors="replace")
                    return _classify_whole(req, resp.status, text, backend)
                decoder = SSEDecoder()
                try:
                    async for chunk in resp.content.iter_any():
                        state.feed(decoder, chunk)
                except (aiohttp.ClientError, ConnectionError) as e:
                    return state.outcome(req, backend, type(e).__name__)
                return state.outcome(req, backend, None)
    except TimeoutError:
        return Outcome(req, "anomaly", f"no end within the client timeout ({timeout_s} s)")
    except (aiohttp.ClientError, ConnectionError) as e:
        return Outcome(req, "anomaly", f"connection failed without an answer: {e!r}"[:300])


@dataclass
class Tally:
    sent: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    def counts(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)

    def of(self, kind: Kind) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == kind]

    def anomalies(self) -> list[str]:
        return [f"{o.req.describe()}: {o.detail}" for o in self.of("anomaly")]

    def check(self) -> None:
        """Every request sent ended in exactly one accepted outcome; fail listing the others."""
        counts = self.counts()
        problems = self.anomalies()
        if self.sent != len(self.outcomes) or self.sent != sum(counts.values()):
            problems.insert(0, f"sent {self.sent}, outcomes {len(self.outcomes)}: {dict(counts)}")
        if len({o.req.index for o in self.outcomes}) != len(self.outcomes):
            problems.insert(0, "a request has more than one outcome")
        assert not problems, f"{len(problems)} of {self.sent} requests broke the accounting:\n" + (
            "\n".join(problems[:40])
        )

    def summary(self) -> str:
        c = self.counts()
        return (
            f"sent {self.sent}: complete {c['complete']}, error {c['error']}, "
            f"rejected {c['rejected']}, anomaly {c['anomaly']} in {self.wall_s:.1f} s"
        )


async def send_all(
    base: str,
    reqs: list[Req],
    concurrency: int = 8,
    timeout_s: float = 20.0,
    during: Callable[[], Awaitable[None]] | None = None,
) -> Tally:
    """Send ``reqs`` with at most ``concurrency`` in flight; ``during`` runs alongside (a fault)."""
    tally = Tally()
    sem = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(req: Req) -> None:
            async with sem:
                tally.sent += 1
                tally.outcomes.append(await send_one(session, base, req, timeout_s))

        tasks = [asyncio.ensure_future(one(r)) for r in reqs]
        side = asyncio.ensure_future(during()) if during is not None else None
        try:
            await asyncio.gather(*tasks)
            if side is not None:
                await asyncio.wait_for(side, timeout_s)
        finally:
            for t in [*tasks, *([side] if side else [])]:
                t.cancel()
    tally.wall_s = time.monotonic() - t0
    return tally


def run(
    base: str,
    reqs: list[Req],
    concurrency: int = 8,
    timeout_s: float = 20.0,
    during: Callable[[], Awaitable[None]] | None = None,
) -> Tally:
    """:func:`send_all` from synchronous code."""
    return asyncio.run(send_all(base, reqs, concurrency, timeout_s, during))


async def wait_for(
    cond: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.02
) -> None:
    """Wait (asynchronously) until ``cond()``; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(every_s)

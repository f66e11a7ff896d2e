"""One attempt to serve a placed request on its backend: forward, pass the answer through, count.

``forward`` returns either the client's response (streamed or whole) with its outcome, or a
``retry_reason`` when the backend failed before the client saw a byte: the router then tries
another backend. What a backend's answer means (:func:`answer_kind`, from vLLM's own error
mapping, ``vllm/entrypoints/serve/exception_handling``):

- any status below 500, and 500 or 501: the request's own answer, passed through to the client;
  the backend stays healthy. vLLM answers 500 for one request's failed generation (a
  ``finish_reason`` of ``error``, a KV-transfer failure) or an unexpected exception in its
  handling, and 501 for a feature the model or server does not implement. A dead engine also
  answers 500, but its ``/health`` then answers 503 (or the process exits): the health checks
  take it out, not one request's answer.
- 503: the engine refused to admit the request (its request or prefill-token queue is full,
  generation is paused for a weight update): vLLM means "retry on a different instance". The
  router retries it elsewhere and holds the backend out of placement until its next passing
  health check, without marking it unhealthy; when every attempt meets a busy backend the
  client gets a 503 with ``Retry-After``.
- any other 5xx (502, 504: vLLM never sends them; a proxy in front of the engine does when it
  cannot reach it), a connection refused or reset, a timeout or an empty stream before the first
  byte: the backend is marked unhealthy and the request retried.

Once bytes have reached the client, a backend failure ends the stream with an OpenAI-shaped error
event (``data: {"error": ...}``) and ``[DONE]``: the client always learns how its request ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import web

from polyserve.router.metrics import RouterMetrics
from polyserve.router.pool import ModelPool, Ticket
from polyserve.router.stream import StreamTally
from polyserve.slo import check_deadlines, token_deadline
from polyserve.wire import openai as proto

_BACKEND_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)


@dataclass(frozen=True)
class Upstream:
    """What forwarding needs of the router: its session to the backends and their timeouts, its
    clock and metrics, the backend answers being read (the router cuts them when it closes) and
    whether it is closing (a cut stream then ends with a 503, not a backend error)."""

    session: aiohttp.ClientSession
    timeout: aiohttp.ClientTimeout
    metrics: RouterMetrics
    now: Callable[[], float]
    closing: Callable[[], bool]
    inflight: set[aiohttp.ClientResponse]


@dataclass
class Attempt:
    upstream: Upstream
    pool: ModelPool
    ticket: Ticket
    request: web.Request
    payload: dict[str, Any]
    stream: bool


@dataclass
class Result:
    response: web.StreamResponse | None = None
    outcome: str = "ok"
    retry_reason: str | None = None
    #: with a retry_reason: the backend refused as busy (a 503), it is not down
    busy: bool = False


AnswerKind = Literal["answer", "busy", "down"]


def answer_kind(status: int) -> AnswerKind:
    """What a backend's HTTP status says (the rule is in the module doc): the request's own
    ``answer``, a ``busy`` backend to retry elsewhere, or a backend that is ``down``."""
    if status < 500 or status in (500, 501):
        return "answer"
    return "busy" if status == 503 else "down"


BACKEND_HEADER = "X-PolyServe-Backend"
TIER_HEADER = "X-PolyServe-Tier"


def _served_by(a: Attempt) -> dict[str, str]:
    """Response headers naming where the request ran (for clients' reports and debugging)."""
    return {BACKEND_HEADER: a.ticket.backend or "", TIER_HEADER: a.ticket.tier.name}


def backend_body(client_body: dict[str, Any], priority: int | None) -> dict[str, Any]:
    """What a backend is sent: the client's body with ``priority`` owned by the router. It is the
    tier index (vLLM runs lower values first; tier 0 is the tightest) for backends running
    ``--scheduling-policy priority`` (``priority`` not None), and absent elsewhere (vLLM refuses
    it there), whatever the client asked."""
    out = {k: v for k, v in client_body.items() if k != "priority"}
    if priority is not None:
        out["priority"] = priority
    return out


def _error_event(message: str, status: int = 502) -> bytes:
    return proto.sse_event(proto.error_payload(message, status)) + proto.SSE_DONE


async def forward(a: Attempt) -> Result:
    up, pool, ticket = a.upstream, a.pool, a.ticket
    backend = pool.backends[ticket.backend or ""]
    body = backend_body(a.payload, ticket.pending.tier if backend.spec.priority else None)
    headers = {"Content-Type": "application/json", proto.REQUEST_ID_HEADER: ticket.rid}
    if backend.spec.api_key is not None:  # the client's Authorization was for the router
        headers["Authorization"] = f"Bearer {backend.spec.api_key.get_secret_value()}"
    try:
        resp = await up.session.post(
            backend.spec.url + a.request.path,
            data=proto.dumps(body),
            headers=headers,
            timeout=up.timeout,
        )
    except _BACKEND_FAILURES as e:
        return Result(retry_reason=f"connect: {type(e).__name__}")
    timer = _virtual_first_token(a) if not a.stream else None
    completed = False
    up.inflight.add(resp)
    try:
        kind = answer_kind(resp.status)
        if kind != "answer":
            return Result(retry_reason=f"status {resp.status}", busy=kind == "busy")
        if resp.status != 200:
            data = await resp.read()
            completed = True
            response = web.Response(
                body=data,
                status=resp.status,
                content_type=resp.content_type or "application/json",
                headers=_served_by(a),
            )
            return Result(response, "client_error" if resp.status < 500 else "backend_error")
        result = await (_stream(a, resp) if a.stream else _whole(a, resp))
        completed = result.outcome == "ok"
        return result
    finally:
        up.inflight.discard(resp)
        if timer is not None:
            timer.cancel()
        if completed:
            resp.release()
        else:
            resp.close()  # abort: the engine stops generating for a client that is gone


def _virtual_first_token(a: Attempt) -> asyncio.TimerHandle:
    """A whole (non-streamed) answer shows no first token: assume it at the predicted time, so
    the backend's prefill backlog does not look stuck until the answer arrives."""
    placement = a.ticket.placement
    predicted = placement.ttft_pred_ms if placement is not None else math.nan
    delay = (predicted if math.isfinite(predicted) else a.ticket.pending.ideal_ttft_ms) / 1000.0
    ticket, pool = a.ticket, a.pool
    return asyncio.get_running_loop().call_later(delay, pool.on_first_token, ticket)


async def _whole(a: Attempt, resp: aiohttp.ClientResponse) -> Result:
    try:
        data = await resp.read()
    except _BACKEND_FAILURES as e:
        return Result(retry_reason=f"read: {type(e).__name__}")
    tokens = 0
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        tokens = int(json.loads(data)["usage"]["completion_tokens"])
    now = a.upstream.now()
    a.pool.on_first_token(a.ticket)
    a.pool.on_tokens(a.ticket, tokens)
    p = a.ticket.pending
    # only the whole answer's time is known: judged by the deadline of its last token
    deadline = token_deadline(p.arrival, p.ttft_ms, p.tpot_ms, max(0, tokens - 1))
    _judge(a, attained=tokens > 0 and now <= deadline)
    a.ticket.delivered = True
    response = web.Response(
        body=data, status=200, content_type="application/json", headers=_served_by(a)
    )
    return Result(response, "ok")


async def _stream(a: Attempt, resp: aiohttp.ClientResponse) -> Result:
    up, pool, ticket = a.upstream, a.pool, a.ticket
    chunks = resp.content.iter_any()
    try:
        chunk = await chunks.__anext__()
    except StopAsyncIteration:
        return Result(retry_reason="empty stream")
    except _BACKEND_FAILURES as e:
        return Result(retry_reason=f"read: {type(e).__name__}")
    out = web.StreamResponse(
        headers={
            "Content-Type": resp.headers.get("Content-Type", proto.SSE_CONTENT_TYPE),
            "Cache-Control": "no-cache",
            proto.REQUEST_ID_HEADER: ticket.rid,
            **_served_by(a),
        }
    )
    await out.prepare(a.request)
    tally = StreamTally()
    times: list[float] = []
    outcome = "ok"
    while True:
        n = tally.feed(chunk)
        if n:
            now = up.now()
            pool.on_first_token(ticket)
            pool.on_tokens(ticket, n)
            times.extend([now] * n)
        try:
            await out.write(chunk)
        except _CLIENT_GONE:
            return Result(out, "cancelled")
        if tally.done:  # [DONE] is through: the client may hang up before the backend's EOF
            break
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            break
        except _BACKEND_FAILURES as e:
            if up.closing():  # close() cut the backend connection: the router is going away
                outcome, reason, status = "unavailable", "The router is shutting down.", 503
            else:
                outcome, status = "backend_error", 502
                reason = f"the backend failed mid-stream ({type(e).__name__})"
            with contextlib.suppress(*_CLIENT_GONE):
                await out.write(_error_event(reason, status))
            break
    if outcome == "ok" and (tally.error is not None or not tally.done):
        outcome = "backend_error"
        if not tally.done:
            with contextlib.suppress(*_CLIENT_GONE):
                await out.write(_error_event("the backend closed the stream before it ended"))
    if outcome == "ok":
        _judge_stream(a, times)
        ticket.delivered = True
    with contextlib.suppress(*_CLIENT_GONE):
        await out.write_eof()
    return Result(out, outcome)


def _judge_stream(a: Attempt, times: list[float]) -> None:
    p = a.ticket.pending
    labels = (a.pool.model, a.ticket.tier.name)
    m = a.upstream.metrics
    if times:
        m.ttft.labels(*labels).observe(times[0] - p.arrival)
        if len(times) > 1:
            m.tpot.labels(*labels).observe((times[-1] - times[0]) / (len(times) - 1))
    verdict = check_deadlines(p.arrival, times, p.ttft_ms, p.tpot_ms)
    _judge(a, attained=bool(times) and verdict.attained)


def _judge(a: Attempt, attained: bool) -> None:
    # the pool's count is the one count: the state and the Prometheus counters read it
    a.pool.judged(a.ticket.tier.name, attained)

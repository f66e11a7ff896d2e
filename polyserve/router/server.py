"""The router's HTTP server: OpenAI-compatible endpoints over the pools, and the background loops.

Every request ends in exactly one answer the client sees: the backend's response (streamed or
whole), an OpenAI-shaped error (4xx/5xx), an error event in the stream, or a 429 with Retry-After.
The decisions are in :mod:`polyserve.router.pool` (and ``polyserve.policy``); this module does
I/O: it reads requests, waits for placements, forwards, counts tokens, and keeps backends' health
and metrics current.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from polyserve.autoscale.signals import STATE_PATH, RouterState
from polyserve.profile import ProfileError, load_profile
from polyserve.router.auth import ANONYMOUS, Entitlement, KeyRing, TierChoiceError, resolve_tier
from polyserve.router.engine_metrics import foreign_load
from polyserve.router.metrics import RouterMetrics
from polyserve.router.openapi import openapi_document
from polyserve.router.pool import ModelPool, Ticket
from polyserve.router.proxy import Attempt, Upstream, forward
from polyserve.router.settings import RouterSettings
from polyserve.router.spec import FleetSpec, TierSpec
from polyserve.router.state import router_state
from polyserve.wire import openai as proto
from polyserve.wire import tokenizer
from polyserve.wire.vllm_metrics import parse_engine_load

log = logging.getLogger("polyserve.router")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Kind = Literal["chat", "completion"]
FleetSource = AsyncIterator[FleetSpec]
ADMIN_PREFIX = "/polyserve/v1"


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=proto.dumps(obj), status=status, content_type="application/json", headers=headers
    )


#: Why a ticket was never placed -> (status, message, outcome).
UNPLACED: dict[str, tuple[int, str, str]] = {
    "deadline": (429, "The request's first-token deadline can no longer be met.", "rejected"),
    "no_backend": (503, "No backend is available for the request's tier.", "unavailable"),
    "tier_removed": (503, "The request's tier was removed.", "unavailable"),
    "model_removed": (503, "The model is no longer served.", "unavailable"),
    "shutdown": (503, "The router is shutting down.", "unavailable"),
    "queue_timeout": (
        503,
        "No backend took the request in time (router queue timeout).",
        "unavailable",
    ),
}
PROBE_LIMIT_BYTES = 4 * 1024 * 1024  # largest /metrics page read


#: a JSON string escape that may be a lone UTF-16 surrogate (a cheap test before the full one)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _not_json(constant: str) -> Any:
    """``NaN`` and ``Infinity`` are Python's JSON extensions, not JSON: refused."""
    raise ValueError(f"{constant} is not JSON")


class Refused(Exception):
    """A request answered with an error before any backend produced output."""

    def __init__(
        self, status: int, message: str, outcome: str, param: str | None = None, retry: bool = False
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.outcome, self.param, self.retry = (
            status,
            message,
            outcome,
            param,
            retry,
        )


def _prompt_text(parsed: BaseModel) -> str:
    """The prompt as text, for ``log_prompts`` only (off by default: prompts are user data)."""
    if isinstance(parsed, proto.ChatCompletionRequest):
        return "\n".join(f"{role}: {text}" for role, text in parsed.message_texts())
    prompt = getattr(parsed, "prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


class Router:
    def __init__(
        self,
        settings: RouterSettings,
        fleet: FleetSpec,
        keyring: KeyRing | None = None,
        source: FleetSource | None = None,
    ) -> None:
        if settings.auth and keyring is None:
            raise ValueError("auth is on but no API keys were given (a key file, or auth off)")
        self.settings = settings
        self.keyring = keyring
        self.source = source
        self.pools: dict[str, ModelPool] = {}
        self.retired: list[ModelPool] = []  # models no longer served, finishing their requests
        self.metrics = RouterMetrics(self.all_pools, self.now)
        self._waiters: dict[Ticket, asyncio.Future[None]] = {}
        self._scraped_at: dict[tuple[str, str], float] = {}
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._upstream: Upstream | None = None  # proxied requests (made by start())
        # Health checks and scrapes have their own few connections: sharing the proxy's pool,
        # they would keep every pooled connection alive, so it never shrank from its peak.
        self._probe_session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.closing = False  # set by close(): in-flight requests end with a 503 / error event
        self.inflight: set[aiohttp.ClientResponse] = set()  # backend answers being read
        self.port = settings.port
        self.apply_fleet(fleet)

    # ---------------------------------------------------------------- state

    @staticmethod
    def now() -> float:
        return time.monotonic()  # the event loop's clock

    def all_pools(self) -> list[ModelPool]:
        return [*self.pools.values(), *self.retired]

    def apply_fleet(self, spec: FleetSpec) -> None:
        """Reconcile to a discovery snapshot (tiers and backends); answers what can no longer wait.

        A tier naming a profile that cannot be loaded raises ProfileError before anything changes.
        """
        for t in spec.tiers:
            load_profile(t.profile)
        now = self.now()
        by_model: dict[str, list[TierSpec]] = {}
        for t in spec.tiers:
            by_model.setdefault(t.model, []).append(t)
        for model, tiers in by_model.items():
            backends = [b for b in spec.backends if b.model == model]
            pool = self.pools.get(model)
            if pool is None:
                pool = ModelPool(
                    model, tiers, self.settings.policy, output_prior=self.settings.output_prior
                )
                self.pools[model] = pool
            else:
                for ticket in pool.set_tiers(tiers):
                    self._settle(ticket, "tier_removed")
            pool.set_backends(backends, now)
        for model in [m for m in self.pools if m not in by_model]:
            pool = self.pools.pop(model)
            for ticket in pool.take_queued():
                self._settle(ticket, "model_removed")
            pool.set_backends([], now)
            self.retired.append(pool)
        self.retired = [p for p in self.retired if p.backends]
        self._kick()

    def _settle(self, ticket: Ticket, reason: str) -> None:
        ticket.state = "rejected"
        ticket.reason = reason
        self._wake(ticket)

    def _wake(self, ticket: Ticket) -> None:
        """The ticket was settled (placed or refused): its handler goes on."""
        fut = self._waiters.get(ticket)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _kick(self, pool: ModelPool | None = None, tier: int | None = None) -> None:
        """Place what can be placed, wake the waiters, and re-arm the deadline timer."""
        now = self.now()
        for p in [pool] if pool is not None else list(self.pools.values()):
            for ticket in p.dispatch(now, tier):
                self._wake(ticket)
            for ticket in p.expire(now, self.settings.queue_timeout_s):
                self._settle(ticket, "queue_timeout")
        self._arm_deadline_timer(now)

    def _arm_deadline_timer(self, now: float) -> None:
        wait = self.settings.queue_timeout_s
        soonest = min((p.next_deadline(now, wait) for p in self.pools.values()), default=math.inf)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if math.isfinite(soonest):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # not serving yet: the first request re-arms it
            self._deadline_timer = loop.call_at(max(soonest, now) + 0.001, self._kick)

    # ---------------------------------------------------------------- lifecycle

    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._middleware], client_max_size=self.settings.max_body_bytes
        )
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get(STATE_PATH, self._state)
        app.router.add_put(f"{ADMIN_PREFIX}/fleet", self._put_fleet)
        return app

    async def start(self) -> None:
        settings = self.settings
        self._upstream = Upstream(
            session=aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0),
                auto_decompress=False,
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=settings.connect_timeout_s,
                sock_read=settings.read_timeout_s,
            ),
            metrics=self.metrics,
            now=self.now,
            closing=lambda: self.closing,
            inflight=self.inflight,
        )
        self._probe_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=2, keepalive_timeout=30.0)
        )
        self._runner = web.AppRunner(
            self.make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._tasks = [
            asyncio.ensure_future(self._every(self.settings.health_interval_s, self._check_health)),
            asyncio.ensure_future(self._every(self.settings.scrape_interval_s, self._scrape)),
        ]
        if self.source is not None:
            self._tasks.append(asyncio.ensure_future(self._follow(self.source)))
        log.info(
            "router on http://%s:%d: policy %s, models %s, auth %s",
            self.settings.host,
            self.port,
            self.settings.policy,
            ", ".join(self.pools) or "none yet",
            "on" if self.settings.auth else "off",
        )

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def close(self) -> None:
        """Stop: queued requests get 503, in-flight ones a 503 or an error event in their stream
        (their backend connections are cut first), then the listener closes."""
        self.closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        for pool in self.all_pools():
            for ticket in pool.take_queued():
                self._settle(ticket, "shutdown")
        for resp in list(self.inflight):  # closing the session alone leaves their reads waiting
            resp.content.set_exception(aiohttp.ClientConnectionError("the router is shutting down"))
        proxy_session = self._upstream.session if self._upstream is not None else None
        for session in (proxy_session, self._probe_session):
            if session is not None:
                await session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _every(self, interval: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await fn()
            except Exception:  # a probe round must never end the loop
                log.exception("background round failed")
            await asyncio.sleep(interval)

    async def _follow(self, source: FleetSource) -> None:
        """Apply each discovered fleet; one that cannot be applied is logged and the last stays."""
        try:
            async for spec in source:
                try:
                    self.apply_fleet(spec)
                except ValueError as exc:  # ProfileError included: nothing was changed
                    log.error("discovered fleet not applied, keeping the last one: %s", exc)
        except Exception:
            log.exception("fleet discovery stopped; serving the last fleet it gave")

    # ---------------------------------------------------------------- probes

    def _probe_targets(self) -> list[tuple[ModelPool, str, str]]:
        return [(p, b.name, b.spec.url) for p in self.all_pools() for b in p.backends.values()]

    async def _get(self, url: str, timeout: float) -> tuple[int, bytes]:
        """The whole body of a probe (``content.read(n)`` would return the first chunk only: half
        a metrics page, its numbers cut); a body over the limit is a failed probe (ValueError)."""
        assert self._probe_session is not None
        timeout_ = aiohttp.ClientTimeout(total=timeout)
        async with self._probe_session.get(url, timeout=timeout_) as resp:
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > PROBE_LIMIT_BYTES:
                    raise ValueError(f"{url}: more than {PROBE_LIMIT_BYTES} bytes")
            return resp.status, bytes(body)

    async def _check_health(self) -> None:
        targets = self._probe_targets()

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
            was = changed.view.healthy if changed else ok
            woke |= pool.set_health(name, ok)
            if changed is not None and was != ok:
                log.warning("backend %s is %s", name, "healthy again" if ok else "unhealthy")
        if woke:
            self._kick()

    async def _scrape(self) -> None:
        targets = self._probe_targets()
        timeout = min(self.settings.scrape_interval_s, 2.0)

        async def scrape(url: str) -> str | None:
            try:
                status, body = await self._get(url + "/metrics", timeout)
            except (TimeoutError, aiohttp.ClientError, ValueError):
                return None
            return body.decode(errors="replace") if status == 200 else None

        pages = await asyncio.gather(*(scrape(url) for _, _, url in targets))
        now = self.now()
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
                self._scraped_at[key] = now
            elif now - self._scraped_at.get(key, -math.inf) > self.settings.scrape_stale_s:
                b.view.foreign_requests = b.view.foreign_kv_tokens = 0

    # ---------------------------------------------------------------- middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refused as r:
            return self._refusal(r)
        except web.HTTPException as exc:
            status = exc.status
            if status < 400:
                raise
            msg = exc.reason
            if status == 413:
                msg = f"Request body too large (limit {self.settings.max_body_bytes} bytes)."
            allow = exc.headers.get("Allow")  # a 405 names the methods the path takes
            return _json(
                proto.error_payload(msg, status), status, {"Allow": allow} if allow else None
            )
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return _json(proto.error_payload("Internal server error.", 500), 500)

    def _refusal(self, r: Refused) -> web.Response:
        headers = {"Retry-After": str(self.settings.retry_after_s)} if r.retry else None
        return _json(proto.error_payload(r.message, r.status, r.param), r.status, headers)

    # ---------------------------------------------------------------- simple routes

    async def _health(self, request: web.Request) -> web.Response:
        available = sum(b.view.available for p in self.pools.values() for b in p.backends.values())
        return _json({"status": "ok", "available_backends": available})

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {
                "id": model,
                "object": "model",
                "owned_by": "polyserve",
                "tiers": [
                    {"name": t.name, "tpot_ms": t.tpot_ms, "ttft_ms": t.ttft_ms}
                    for t in pool.tier_specs
                ],
            }
            for model, pool in self.pools.items()
        ]
        return _json({"object": "list", "data": data})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    async def _state(self, request: web.Request) -> web.Response:
        state: RouterState = router_state(self.all_pools(), self.now(), time.time())
        return _json(state.model_dump(mode="json"))

    async def _put_fleet(self, request: web.Request) -> web.Response:
        token = self.settings.admin_token
        if token is None:
            raise Refused(404, "The admin API is off (start the router with an admin token).", "")
        got = request.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            raise Refused(401, "Invalid admin token.", "")
        body = await self._read_json(request)
        try:
            spec = FleetSpec.model_validate(body, strict=True)  # as typed in the OpenAPI document
            self.apply_fleet(spec)
        except ValidationError as e:
            raise Refused(400, proto.validation_message(e), "") from None
        except ProfileError as e:
            raise Refused(400, str(e), "", "profile") from None
        return _json({"status": "ok", "tiers": len(spec.tiers), "backends": len(spec.backends)})

    # ---------------------------------------------------------------- generation

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            # strict UTF-8: json.loads(bytes) would let UTF-8-encoded surrogates through
            body = json.loads(raw.decode(), parse_constant=_not_json)
            if _SURROGATE_ESCAPE.search(raw):  # a lone surrogate cannot be answered or sent:
                proto.dumps(body)  # UnicodeEncodeError
        except ValueError:
            msg = "The request body is not valid JSON (UTF-8, no NaN or Infinity, no lone surrogates)."
            raise Refused(400, msg, "client_error") from None
        except RecursionError:
            raise Refused(400, "The request body is nested too deeply.", "client_error") from None
        if not isinstance(body, dict):
            raise Refused(400, "The request body must be a JSON object.", "client_error")
        return body

    def _entitlement(self, request: web.Request) -> Entitlement:
        if not self.settings.auth:
            return ANONYMOUS
        assert self.keyring is not None
        return self.keyring.authenticate(request.headers.get("Authorization"))

    async def _generate(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        body = await self._read_json(request)
        schema: type[BaseModel] = (
            proto.ChatCompletionRequest if kind == "chat" else proto.CompletionRequest
        )
        try:
            parsed = schema.model_validate(body, strict=True)  # as typed in the OpenAPI document
        except ValidationError as e:
            raise Refused(400, proto.validation_message(e), "client_error") from None
        assert isinstance(parsed, proto.SamplingFields)
        model = parsed.model
        if model is None:
            if len(self.pools) != 1:
                raise Refused(400, "`model` is required.", "client_error", "model")
            model = next(iter(self.pools))
        pool = self.pools.get(model)
        if pool is None:
            raise Refused(404, proto.model_not_found_message(model), "client_error", "model")
        try:
            choice = resolve_tier(
                self._entitlement(request), model, pool.tier_specs, request.headers
            )
        except TierChoiceError as e:
            raise Refused(e.status, e.message, "client_error", e.param) from None
        max_tokens = parsed.requested_max_tokens()
        if max_tokens is not None and max_tokens < 1:
            raise Refused(
                400,
                f"max_tokens must be at least 1, got {max_tokens}.",
                "client_error",
                "max_tokens",
            )
        if parsed.n not in (None, 1):
            raise Refused(
                400, "The router serves one choice per request (n=1).", "client_error", "n"
            )
        prompt_tokens = self._prompt_tokens(parsed)
        rid = request.headers.get(proto.REQUEST_ID_HEADER) or proto.random_request_id()
        now = self.now()
        ticket = pool.new_ticket(rid, choice.tier, choice.ttft_ms, prompt_tokens, max_tokens, now)
        if self.settings.log_prompts:
            ticket.prompt = _prompt_text(parsed)
        stream = bool(parsed.stream)
        outcome = "client_error"
        try:
            if self.closing:
                raise Refused(*UNPLACED["shutdown"])
            if len(pool.queues) >= self.settings.queue_limit:
                raise Refused(
                    429, "The router's queue is full; retry later.", "queue_full", retry=True
                )
            if self._upstream is None:
                raise RuntimeError("the router serves requests only after start()")
            attempt = Attempt(self._upstream, pool, ticket, request, body, stream)
            while True:
                await self._place(pool, ticket)
                if self.closing:
                    raise Refused(*UNPLACED["shutdown"])
                result = await forward(attempt)
                if result.response is not None:
                    outcome = result.outcome
                    return result.response
                if self.closing:  # the router cut its backend connections itself
                    raise Refused(*UNPLACED["shutdown"])
                reason = (result.retry_reason or "unknown").split(":")[0]
                self.metrics.retries.labels(model, ticket.backend or "", reason).inc()
                pool.set_health(ticket.backend or "", False)
                pool.release(ticket, self.now(), completed=False)
                if ticket.attempts >= self.settings.max_attempts:
                    raise Refused(
                        502,
                        f"Every backend tried ({ticket.attempts}) failed before answering: "
                        f"{result.retry_reason}.",
                        "backend_error",
                    )
                pool.enqueue(ticket, self.now(), front=True)
        except Refused as r:
            outcome = r.outcome or outcome
            raise
        except asyncio.CancelledError:  # the client hung up
            outcome = "ok" if ticket.delivered else "cancelled"
            raise
        finally:
            self._finish(pool, ticket, outcome)

    def _prompt_tokens(self, parsed: BaseModel) -> int:
        if isinstance(parsed, proto.ChatCompletionRequest):
            return tokenizer.chat_prompt_tokens(
                parsed.message_texts(), parsed.add_generation_prompt
            )
        assert isinstance(parsed, proto.CompletionRequest)
        try:
            prompt = parsed.single_prompt()
        except proto.ApiError as e:
            raise Refused(400, e.message, "client_error", e.param) from None
        if isinstance(prompt, str):
            return tokenizer.completion_prompt_tokens(prompt, parsed.add_special_tokens)
        return len(prompt)

    async def _place(self, pool: ModelPool, ticket: Ticket) -> None:
        """Queue the ticket and wait until the policy places it (or it is refused)."""
        if ticket.state != "queued":
            pool.enqueue(ticket, self.now())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = fut
        try:
            self._kick(pool, ticket.pending.tier)
            await fut
        finally:
            self._waiters.pop(ticket, None)
        if ticket.state == "placed":
            tier = pool.tier_specs[ticket.pending.tier].name
            wait = self.now() - ticket.queued_at
            self.metrics.queue_wait.labels(pool.model, tier).observe(wait)
            placement = ticket.placement
            if placement is not None and placement.promoted:
                host = pool.backends[ticket.backend or ""].spec.tier or ""
                self.metrics.promotions.labels(pool.model, tier, host).inc()
            return
        reason = ticket.reason or "deadline"
        if reason == "deadline" and not pool.fleet.available():  # the pool counted it as shed
            reason = "no_backend"
        status, msg, outcome = UNPLACED[reason]
        raise Refused(status, msg, outcome, retry=status == 429)

    def _finish(self, pool: ModelPool, ticket: Ticket, outcome: str) -> None:
        now = self.now()
        if ticket.state == "queued":
            pool.cancel(ticket)
        elif ticket.state == "placed":
            pool.release(ticket, now, completed=outcome == "ok")
        self.metrics.requests.labels(pool.model, ticket.tier.name, outcome).inc()
        self._kick(pool)
        fields: dict[str, Any] = {
            "rid": ticket.rid,
            "model": pool.model,
            "tier": ticket.tier.name,
            "backend": ticket.backend,
            "attempts": ticket.attempts,
            "outcome": outcome,
            "prompt_tokens": ticket.pending.prompt_tokens,
            "output_tokens": ticket.generated,
            "ms": round((now - ticket.pending.arrival) * 1000.0, 1),
        }
        if ticket.placement is not None and ticket.placement.promoted:
            fields["promoted"] = True
        if self.settings.log_prompts and ticket.prompt is not None:
            fields["prompt"] = ticket.prompt[:2000]
        log.info("request", extra={"fields": fields})

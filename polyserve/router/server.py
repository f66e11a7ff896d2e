"""The router's HTTP server: OpenAI-compatible endpoints over the pools, and the background loops.

Every request ends in exactly one answer the client sees: the backend's response (streamed or
whole), an OpenAI-shaped error (4xx/5xx), an error event in the stream, or a 429 with Retry-After.
The decisions are in :mod:`polyserve.router.pool` (and ``polyserve.policy``); this module does
I/O: it applies fleets, serves the routes and runs the generation flow (read, wait for a
placement, forward, retry, log). Around it: :mod:`~polyserve.router.requests` reads and checks a
request, :mod:`~polyserve.router.dispatcher` waits for placements, :mod:`~polyserve.router.proxy`
forwards, and :mod:`~polyserve.router.probes` keeps backends' health and load current.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from polyserve.autoscale.signals import STATE_PATH, RouterState
from polyserve.profile import ProfileError, load_profile
from polyserve.router.auth import ANONYMOUS, Entitlement, KeyRing, TierChoiceError, resolve_tier
from polyserve.router.dispatcher import Dispatcher
from polyserve.router.metrics import RouterMetrics
from polyserve.router.openapi import openapi_document
from polyserve.router.pool import ModelPool, Ticket
from polyserve.router.probes import Probes
from polyserve.router.proxy import Attempt, Upstream, forward
from polyserve.router.requests import (
    UNPLACED,
    Kind,
    Refused,
    checked_max_tokens,
    json_response,
    parse_generation,
    prompt_text,
    prompt_tokens,
    read_json,
)
from polyserve.router.settings import RouterSettings
from polyserve.router.spec import FleetSpec, TierSpec
from polyserve.router.state import router_state
from polyserve.slo import SLOError, Tier, TierSet
from polyserve.wire import openai as proto

log = logging.getLogger("polyserve.router")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FleetSource = AsyncIterator[FleetSpec]
ADMIN_PREFIX = "/polyserve/v1"


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
        self.dispatcher = Dispatcher(
            settings, lambda: list(self.pools.values()), self.now, self.metrics
        )
        self.probes = Probes(settings, self.all_pools, self.now, self.dispatcher.kick)
        self._tasks: list[asyncio.Task[None]] = []
        self._upstream: Upstream | None = None  # proxied requests (made by start())
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

        A tier naming a profile that cannot be loaded raises ProfileError, and a model's tiers that
        are no tier set (two of one TPOT) SLOError, before anything changes.
        """
        for t in spec.tiers:
            load_profile(t.profile)
        now = self.now()
        by_model: dict[str, list[TierSpec]] = {}
        for t in spec.tiers:
            by_model.setdefault(t.model, []).append(t)
        for tiers in by_model.values():
            TierSet(Tier(t.name, t.tpot_ms, t.ttft_ms) for t in tiers)
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
                    self.dispatcher.settle(ticket, "tier_removed")
            pool.set_backends(backends, now)
        for model in [m for m in self.pools if m not in by_model]:
            pool = self.pools.pop(model)
            for ticket in pool.take_queued():
                self.dispatcher.settle(ticket, "model_removed")
            pool.set_backends([], now)
            self.retired.append(pool)
        self.retired = [p for p in self.retired if p.backends]
        self.dispatcher.kick()

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
        self.probes.open()
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
            asyncio.ensure_future(
                self._every(settings.health_interval_s, self.probes.check_health)
            ),
            asyncio.ensure_future(self._every(settings.scrape_interval_s, self.probes.scrape)),
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
        self.dispatcher.stop()
        for pool in self.all_pools():
            for ticket in pool.take_queued():
                self.dispatcher.settle(ticket, "shutdown")
        for resp in list(self.inflight):  # closing the session alone leaves their reads waiting
            resp.content.set_exception(aiohttp.ClientConnectionError("the router is shutting down"))
        if self._upstream is not None:
            await self._upstream.session.close()
        await self.probes.close()
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
            return json_response(
                proto.error_payload(msg, status), status, {"Allow": allow} if allow else None
            )
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return json_response(proto.error_payload("Internal server error.", 500), 500)

    def _refusal(self, r: Refused) -> web.Response:
        headers = {"Retry-After": str(self.settings.retry_after_s)} if r.retry else None
        return json_response(proto.error_payload(r.message, r.status, r.param), r.status, headers)

    # ---------------------------------------------------------------- simple routes

    async def _health(self, request: web.Request) -> web.Response:
        available = sum(b.view.available for p in self.pools.values() for b in p.backends.values())
        return json_response({"status": "ok", "available_backends": available})

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
        return json_response({"object": "list", "data": data})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _openapi(self, request: web.Request) -> web.Response:
        return json_response(openapi_document())

    async def _state(self, request: web.Request) -> web.Response:
        state: RouterState = router_state(self.all_pools(), self.now(), time.time())
        return json_response(state.model_dump(mode="json"))

    async def _put_fleet(self, request: web.Request) -> web.Response:
        token = self.settings.admin_token
        if token is None:
            raise Refused(404, "The admin API is off (start the router with an admin token).", "")
        got = request.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            raise Refused(401, "Invalid admin token.", "")
        body = await read_json(request)
        try:
            spec = FleetSpec.model_validate(body, strict=True)  # as typed in the OpenAPI document
            self.apply_fleet(spec)
        except ValidationError as e:
            raise Refused(400, proto.validation_message(e), "") from None
        except ProfileError as e:
            raise Refused(400, str(e), "", "profile") from None
        except SLOError as e:
            raise Refused(400, str(e), "", "tiers") from None
        return json_response(
            {"status": "ok", "tiers": len(spec.tiers), "backends": len(spec.backends)}
        )

    # ---------------------------------------------------------------- generation

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    def _entitlement(self, request: web.Request) -> Entitlement:
        if not self.settings.auth:
            return ANONYMOUS
        assert self.keyring is not None
        return self.keyring.authenticate(request.headers.get("Authorization"))

    async def _generate(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        body = await read_json(request)
        parsed = parse_generation(body, kind)
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
        max_tokens = checked_max_tokens(parsed)
        n_prompt = prompt_tokens(parsed)
        rid = request.headers.get(proto.REQUEST_ID_HEADER) or proto.random_request_id()
        now = self.now()
        ticket = pool.new_ticket(rid, choice.tier, choice.ttft_ms, n_prompt, max_tokens, now)
        if self.settings.log_prompts:
            ticket.prompt = prompt_text(parsed)
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
                await self.dispatcher.place(pool, ticket)
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
                if result.busy:
                    pool.set_busy(ticket.backend or "")
                else:
                    pool.set_health(ticket.backend or "", False)
                pool.release(ticket, self.now(), completed=False)
                if ticket.attempts >= self.settings.max_attempts and result.busy:
                    raise Refused(
                        503,
                        f"Every backend tried ({ticket.attempts}) was busy "
                        f"({result.retry_reason}); retry later.",
                        "unavailable",
                        retry=True,
                    )
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

    def _finish(self, pool: ModelPool, ticket: Ticket, outcome: str) -> None:
        now = self.now()
        if ticket.state == "queued":
            pool.cancel(ticket)
        elif ticket.state == "placed":
            pool.release(ticket, now, completed=outcome == "ok")
        self.metrics.requests.labels(pool.model, ticket.tier.name, outcome).inc()
        self.dispatcher.kick(pool)
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

"""The aiohttp server of one mock engine, and a fleet of them on one event loop.

Routes (as vLLM's OpenAI server): ``GET /health``, ``GET|POST /ping``, ``GET /v1/models``,
``POST /tokenize``, ``GET /metrics``, ``POST /v1/completions``, ``POST /v1/chat/completions``.
With ``--enable-request-id-headers`` every response carries ``X-Request-Id`` (the client's, or a
new one), as vLLM's XRequestIdMiddleware (serve/middleware/register.py:38). Errors are
OpenAI-shaped JSON; an unexpected exception is logged here and answered as a 500 without a
traceback. With ``--api-key`` (or ``VLLM_API_KEY``) ``/v1/*`` answers 401 without the key, as vLLM's
AuthenticationMiddleware. With ``--data-parallel-size N`` one server fronts N engines, each request going to
the least loaded (:func:`~polyserve.mockengine.runner.dp_engine_choice`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web
from pydantic import ValidationError

from polyserve.engine import Engine, EngineError
from polyserve.mockengine import textgen
from polyserve.mockengine.metrics import ServerMetrics
from polyserve.mockengine.runner import (
    EngineDeadError,
    EngineLoad,
    EngineRunner,
    TokenStream,
    dp_engine_choice,
)
from polyserve.mockengine.settings import MockEngineSettings
from polyserve.profile import Profile, load_profile
from polyserve.wire import openai as proto
from polyserve.wire import tokenizer

log = logging.getLogger("polyserve.mockengine")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Kind = Literal["chat", "completion"]
REQUEST_ID = web.RequestKey("request_id", str)
#: vLLM's per-request headers (generate/base/serving.py:42 and :216-228): a priority that
#: overrides the body's, and a data-parallel rank that pins the engine
PRIORITY_HEADER = "X-Vllm-Priority"
DP_RANK_HEADER = "X-data-parallel-rank"

#: What ``--metrics-garbage`` serves: binary noise and lines that look like the load gauges but
#: do not parse (no value, NaN, negative, a broken label set), and no valid sample at all.
GARBAGE_METRICS = (
    bytes(range(256)) * 64
    + b"\nvllm:num_requests_running\n"
    + b'vllm:num_requests_running{model_name="x" NaN\n'
    + b"vllm:num_requests_waiting -5\n"
    + b'vllm:kv_cache_usage_perc{engine="0"} inf\n'
    + b'vllm:num_requests_running{engine="0"} not-a-number\n'
    + b"<html><body>502 Bad Gateway</body></html>\n"
)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=proto.dumps(obj), status=status, content_type=proto.JSON_CONTENT_TYPE)


#: the paths vLLM's ``--api-key`` guards (serve/middleware/authenticate.py: GUARDED_PREFIX)
GUARDED_PREFIX = ("/v1", "/v2", "/inference", "/cohere")


def authorized(authorization: str | None, key_digest: bytes) -> bool:
    """vLLM's check: ``Bearer <key>`` (any case of the scheme), compared as SHA-256 digests."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), key_digest)


def _listen(host: str, port: int) -> socket.socket:
    """A bound, non-blocking TCP socket (raises OSError with a clear message)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise OSError(f"cannot resolve host {host!r}: {err}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


class EngineServer:
    """One engine: its Engine model, step loop, metrics registry and HTTP site."""

    def __init__(self, settings: MockEngineSettings, profile: Profile, index: int = 0) -> None:
        self.settings = settings
        self.profile = profile
        self.index = index
        self.config = settings.engine_config(profile)
        self.model_name = settings.served_model_name or profile.model
        self.metrics = ServerMetrics(self.model_name, self.config.max_model_len)
        self.runners = [self._engine_runner(i) for i in range(settings.data_parallel_size)]
        # engine 0, for what reads a single-engine server's state
        self.runner = self.runners[0]
        self.engine = self.runner.engine
        self._dp_start = 0  # where the next least-loaded scan starts (ties rotate)
        self.port = settings.port_of(index)
        self.crashed = False
        self.dead = asyncio.Event()
        self.requests_received = 0
        self._created = int(time.time())
        self._ready_at = 0.0
        self._app_runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._crash_timer: asyncio.TimerHandle | None = None
        self._closing = asyncio.Event()  # set on close: ends what --metrics-hang holds open

    def _engine_runner(self, index: int) -> EngineRunner:
        engine = Engine(self.profile, self.config, record_timeline=False)
        metrics = self.metrics.engine(
            str(index),
            num_running=lambda: engine.num_running,
            num_waiting=lambda: engine.num_waiting,
            kv_usage=lambda: engine.kv_usage,
        )
        return EngineRunner(engine, metrics, slowdown=self.settings.slowdown)

    @property
    def engine_dead(self) -> bool:
        """An engine has stopped: vLLM's server is then dead as a whole (EngineDeadError)."""
        return any(r.dead for r in self.runners)

    # ------------------------------------------------------------------ lifecycle

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024**2)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ping", self._health)
        app.router.add_post("/ping", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready_at = loop.time() + self.settings.startup_delay
        for runner in self.runners:
            runner.start()
        self._app_runner = web.AppRunner(
            self.make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._app_runner.setup()
        if not self.settings.refuse_connections:
            sock = _listen(self.settings.host, self.port)
            self.port = sock.getsockname()[1]
            self._site = web.SockSite(self._app_runner, sock)
            await self._site.start()
        if self.settings.crash_at is not None:
            self._crash_timer = loop.call_later(self.settings.crash_at, self.crash, "--crash-at")
        log.info(
            "engine %d: %s on %s:%d (profile %s, max_model_len %d, KV %d tokens)%s",
            self.index,
            self.model_name,
            self.settings.host,
            self.port,
            self.profile.name,
            self.config.max_model_len,
            self.config.num_blocks * self.config.block_size,
            " [refusing connections]" if self.settings.refuse_connections else "",
        )

    @property
    def ready(self) -> bool:
        return asyncio.get_running_loop().time() >= self._ready_at

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def crash(self, why: str = "crash") -> None:
        """Die abruptly: the listening socket closes, every connection is cut, streams fail."""
        if self.crashed:
            return
        self.crashed = True
        log.warning("engine %d on port %d: crashing (%s)", self.index, self.port, why)
        for runner in self.runners:
            runner.kill()
        if self._site is not None:
            site, self._site = self._site, None
            self._spawn(site.stop())
        server = self._app_runner.server if self._app_runner is not None else None
        if server is not None:
            for conn in server.connections:
                if conn.transport is not None:
                    conn.transport.abort()
        self.dead.set()

    async def close(self) -> None:
        """Shut down (in-flight streams are cut)."""
        if self._crash_timer is not None:
            self._crash_timer.cancel()
        self._closing.set()
        for i, runner in enumerate(self.runners):
            log.info("engine %d.%d: %s", self.index, i, runner.lateness.summary())
            await runner.stop()
        if self._app_runner is not None:
            await self._app_runner.cleanup()
            self._app_runner = None
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.crashed:
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        key = self.settings.api_key
        if (
            key is not None
            and request.method != "OPTIONS"
            and request.path.startswith(GUARDED_PREFIX)
            and not authorized(
                request.headers.get("Authorization"),
                hashlib.sha256(key.get_secret_value().encode()).digest(),
            )
        ):
            return _json({"error": "Unauthorized"}, 401)  # vLLM's body, not OpenAI-shaped
        # the client's id names the response (chatcmpl-<id>) whether or not it is echoed
        # (serve/engine/serving.py:133-142)
        request[REQUEST_ID] = request.headers.get(proto.REQUEST_ID_HEADER) or ""
        try:
            resp = await handler(request)
        except proto.ApiError as err:
            resp = _json(err.payload(), err.status)
        except web.HTTPException as exc:
            # unknown route or method: FastAPI's plain detail body, as vLLM answers
            resp = _json({"detail": exc.reason}, exc.status)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception(
                "engine %d: unexpected error on %s %s", self.index, request.method, request.path
            )
            resp = _json(proto.error_payload("Internal server error", 500), 500)
        if not resp.prepared:
            self._add_request_id(request, resp)
        return resp

    def _add_request_id(self, request: web.Request, resp: web.StreamResponse) -> None:
        """vLLM's middleware: the client's X-Request-Id, or a fresh uuid4 (not the response's
        id: serve/middleware/x_request_id.py:28-33)."""
        if self.settings.enable_request_id_headers:
            resp.headers[proto.REQUEST_ID_HEADER] = request[REQUEST_ID] or proto.random_request_id()

    # ------------------------------------------------------------------ simple routes

    async def _health(self, request: web.Request) -> web.Response:
        if not self.ready or self.engine_dead:
            return web.Response(status=503)
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        return _json(
            proto.models_response(
                self.model_name, self.profile.model, self.config.max_model_len, self._created
            )
        )

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body, content_type = self.metrics.exposition(request.headers.get("Accept"))
        if self.settings.metrics_garbage:
            return web.Response(body=GARBAGE_METRICS, headers={"Content-Type": content_type})
        if self.settings.metrics_hang:  # a wedged exporter: a partial page, then silence
            resp = web.StreamResponse(headers={"Content-Type": content_type})
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            await self._closing.wait()
            return resp
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await self._parse(request, proto.TokenizeRequest)
        self._check_model(body.model)
        if body.messages is not None:
            texts = [(m.role, m.text()) for m in body.messages]
            strs = tokenizer.chat_pieces(texts, body.add_generation_prompt)
            if body.add_special_tokens:
                strs = [tokenizer.BOS, *strs]
        elif body.prompt is not None:
            add = True if body.add_special_tokens is None else body.add_special_tokens
            strs = tokenizer.completion_pieces(body.prompt, add)
        else:
            raise proto.ApiError("Either `prompt` or `messages` must be given.")
        return _json(
            {
                "count": len(strs),
                "max_model_len": self.config.max_model_len,
                "tokens": tokenizer.encode(strs),
                "token_strs": strs if body.return_token_strs else None,
            }
        )

    # ------------------------------------------------------------------ generation

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _parse(self, request: web.Request, model: type[proto.M]) -> proto.M:
        """The body as FastAPI reads it for vLLM: a JSON media type, JSON, then the schema."""
        if not proto.is_json_media_type(request.headers.get("Content-Type")):
            raise proto.request_validation_error([proto.MEDIA_TYPE_MESSAGE])
        raw = await request.read()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise proto.json_decode_error(err) from None
        except UnicodeDecodeError as err:
            raise proto.json_decode_error(json.JSONDecodeError(str(err), "", 0)) from None
        try:
            return model.model_validate(data)
        except ValidationError as err:
            raise proto.body_validation_error(err) from None

    def _check_model(self, model: str | None) -> None:
        if model and model != self.model_name:
            message = proto.model_not_found_message(model, [self.model_name])
            raise proto.ApiError(message, 404, param="model")

    async def _generate(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        self.requests_received += 1
        limit = self.settings.crash_after_requests
        if limit is not None and self.requests_received > limit:
            self.crash(f"--crash-after-requests {limit}")
            raise web.HTTPServiceUnavailable()
        body: proto.CompletionRequest | proto.ChatCompletionRequest
        if kind == "chat":
            body = await self._parse(request, proto.ChatCompletionRequest)
        else:
            body = await self._parse(request, proto.CompletionRequest)
        body.check_stream_options()
        self._check_model(body.model)
        if not self.ready:
            raise proto.ApiError("The engine is starting up.", 503)
        if self.engine_dead:
            raise proto.ApiError("The engine is dead.", 503)

        text_prompt = True  # tokenized here (False: token ids)
        if isinstance(body, proto.ChatCompletionRequest):
            texts = body.message_texts()
            prompt_text = "\n".join(f"{role}: {text}" for role, text in texts)
            prompt_tokens = tokenizer.chat_prompt_tokens(texts, body.add_generation_prompt)
        else:
            prompt = body.single_prompt()
            if isinstance(prompt, str):
                prompt_text = prompt
                prompt_tokens = tokenizer.completion_prompt_tokens(prompt, body.add_special_tokens)
            else:
                prompt_text = " ".join(map(str, prompt))
                prompt_tokens = len(prompt)
                text_prompt = False
        max_len = self.config.max_model_len
        requested = body.requested_max_tokens()
        error = proto.context_error(
            max_len, prompt_tokens, requested, body.max_tokens_param(), text_prompt
        )
        if error is not None:
            raise error
        default = requested if requested is not None else body.default_max_tokens
        max_tokens = proto.clamped_max_tokens(max_len, prompt_tokens, default)
        body.check_sampling(max_tokens)
        # vLLM 0.33.0 hands the priority to a FCFS scheduler, whose queue ignores it
        # (v1/core/sched/request_queue.py): no error, no effect; the header overrides the body
        priority = _int_header(request, PRIORITY_HEADER)
        if priority is None:
            priority = body.priority
        if self.config.scheduling_policy == "fcfs":
            priority = 0  # the engine model refuses what vLLM's FCFS queue only ignores
        runner = self._pick_runner(_int_header(request, DP_RANK_HEADER))
        seed = textgen.seed_of(prompt_text, body.seed)
        plan = textgen.plan_output(seed, max_tokens, body.min_tokens, body.ignore_eos)
        try:
            stream = runner.submit(prompt_tokens, plan, priority, max_tokens)
        except EngineError as err:
            raise proto.ApiError(str(err)) from None
        except EngineDeadError:
            raise proto.ApiError("The engine is dead.", 503) from None
        request_id = request[REQUEST_ID] or body.client_request_id() or proto.random_request_id()
        rid = proto.response_id(kind, request_id)
        try:
            if body.stream:
                return await self._stream(request, kind, body, rid, seed, stream)
            await stream.wait_finished()
            text = textgen.full_text(seed, plan)
            build = proto.chat_response if kind == "chat" else proto.completion_response
            return _json(
                build(
                    rid,
                    self.model_name,
                    int(time.time()),
                    text,
                    plan.finish_reason,
                    prompt_tokens,
                    plan.tokens,
                )
            )
        except EngineDeadError:
            raise proto.ApiError("The engine stopped while serving the request.", 500) from None
        finally:
            if not stream.finished:
                runner.abort(stream)

    async def _stream(
        self,
        request: web.Request,
        kind: Kind,
        body: proto.SamplingFields,
        rid: str,
        seed: int,
        stream: TokenStream,
    ) -> web.StreamResponse:
        plan = stream.plan
        n = plan.tokens
        enc = proto.StreamEncoder(
            kind,
            rid,
            self.model_name,
            int(time.time()),
            stream.req.prompt_tokens,
            body.continuous_usage,
        )
        resp = web.StreamResponse(
            headers={"Content-Type": proto.SSE_CONTENT_TYPE + "; charset=utf-8"}
        )
        self._add_request_id(request, resp)
        await resp.prepare(request)
        include_usage = body.include_usage
        token_text = textgen.token_text
        sent = 0
        try:
            while sent < n:
                upto = await stream.wait_beyond(sent)
                parts: list[bytes] = []
                if sent == 0 and kind == "chat":
                    parts.append(enc.role())  # vLLM sends the role with the first output
                for i in range(sent, min(upto, n - 1)):
                    parts.append(enc.token(token_text(seed, i, plan), i + 1))
                if upto >= n:
                    parts.append(enc.final(token_text(seed, n - 1, plan), plan.finish_reason, n))
                    if include_usage:
                        parts.append(enc.usage(n))
                    parts.append(proto.SSE_DONE)
                sent = upto
                await resp.write(b"".join(parts))
            await resp.write_eof()
        except EngineDeadError:
            # the engine died mid-stream: cut the connection as a crashed server would
            if request.transport is not None:
                request.transport.abort()
        except ConnectionResetError:
            pass  # the client went away; the caller aborts the request
        return resp

    def _pick_runner(self, rank: int | None) -> EngineRunner:
        """The engine of a request: the rank a header pins, else the least loaded (as vLLM's
        DP load balancer scores engines); raises a 400 for a rank out of range."""
        n = len(self.runners)
        if rank is not None:
            if not 0 <= rank < n:
                # v1/engine/input_processor.py:392-400
                raise proto.vllm_error(f"data_parallel_rank {rank} is out of range [0, {n}).")
            return self.runners[rank]
        if n == 1:
            return self.runner
        loads = [
            EngineLoad(r.engine.num_waiting, r.engine.num_running, r.engine.kv_usage, r.in_flight)
            for r in self.runners
        ]
        index = dp_engine_choice(loads, self._dp_start)
        self._dp_start = (self._dp_start + 1) % n
        return self.runners[index]


def _int_header(request: web.Request, name: str) -> int | None:
    """An integer header; absent or not an integer: None (vLLM then ignores it)."""
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class MockFleet:
    """``replicas`` engines on consecutive ports, all on the running event loop."""

    def __init__(self, settings: MockEngineSettings, profile: Profile | None = None) -> None:
        self.settings = settings
        self.profile = profile if profile is not None else load_profile(settings.profile)
        settings.engine_config(self.profile)  # validate before binding anything
        self.servers = [EngineServer(settings, self.profile, i) for i in range(settings.replicas)]

    async def start(self) -> None:
        try:
            for server in self.servers:
                await server.start()
        except BaseException:
            await self.close()
            raise

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    async def wait_all_dead(self) -> None:
        await asyncio.gather(*(s.dead.wait() for s in self.servers))

    async def close(self) -> None:
        for server in self.servers:
            await server.close()


async def serve(
    settings: MockEngineSettings,
    profile: Profile | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run a fleet until ``stop`` is set (0) or every engine has crashed (1)."""
    fleet = MockFleet(settings, profile)
    await fleet.start()
    stop = stop or asyncio.Event()
    waits = [
        asyncio.ensure_future(stop.wait()),
        asyncio.ensure_future(fleet.wait_all_dead()),
    ]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return 0 if waits[0] in done else 1
    finally:
        for w in waits:
            w.cancel()
        await fleet.close()

"""The router tests' fleet (a tight and a loose tier of one model) and a router starter."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from polyserve.router.auth import KeyRing
from polyserve.router.settings import RouterSettings
from polyserve.router.spec import BackendSpec, FleetSpec, TierSpec
from polyserve.router.testing import RouterThread

PROFILE = "llama-3.1-8b-h100"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TIERS = [
    TierSpec(name="t20", model=MODEL, tpot_ms=20, ttft_ms=1000, profile=PROFILE),
    TierSpec(name="t100", model=MODEL, tpot_ms=100, ttft_ms=2000, profile=PROFILE),
]
FAST = {"health_interval_s": 0.1, "scrape_interval_s": 0.1}


def backend(name: str, url: str, tier: str | None = "t100", **kw: Any) -> BackendSpec:
    return BackendSpec(name=name, url=url, model=MODEL, tier=tier, **kw)


@pytest.fixture
def start_router() -> Iterator[Callable[..., RouterThread]]:
    """Start a router on a free loopback port (auth on when given keys); stopped at teardown."""
    started: list[RouterThread] = []

    def start(fleet: FleetSpec, keyring: KeyRing | None = None, **settings: Any) -> RouterThread:
        opts: dict[str, Any] = {"port": 0, "auth": keyring is not None, **FAST, **settings}
        r = RouterThread(RouterSettings(**opts), fleet, keyring).__enter__()
        started.append(r)
        return r

    yield start
    for r in started:
        r.__exit__(None, None, None)


class StubEngine:
    """A backend that answers every POST with one fixed status and an OpenAI-shaped error (what
    vLLM sends for a request's own failure or a full queue), ``/health`` with 200 and
    ``/metrics`` with an empty page; it counts the POSTs and keeps their Authorization headers."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.posts: list[str | None] = []  # each POST's Authorization header
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(200, b"")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.posts.append(self.headers.get("Authorization"))
                err = {"message": f"stub {stub.status}", "type": "x", "code": stub.status}
                self._answer(stub.status, json.dumps({"error": err}).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StubEngine:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

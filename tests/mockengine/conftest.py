"""Mock engines on loopback with free ports, a fast profile (every step takes 5 ms), and helpers."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from polyserve.mockengine import MockEngineSettings, MockEngineThread
from polyserve.profile import Profile
from tests.conftest import make_profile

STEP_MS = 5.0


def fast_profile(**kw: Any) -> Profile:
    """Every step takes STEP_MS whatever is in it: timings are easy to bound."""
    base: dict[str, Any] = {
        "overhead_ms": 0.0,
        "linear_floor_ms": STEP_MS,
        "linear_base_ms": 0.0,
        "linear_per_token_ms": 0.0,
        "decode_attn_per_ctx_token_ms": 0.0,
        "prefill_attn_per_pair_ms": 0.0,
        "max_model_len": 2048,
        "name": "fast",
    }
    base.update(kw)
    return make_profile(**base)


MODEL = fast_profile().model
#: vLLM answers a generation request without this header with a 400 (validate_json_request)
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def start_mock() -> Iterator[Callable[..., MockEngineThread]]:
    """Start a fleet with the given settings (port 0 unless given); stopped at teardown."""
    started: list[MockEngineThread] = []

    def start(profile: Profile | None = None, **settings: Any) -> MockEngineThread:
        settings.setdefault("port", 0)
        fleet = MockEngineThread(MockEngineSettings(**settings), profile or fast_profile())
        fleet.start()
        started.append(fleet)
        return fleet

    yield start
    for fleet in started:
        fleet.stop()


@pytest.fixture(scope="module")
def mock() -> Iterator[MockEngineThread]:
    """One shared engine for tests that only add requests that finish."""
    with MockEngineThread(MockEngineSettings(port=0), fast_profile()) as fleet:
        yield fleet


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10.0)


def raw(
    url: str,
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request: status, headers, body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10.0)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    status, _, body = raw(url, "GET", "/metrics")
    assert status == 200
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(url: str, name: str, **labels: str) -> float:
    want = {"model_name": MODEL, "engine": "0", **labels}
    key = (name, tuple(sorted(want.items())))
    return scrape(url)[key]


def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)

"""Fault knobs, several engines in one process, and the command line."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import openai
import pytest
from typer.testing import CliRunner

from polyserve.cli import app
from polyserve.mockengine import MockEngineSettings, MockEngineThread
from polyserve.mockengine.testing import free_port_run
from polyserve.wire.vllm_metrics import parse_engine_load
from tests.mockengine.conftest import (
    JSON,
    MODEL,
    STEP_MS,
    client,
    fast_profile,
    metric,
    raw,
    wait_until,
)


def _refused(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=2.0):
            return False
    except ConnectionRefusedError:
        return True


def test_startup_delay_answers_503_then_200(start_mock: Callable[..., MockEngineThread]) -> None:
    fleet = start_mock(startup_delay=0.4)
    url = fleet.urls[0]
    assert raw(url, "GET", "/health")[0] == 503
    status, _, body = raw(url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert status == 503 and json.loads(body)["error"]["code"] == 503
    wait_until(lambda: raw(url, "GET", "/health")[0] == 200, what="ready")
    assert raw(url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 200


def test_crash_after_requests_cuts_streams_and_refuses(
    start_mock: Callable[..., MockEngineThread],
) -> None:
    fleet = start_mock(replicas=2, crash_after_requests=2)
    url0, url1 = fleet.urls
    c0 = client(url0)
    c0.completions.create(model=MODEL, prompt="one", max_tokens=2)  # request 1
    stream = c0.completions.create(  # request 2: in flight when the engine dies
        model=MODEL, prompt="two", max_tokens=1500, stream=True, extra_body={"ignore_eos": True}
    )
    it = iter(stream)
    next(it)
    with pytest.raises(openai.APIConnectionError):  # request 3 kills the engine
        c0.completions.create(model=MODEL, prompt="three", max_tokens=2)
    with pytest.raises((openai.APIError, ConnectionError, OSError)):  # the stream is cut
        for _ in range(2000):
            next(it)
    wait_until(lambda: _refused(url0), what="the listening socket to close")
    # the other engine of the process is unaffected (its own count)
    res = client(url1).completions.create(model=MODEL, prompt="other", max_tokens=2)
    assert res.usage is not None
    assert fleet.servers[0].crashed and not fleet.servers[1].crashed


def test_crash_at_and_refuse_connections(start_mock: Callable[..., MockEngineThread]) -> None:
    fleet = start_mock(crash_at=0.3)
    url = fleet.urls[0]
    assert raw(url, "GET", "/health")[0] == 200
    wait_until(lambda: _refused(url), what="--crash-at")
    port = free_port_run(1)
    refusing = start_mock(port=port, refuse_connections=True)
    assert _refused(refusing.urls[0])


def test_metrics_garbage_and_hang_knobs(start_mock: Callable[..., MockEngineThread]) -> None:
    assert not MockEngineSettings().metrics_garbage and not MockEngineSettings().metrics_hang
    garbage = start_mock(metrics_garbage=True).urls[0]
    status, _, body = raw(garbage, "GET", "/metrics")
    assert status == 200 and parse_engine_load(body.decode(errors="replace")) is None
    assert b"# TYPE" not in body
    # generation is unaffected
    assert raw(garbage, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200

    hang = start_mock(metrics_hang=True).urls[0]
    parts = urlsplit(hang)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=0.5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()  # the headers come ...
        assert resp.status == 200
        with pytest.raises(TimeoutError):  # ... the end of the page never does
            resp.read()
    finally:
        conn.close()
    assert raw(hang, "GET", "/health")[0] == 200
    assert raw(hang, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200


def test_replicas_on_consecutive_ports_with_own_state(
    start_mock: Callable[..., MockEngineThread],
) -> None:
    base = free_port_run(3)
    fleet = start_mock(port=base, replicas=3)
    assert [urlsplit(u).port for u in fleet.urls] == [base, base + 1, base + 2]
    client(fleet.urls[1]).completions.create(model=MODEL, prompt="x", max_tokens=3)
    counts = [metric(u, "vllm:request_success_total", finished_reason="length") for u in fleet.urls]
    assert sum(counts) == 1 and counts[1] in (0, 1)  # stop or length, only on engine 1
    assert metric(fleet.urls[1], "vllm:generation_tokens_total") >= 1
    assert metric(fleet.urls[0], "vllm:generation_tokens_total") == 0


def test_slowdown_stretches_steps(start_mock: Callable[..., MockEngineThread]) -> None:
    fleet = start_mock(slowdown=4.0)
    t0 = time.monotonic()
    client(fleet.urls[0]).completions.create(
        model=MODEL, prompt="x", max_tokens=10, extra_body={"ignore_eos": True}
    )
    elapsed = time.monotonic() - t0
    assert elapsed >= 10 * STEP_MS * 4.0 / 1000 * 0.95  # 10 steps of 20 ms


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="replicas"):
        MockEngineSettings(replicas=0)
    with pytest.raises(ValueError, match="do not fit"):
        MockEngineSettings(port=65530, replicas=10)
    with pytest.raises(ValueError, match="slowdown"):
        MockEngineSettings(slowdown=0)
    with pytest.raises(ValueError, match="KV cache"):
        MockEngineSettings(max_model_len=10_000, kv_cache_tokens=5_000).engine_config(
            fast_profile()
        )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--replicas", "0"], "--replicas"),
        (["--scheduling-policy", "lifo"], "--scheduling-policy"),
        (["--profile", "no-such-profile"], "no profile"),
        (["--max-num-seqs", "300", "--max-num-batched-tokens", "100"], "max_num_batched_tokens"),
        (["--port", "70000"], "--port"),
    ],
)
def test_cli_rejects_bad_options_without_traceback(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, ["mock-engine", *args])
    assert result.exit_code == 2
    out = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert needle in out and "Traceback" not in out


def test_cli_serves_until_terminated() -> None:
    port = free_port_run(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "polyserve", "mock-engine", "--port", str(port), "--replicas", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port + 1}"

        def up() -> bool:
            try:
                return raw(url, "GET", "/health")[0] == 200
            except OSError:
                return False

        wait_until(up, timeout=20.0, what="the CLI server")
        assert raw(url, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out.decode()
    assert b"Traceback" not in out and b"lateness" in out


def test_http_client_disconnect_before_first_token(
    start_mock: Callable[..., MockEngineThread],
) -> None:
    """A non-streaming request whose client gives up is aborted too."""
    fleet = start_mock(profile=fast_profile(max_num_seqs=1, max_num_batched_tokens=256))
    url = fleet.urls[0]
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10.0)
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps({"prompt": "x", "max_tokens": 1500, "ignore_eos": True}),
        headers=JSON,
    )
    wait_until(lambda: metric(url, "vllm:num_requests_running") == 1, what="running")
    conn.close()
    wait_until(lambda: metric(url, "vllm:num_requests_running") == 0, what="the abort")
    assert metric(url, "vllm:kv_cache_usage_perc") == 0

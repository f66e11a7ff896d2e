"""The router in front of mock engines on loopback: passthrough, auth, queues, faults, metrics."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from polyserve.mockengine import MockEngineSettings, MockEngineThread
from polyserve.router.auth import KeyEntry, KeyRing
from polyserve.router.spec import FleetSpec
from polyserve.router.testing import RouterThread
from tests.mockengine.conftest import raw, scrape, wait_until
from tests.router.conftest import MODEL, PROFILE, TIERS, StubEngine, backend


def dead_url() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def engines() -> Iterator[MockEngineThread]:
    with MockEngineThread(MockEngineSettings(port=0, replicas=2, profile=PROFILE)) as fleet:
        yield fleet


def client(url: str, key: str = "none", **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20.0, **kw)


def residents(r: RouterThread) -> int:
    return r.call(
        lambda router: sum(
            b.view.n_requests for p in router.all_pools() for b in p.backends.values()
        )
    )


def outcomes(url: str) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["tier"], dict(labels)["outcome"]): v
        for (name, labels), v in scrape(url).items()
        if name == "polyserve_router_requests_total"
    }


def sse_events(
    url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> list[Any]:
    """Stream a request; the decoded data events (``"[DONE]"`` as is)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20.0)
    try:
        conn.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        text = resp.read().decode()
    finally:
        conn.close()
    events = [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


# ------------------------------------------------------------------------------- passthrough


def test_streaming_and_whole_answers_pass_through_and_accounting_returns_to_zero(
    engines: MockEngineThread, start_router: Callable[..., RouterThread]
) -> None:
    tight, loose = engines.urls
    fleet = FleetSpec(tiers=TIERS, backends=[backend("e0", tight, "t20"), backend("e1", loose)])
    r = start_router(fleet)
    c = client(r.url)
    whole = c.completions.create(model=MODEL, prompt="the quick brown fox", max_tokens=7)
    assert whole.usage is not None and whole.usage.completion_tokens == 7
    stream = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-polyserve-tier": "t20"},
    )
    chunks = list(stream)
    text = [
        ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content
    ]
    assert (
        len(text) == 9 and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    )
    wait_until(lambda: residents(r) == 0, what="every request released")
    seen = outcomes(r.url)
    assert seen[("t100", "ok")] == 1 and seen[("t20", "ok")] == 1
    m = scrape(r.url)
    attained = {
        dict(k[1])["tier"]: v for k, v in m.items() if k[0] == "polyserve_router_slo_attained_total"
    }
    assert attained == {"t100": 1.0, "t20": 1.0}
    # the same verdicts in the autoscaler's state (the SLOTier status' attainment)
    state = json.loads(raw(r.url, "GET", "/polyserve/v1/state")[2])
    counts = {t["name"]: (t["measured_total"], t["attained_total"]) for t in state["tiers"]}
    assert counts["t100"] == (1, 1) and counts["t20"] == (1, 1)
    models = c.models.list().data
    assert [mo.id for mo in models] == [MODEL]


def test_many_concurrent_streams_all_answered(
    engines: MockEngineThread, start_router: Callable[..., RouterThread]
) -> None:
    fleet = FleetSpec(
        tiers=TIERS, backends=[backend(f"e{i}", u) for i, u in enumerate(engines.urls)]
    )
    r = start_router(fleet)
    results: list[int] = []

    def one(i: int) -> None:
        c = client(r.url)
        s = c.completions.create(
            model=MODEL, prompt=f"request {i}", max_tokens=5 + i % 7, stream=True
        )
        results.append(sum(1 for ch in s if ch.choices and ch.choices[0].text))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(5 + i % 7 for i in range(24))
    wait_until(lambda: residents(r) == 0, what="every request released")
    assert outcomes(r.url)[("t100", "ok")] == 24


# ------------------------------------------------------------------------------- auth


def test_keys_and_tier_entitlements(
    engines: MockEngineThread, start_router: Callable[..., RouterThread]
) -> None:
    ring = KeyRing(
        [
            KeyEntry(name="batch", key="batch-key-1", tiers=["t100"]),
            KeyEntry(name="voice", key="voice-key-1", default="t20"),
        ]
    )
    fleet = FleetSpec(tiers=TIERS, backends=[backend("e0", engines.urls[0], None)])  # a pool server
    r = start_router(fleet, ring)
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    status, _, data = raw(r.url, "POST", "/v1/completions", body)
    assert status == 401 and json.loads(data)["error"]["code"] == 401
    status, _, _ = raw(
        r.url, "POST", "/v1/completions", body, {"Authorization": "Bearer wrong-key"}
    )
    assert status == 401
    spoof = {"Authorization": "Bearer batch-key-1", "x-polyserve-tier": "t20"}
    status, _, data = raw(r.url, "POST", "/v1/completions", body, spoof)
    assert status == 403 and "may not use tier 't20'" in json.loads(data)["error"]["message"]
    status, _, _ = raw(
        r.url, "POST", "/v1/completions", body, {"Authorization": "Bearer voice-key-1"}
    )
    assert status == 200
    assert outcomes(r.url)[("t20", "ok")] == 1  # the voice key's default tier


def test_a_backend_with_an_api_key_gets_its_key_not_the_clients(
    start_router: Callable[..., RouterThread],
) -> None:
    """An engine started with ``--api-key`` answers /v1/* with 401 without it (vLLM's middleware);
    the router sends each backend its own key in place of the client's, which is for the router;
    its health checks and scrapes need none (vLLM guards only /v1/*)."""
    ring = KeyRing([KeyEntry(name="c", key="client-key-1")])
    with (
        MockEngineThread(MockEngineSettings(port=0, profile=PROFILE, api_key="engine-key")) as e,
        StubEngine(400) as stub,
    ):
        url = e.urls[0]
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
        assert raw(url, "POST", "/v1/completions", body)[0] == 401
        assert raw(url, "GET", "/health")[0] == 200 and raw(url, "GET", "/metrics")[0] == 200
        fleet = FleetSpec(
            tiers=TIERS,
            backends=[backend("e0", url, api_key="engine-key"), backend("s", stub.url, "t20")],
        )
        r = start_router(fleet, ring)
        out = client(r.url, "client-key-1").completions.create(**body)
        assert out.usage is not None and out.usage.completion_tokens == 2
        tight = {"Authorization": "Bearer client-key-1", "x-polyserve-tier": "t20"}
        assert raw(r.url, "POST", "/v1/completions", body, tight)[0] == 400  # the stub's answer
        assert stub.posts == [None]  # a backend without a key gets no Authorization at all
        wait_until(lambda: r.call(lambda rt: rt.probes.scraped_at), what="a scrape")
        assert r.call(lambda rt: rt.pools[MODEL].backends["e0"].view.healthy)
        state = raw(r.url, "GET", "/polyserve/v1/state")[2] + raw(r.url, "GET", "/openapi.json")[2]
        assert b"engine-key" not in state
        # a router that does not know the key gets the engine's 401 (the request's own answer)
        r2 = start_router(FleetSpec(tiers=TIERS, backends=[backend("e0", url)]))
        status, _, data = raw(r2.url, "POST", "/v1/completions", body)
        assert (status, json.loads(data)) == (401, {"error": "Unauthorized"})


# ------------------------------------------------------------------------------- bad input


def test_bad_requests_get_openai_errors_not_500s(
    engines: MockEngineThread, start_router: Callable[..., RouterThread]
) -> None:
    r = start_router(
        FleetSpec(tiers=TIERS, backends=[backend("e0", engines.urls[0])]), max_body_bytes=4096
    )
    cases: list[tuple[bytes | dict[str, Any], dict[str, str], int]] = [
        (b"{not json", {}, 400),
        (b"[1, 2]", {}, 400),
        ({"model": MODEL, "prompt": 5}, {}, 400),
        ({"model": MODEL, "prompt": "x", "max_tokens": -3}, {}, 400),
        ({"model": "no-such-model", "prompt": "x"}, {}, 404),
        ({"model": MODEL, "prompt": ["a", "b"]}, {}, 400),
        ({"model": MODEL, "prompt": "x", "n": 3}, {}, 400),
        ({"model": MODEL, "prompt": "x"}, {"x-polyserve-tier": "platinum"}, 400),
        ({"model": MODEL, "prompt": "x"}, {"x-llm-d-slo-tpot-ms": "-1"}, 400),
        ({"model": MODEL, "prompt": "x" * 10_000}, {}, 413),
        (
            {"model": MODEL, "prompt": "x", "max_tokens": 10**9},
            {},
            400,
        ),  # the engine's context check
    ]
    for body, headers, want in cases:
        status, _, data = raw(r.url, "POST", "/v1/completions", body, headers)
        err = json.loads(data)["error"]
        assert (status, err["code"]) == (want, want), (body, data)
        assert "Traceback" not in err["message"]
    wait_until(lambda: residents(r) == 0, what="every request released")
    status, _, doc = raw(r.url, "GET", "/openapi.json")
    paths = json.loads(doc)["paths"]
    assert status == 200 and {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(paths)


# ------------------------------------------------------------------------------- queues


def test_full_queue_and_missed_deadlines_answer_429_with_retry_after(
    engines: MockEngineThread, start_router: Callable[..., RouterThread]
) -> None:
    waits = [t.model_copy(update={"on_deadline_miss": "wait"}) for t in TIERS]
    draining = backend("e0", engines.urls[0], draining=True)  # nothing can be placed
    r = start_router(FleetSpec(tiers=waits, backends=[draining]), queue_limit=1)
    holder = threading.Thread(
        target=lambda: raw(
            r.url, "POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2}
        )
    )
    holder.start()
    wait_until(lambda: r.call(lambda rt: len(rt.pools[MODEL].queues)) == 1, what="a queued request")
    status, headers, data = raw(r.url, "POST", "/v1/completions", {"model": MODEL, "prompt": "y"})
    assert status == 429 and headers["Retry-After"] == "1" and "queue is full" in data.decode()
    r.apply(FleetSpec(tiers=waits, backends=[backend("e0", engines.urls[0])]))  # un-drain: it runs
    holder.join(20)
    assert not holder.is_alive() and outcomes(r.url)[("t100", "ok")] == 1

    tight = [t.model_copy(update={"ttft_ms": 1.0}) for t in TIERS]  # no prefill fits 1 ms
    r2 = start_router(FleetSpec(tiers=tight, backends=[backend("e0", engines.urls[0])]))
    status, headers, data = raw(
        r2.url, "POST", "/v1/completions", {"model": MODEL, "prompt": "z " * 200}
    )
    assert status == 429 and "Retry-After" in headers and "deadline" in data.decode()
    assert outcomes(r2.url)[("t100", "rejected")] == 1


# ------------------------------------------------------------------------------- faults


def test_a_backend_failing_before_its_first_byte_is_retried_on_another(
    engines: MockEngineThread, start_router: Callable[..., RouterThread]
) -> None:
    # healthy until its first generation request, which kills it: the connection drops unanswered
    with MockEngineThread(
        MockEngineSettings(port=0, profile=PROFILE, crash_after_requests=0)
    ) as doomed:
        fleet = FleetSpec(
            tiers=TIERS,
            backends=[backend("doomed", doomed.urls[0]), backend("e0", engines.urls[0])],
        )
        r = start_router(fleet, health_interval_s=60.0)  # only the failed attempt marks it down
        out = client(r.url).completions.create(model=MODEL, prompt="retry me", max_tokens=3)
    assert out.usage is not None and out.usage.completion_tokens == 3
    retries = {
        dict(lab)["backend"]: v
        for (n, lab), v in scrape(r.url).items()
        if n == "polyserve_router_retries_total"
    }
    assert retries == {"doomed": 1.0}
    state = json.loads(raw(r.url, "GET", "/polyserve/v1/state")[2])
    health = {b["name"]: b["ready"] for b in state["backends"]}
    assert health == {"doomed": False, "e0": True}
    wait_until(lambda: residents(r) == 0, what="every request released")


def retries_by_backend(url: str) -> dict[str, float]:
    return {
        dict(lab)["backend"]: v
        for (n, lab), v in scrape(url).items()
        if n == "polyserve_router_retries_total"
    }


def ready(url: str) -> dict[str, bool]:
    state = json.loads(raw(url, "GET", "/polyserve/v1/state")[2])
    return {b["name"]: b["ready"] for b in state["backends"]}


@pytest.mark.parametrize("status", [500, 501])
def test_a_requests_own_500_or_501_is_passed_through_and_the_backend_stays_healthy(
    status: int, start_router: Callable[..., RouterThread]
) -> None:
    """vLLM answers 500 for one request's failed generation and 501 for what it does not
    implement: the client gets that answer; the backend keeps serving (no retry, not down)."""
    with StubEngine(status) as stub:
        fleet = FleetSpec(tiers=TIERS, backends=[backend("s", stub.url)])
        r = start_router(fleet, health_interval_s=60.0)  # only the answers could mark it down
        for _ in range(2):
            got, _, data = raw(r.url, "POST", "/v1/completions", {"model": MODEL, "prompt": "x"})
            assert (got, json.loads(data)["error"]["message"]) == (status, f"stub {status}")
        assert len(stub.posts) == 2  # each request tried once, on the backend still placed on
        assert retries_by_backend(r.url) == {} and ready(r.url) == {"s": True}
        assert outcomes(r.url)[("t100", "backend_error")] == 2
        wait_until(lambda: residents(r) == 0, what="every request released")


def test_a_busy_backend_is_retried_on_another_and_stays_healthy(
    engines: MockEngineThread, start_router: Callable[..., RouterThread]
) -> None:
    """A 503 is vLLM's full queue ("retry on a different instance"): retried elsewhere, the busy
    backend held out of placement until its next health check, but not marked unhealthy."""
    with StubEngine(503) as stub:
        fleet = FleetSpec(
            tiers=TIERS, backends=[backend("busy", stub.url), backend("e0", engines.urls[0])]
        )
        r = start_router(fleet, health_interval_s=60.0)
        c = client(r.url)
        for _ in range(3):
            out = c.completions.create(model=MODEL, prompt="elsewhere", max_tokens=2)
            assert out.usage is not None and out.usage.completion_tokens == 2
        assert len(stub.posts) == 1  # tried first, then held out
        assert retries_by_backend(r.url) == {"busy": 1.0}
        assert ready(r.url) == {"busy": True, "e0": True}
        assert not r.call(lambda rt: rt.pools[MODEL].backends["busy"].view.healthy)
        wait_until(lambda: residents(r) == 0, what="every request released")


def test_every_attempt_busy_ends_in_a_503_with_retry_after(
    start_router: Callable[..., RouterThread],
) -> None:
    with StubEngine(503) as stub:
        r = start_router(
            FleetSpec(tiers=TIERS, backends=[backend("busy", stub.url)]), max_attempts=2
        )
        status, headers, data = raw(
            r.url, "POST", "/v1/completions", {"model": MODEL, "prompt": "x"}
        )
        err = json.loads(data)["error"]
        assert (status, err["code"]) == (503, 503) and "busy" in err["message"]
        assert headers.get("Retry-After") == "1"
        assert len(stub.posts) == 2  # the passing health check (FAST) ended the hold in between
        assert ready(r.url) == {"busy": True}
        wait_until(lambda: residents(r) == 0, what="every request released")


def test_no_live_backend_ends_in_a_clear_503(start_router: Callable[..., RouterThread]) -> None:
    fleet = FleetSpec(tiers=TIERS, backends=[backend(f"d{i}", dead_url()) for i in range(3)])
    r = start_router(fleet)
    status, _, data = raw(r.url, "POST", "/v1/completions", {"model": MODEL, "prompt": "x"})
    err = json.loads(data)["error"]
    assert (status, err["code"]) == (503, 503) and "no backend" in err["message"].lower()
    wait_until(lambda: residents(r) == 0, what="every request released")


def test_a_backend_dying_mid_stream_ends_the_stream_with_an_error_event(
    start_router: Callable[..., RouterThread],
) -> None:
    with MockEngineThread(MockEngineSettings(port=0, profile=PROFILE)) as doomed:
        r = start_router(FleetSpec(tiers=TIERS, backends=[backend("e0", doomed.urls[0])]))
        server = doomed.servers[0]
        doomed.loop.call_later(0.3, server.crash)
        body = {
            "model": MODEL,
            "prompt": "long",
            "max_tokens": 2000,
            "ignore_eos": True,
            "stream": True,
        }
        events = sse_events(r.url, "/v1/completions", body)
    tokens = [e for e in events if isinstance(e, dict) and e.get("choices")]
    assert 0 < len(tokens) < 2000
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and errors[0]["error"]["code"] == 502
    assert events[-1] == "[DONE]"
    assert outcomes(r.url)[("t100", "backend_error")] == 1
    wait_until(lambda: residents(r) == 0, what="every request released")


def test_unhealthy_backends_leave_and_come_back(start_router: Callable[..., RouterThread]) -> None:
    with MockEngineThread(MockEngineSettings(port=0, profile=PROFILE, startup_delay=1.0)) as late:
        r = start_router(FleetSpec(tiers=TIERS, backends=[backend("late", late.urls[0])]))

        def healthy() -> bool:
            return r.call(lambda rt: rt.pools[MODEL].backends["late"].view.healthy)

        wait_until(lambda: not healthy(), what="the starting engine marked unhealthy")
        wait_until(healthy, timeout=5.0, what="the engine healthy again once started")
        out = client(r.url).completions.create(model=MODEL, prompt="back", max_tokens=2)
        assert out.usage is not None and out.usage.completion_tokens == 2


def test_priority_is_forwarded_only_to_priority_backends(
    start_router: Callable[..., RouterThread],
) -> None:
    with MockEngineThread(MockEngineSettings(port=0, profile=PROFILE, scheduling_policy="priority")) as prio, \
         MockEngineThread(MockEngineSettings(port=0, profile=PROFILE)) as fcfs:  # fmt: skip
        for url, is_prio in ((prio.urls[0], True), (fcfs.urls[0], False)):
            r = start_router(FleetSpec(tiers=TIERS, backends=[backend("e", url, priority=is_prio)]))
            body = {"model": MODEL, "prompt": "p", "max_tokens": 2, "priority": 5}  # stripped
            status, _, data = raw(r.url, "POST", "/v1/completions", body)
            assert status == 200, data


def test_request_logs_are_structured_and_carry_prompts_only_when_asked(
    engines: MockEngineThread,
    start_router: Callable[..., RouterThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = FleetSpec(tiers=TIERS, backends=[backend("e0", engines.urls[0])])
    secret = "my secret prompt"
    for log_prompts in (False, True):
        caplog.clear()
        r = start_router(fleet, log_prompts=log_prompts)
        with caplog.at_level("INFO", logger="polyserve.router"):
            status, _, _ = raw(
                r.url,
                "POST",
                "/v1/completions",
                {"model": MODEL, "prompt": secret, "max_tokens": 2},
            )
            assert status == 200
            wait_until(
                lambda: any(rec.msg == "request" for rec in caplog.records), what="the request log"
            )
        rec = next(rec for rec in caplog.records if rec.msg == "request")
        fields = rec.fields  # type: ignore[attr-defined]
        assert (
            fields["outcome"] == "ok" and fields["output_tokens"] == 2 and fields["tier"] == "t100"
        )
        assert ("prompt" in fields) == log_prompts
        assert all(secret not in r2.getMessage() for r2 in caplog.records)


def test_admin_api_replaces_the_fleet_only_with_the_admin_token(
    engines: MockEngineThread, start_router: Callable[..., RouterThread]
) -> None:
    empty = FleetSpec(tiers=TIERS)
    off = start_router(empty)
    status, _, _ = raw(off.url, "PUT", "/polyserve/v1/fleet", empty.model_dump(mode="json"))
    assert status == 404  # no admin token configured: the admin API is off
    token = "t" * 32
    r = start_router(empty, admin_token=token)
    fleet = FleetSpec(tiers=TIERS, backends=[backend("e0", engines.urls[0])])
    body = fleet.model_dump(mode="json")
    assert raw(r.url, "PUT", "/polyserve/v1/fleet", body)[0] == 401
    assert (
        raw(r.url, "PUT", "/polyserve/v1/fleet", body, {"Authorization": "Bearer wrong"})[0] == 401
    )
    bad = {"tiers": [{"name": "t20"}]}
    status, _, data = raw(
        r.url, "PUT", "/polyserve/v1/fleet", bad, {"Authorization": f"Bearer {token}"}
    )
    assert status == 400 and "tpot_ms" in json.loads(data)["error"]["message"]
    twins = {"tiers": [t.model_dump(mode="json") | {"tpot_ms": 50} for t in TIERS]}
    status, _, data = raw(
        r.url, "PUT", "/polyserve/v1/fleet", twins, {"Authorization": f"Bearer {token}"}
    )
    assert status == 400 and "distinct" in json.loads(data)["error"]["message"]  # not a 500
    tpots = r.call(lambda rt: [t.tpot_ms for t in rt.pools[MODEL].tier_specs])
    assert tpots == [t.tpot_ms for t in TIERS]  # and nothing changed
    status, _, _ = raw(
        r.url, "PUT", "/polyserve/v1/fleet", body, {"Authorization": f"Bearer {token}"}
    )
    assert status == 200
    out = client(r.url).completions.create(model=MODEL, prompt="now served", max_tokens=2)
    assert out.usage is not None and out.usage.completion_tokens == 2

"""The router's pure parts: keys and tier resolution, engine metrics, stream counting, the pool."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from polyserve.router.auth import (
    ANONYMOUS,
    Entitlement,
    KeyEntry,
    KeyRing,
    TierChoiceError,
    load_keys,
    resolve_tier,
)
from polyserve.router.engine_metrics import foreign_load
from polyserve.router.metrics import RouterMetrics
from polyserve.router.pool import ModelPool
from polyserve.router.settings import ConfigError
from polyserve.router.spec import BackendSpec, FleetSpec, TierSpec
from polyserve.router.stream import StreamTally
from polyserve.wire.vllm_metrics import EngineLoad

M = "m"
TIERS = [
    TierSpec(name="t20", model=M, tpot_ms=20, ttft_ms=300),
    TierSpec(name="t50", model=M, tpot_ms=50, ttft_ms=1000),
    TierSpec(name="t100", model=M, tpot_ms=100, ttft_ms=1000),
]


def ring() -> KeyRing:
    return KeyRing(
        [
            KeyEntry(name="voice", key="voice-key-123", tiers=["t20", "t50"], default="t20"),
            KeyEntry(
                name="batch", sha256=hashlib.sha256(b"batch-key-456").hexdigest(), tiers=["t100"]
            ),
            KeyEntry(name="ops", key="ops-key-7890"),
        ]
    )


# ------------------------------------------------------------------------------- keys


def test_keys_authenticate_by_digest_and_refuse_the_rest() -> None:
    r = ring()
    assert r.authenticate("Bearer voice-key-123").name == "voice"
    assert r.authenticate("bearer batch-key-456").name == "batch"
    for header, words in [
        (None, "Missing"),
        ("Basic abc", "Malformed"),
        ("Bearer ", "Malformed"),
        ("Bearer voice-key-12", "Invalid"),
    ]:
        with pytest.raises(TierChoiceError) as e:
            r.authenticate(header)
        assert e.value.status == 401 and words in e.value.message


def test_key_file_errors_name_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "keys.yaml"
    bad.write_text("keys:\n  - name: a\n    tiers: [t20]\n")
    with pytest.raises(
        ConfigError, match=r"keys\.yaml: keys\.0: .*exactly one of `key` or `sha256`"
    ):
        load_keys(bad)
    bad.write_text("keys:\n  - name: a\n    key: abcdefgh\n    default: t50\n    tiers: [t20]\n")
    with pytest.raises(ConfigError, match="default tier 't50' is not in its tiers"):
        load_keys(bad)
    good = tmp_path / "ok.json"
    good.write_text(json.dumps({"keys": [{"name": "a", "key": "abcdefgh"}]}))
    assert load_keys(good).names() == ["a"]


# ------------------------------------------------------------------------------- tiers


def choose(ent: Entitlement, **headers: str) -> tuple[str, float]:
    c = resolve_tier(ent, M, TIERS, {k.replace("_", "-"): v for k, v in headers.items()})
    return c.tier.name, c.ttft_ms


def test_fleet_file_backend_keys_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    from polyserve.router.settings import load_fleet

    (tmp_path / "k").write_text("file-key\n")
    fleet = tmp_path / "fleet.yaml"
    tiers = [{"name": "t100", "model": M, "tpot_ms": 100, "ttft_ms": 1000}]
    backends = [
        {"name": "a", "url": "http://a:8000", "model": M, "api_key_env": "KEY_A"},
        {"name": "b", "url": "http://b:8000", "model": M, "api_key_file": "k"},
        {"name": "c", "url": "http://c:8000", "model": M},
    ]
    fleet.write_text(json.dumps({"tiers": tiers, "backends": backends}))
    spec = load_fleet(fleet, {"KEY_A": "env-key"})
    keys = [b.api_key.get_secret_value() if b.api_key else None for b in spec.backends]
    assert keys == ["env-key", "file-key", None]
    assert "env-key" not in repr(spec) and "file-key" not in spec.model_dump_json()
    with pytest.raises(ConfigError, match=r"backends\.0\.api_key_env: KEY_A is not set"):
        load_fleet(fleet, {})
    fleet.write_text(
        json.dumps({"tiers": tiers, "backends": [backends[1] | {"api_key_file": "x"}]})
    )
    with pytest.raises(ConfigError, match=r"backends\.0\.api_key_file: cannot read"):
        load_fleet(fleet, {})


def test_tier_by_name_default_and_loosest() -> None:
    voice = ring().lookup("voice-key-123")
    assert voice is not None
    assert choose(voice) == ("t20", 300)  # its default
    assert choose(voice, x_polyserve_tier="t50") == ("t50", 1000)
    assert choose(ANONYMOUS) == ("t100", 1000)  # no default: the loosest (cheapest) tier


def test_a_key_cannot_reach_a_tier_it_does_not_hold() -> None:
    batch = ring().lookup("batch-key-456")
    assert batch is not None
    with pytest.raises(TierChoiceError) as e:
        choose(batch, x_polyserve_tier="t20")
    assert e.value.status == 403
    with pytest.raises(TierChoiceError) as e:  # spoofing the llm-d header does not help either
        choose(batch, x_llm_d_slo_tpot_ms="25")
    assert e.value.status == 403
    with pytest.raises(TierChoiceError) as e:
        choose(batch, x_polyserve_tier="gold")
    assert e.value.status == 400 and "you may use: t100" in e.value.message


def test_llm_d_headers_bin_to_the_next_tighter_tier() -> None:
    assert choose(ANONYMOUS, x_llm_d_slo_tpot_ms="60") == ("t50", 1000)
    assert choose(ANONYMOUS, x_llm_d_slo_tpot_ms="20") == ("t20", 300)
    # a TTFT header both selects (tiers with TTFT <= it) and tightens the request's own deadline
    assert choose(ANONYMOUS, x_llm_d_slo_tpot_ms="200", x_llm_d_slo_ttft_ms="500") == ("t20", 300)
    assert choose(ANONYMOUS, x_llm_d_slo_ttft_ms="1000", x_polyserve_tier="t50") == ("t50", 1000)
    assert choose(ANONYMOUS, x_llm_d_slo_ttft_ms="800", x_polyserve_tier="t50") == ("t50", 800)
    for bad in ("0", "-5", "nan", "inf", "fast"):
        with pytest.raises(TierChoiceError) as e:
            choose(ANONYMOUS, x_llm_d_slo_tpot_ms=bad)
        assert e.value.status == 400
    with pytest.raises(TierChoiceError) as e:
        choose(ANONYMOUS, x_llm_d_slo_tpot_ms="10")
    assert e.value.status == 400 and "No tier" in e.value.message


# ------------------------------------------------------------------------------- engine metrics


def test_foreign_load_only_adds() -> None:
    load = EngineLoad(running=5, waiting=1, kv_usage=0.5)
    assert foreign_load(load, own_requests=4, own_kv_tokens=10_000, kv_capacity_tokens=100_000) == (
        2,
        40_000,
    )
    assert foreign_load(load, own_requests=9, own_kv_tokens=0, kv_capacity_tokens=100_000) == (0, 0)
    assert foreign_load(load, own_requests=4, own_kv_tokens=90_000, kv_capacity_tokens=100_000) == (
        2,
        0,
    )


# ------------------------------------------------------------------------------- streams


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_stream_tally_counts_output_events_across_split_reads() -> None:
    role = sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    tok = sse({"choices": [{"index": 0, "delta": {"content": " hi"}}]})
    last = sse({"choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}]})
    usage = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    data = role + tok + last + usage + b"data: [DONE]\n\n"
    t = StreamTally()
    counts = [t.feed(data[i : i + 7]) for i in range(0, len(data), 7)]
    assert sum(counts) == 2 and t.tokens == 2
    assert t.done and t.finish_reason == "stop" and t.output_tokens == 2 and t.error is None


def test_stream_tally_reads_error_events_and_completion_text() -> None:
    t = StreamTally()
    t.feed(sse({"choices": [{"index": 0, "text": "a"}]}) + sse({"error": {"message": "boom"}}))
    assert t.tokens == 1 and t.error == "boom" and not t.done


# ------------------------------------------------------------------------------- pool


def backends(*tiers: str | None) -> list[BackendSpec]:
    return [
        BackendSpec(name=f"b{i}", url=f"http://127.0.0.1:{9000 + i}", model=M, tier=t)
        for i, t in enumerate(tiers)
    ]


def test_pool_places_on_own_tier_then_promotes_and_accounts_to_zero() -> None:
    pool = ModelPool(M, TIERS, "polyserve")
    pool.set_backends(backends("t20", "t100"), now=0.0)
    tickets = [pool.new_ticket(f"r{i}", TIERS[2], 1000, 100, 64, 0.0) for i in range(3)]
    for t in tickets:
        pool.enqueue(t, 0.0)
    settled = pool.dispatch(0.0)
    assert [t.state for t in settled] == ["placed"] * 3
    assert {t.backend for t in tickets} == {"b1"}  # the most loaded feasible own-tier server
    mid = pool.new_ticket("r-mid", TIERS[1], 1000, 100, 64, 0.0)  # no t50 server: promoted to t20
    pool.enqueue(mid, 0.0)
    pool.dispatch(0.0)
    assert mid.backend == "b0" and mid.placement is not None and mid.placement.promoted
    for t in [*tickets, mid]:
        pool.on_first_token(t)
        pool.on_tokens(t, 10)
        pool.release(t, 1.0, completed=True)
    for b in pool.backends.values():
        v = b.view
        assert (v.n_requests, v.n_prefill, v.kv_tokens, v.prefill_backlog) == (0, 0, 0, 0)
        assert v.tpot_counts == {} and abs(v.expected_tokens) < 1e-9


def test_pool_hopeless_requests_are_rejected_per_tier_setting() -> None:
    tiers = [TIERS[0].model_copy(update={"ttft_ms": 1.0})]  # no prefill fits 1 ms
    pool = ModelPool(M, tiers, "polyserve")
    pool.set_backends(backends("t20"), now=0.0)
    t = pool.new_ticket("r", tiers[0], 1.0, 4000, 16, 0.0)
    pool.enqueue(t, 0.0)
    assert pool.dispatch(0.0) == [t] and t.state == "rejected" and t.reason == "deadline"
    degrade = [tiers[0].model_copy(update={"on_deadline_miss": "degrade"})]
    pool2 = ModelPool(M, degrade, "polyserve")
    pool2.set_backends(backends("t20"), now=0.0)
    t2 = pool2.new_ticket("r", degrade[0], 1.0, 4000, 16, 0.0)
    pool2.enqueue(t2, 0.0)
    pool2.dispatch(0.0)
    assert t2.state == "placed" and t2.placement is not None and t2.placement.degraded


def test_pool_retires_a_removed_backend_after_its_last_request() -> None:
    pool = ModelPool(M, TIERS, "polyserve")
    pool.set_backends(backends("t100", "t100"), now=0.0)
    t = pool.new_ticket("r", TIERS[2], 1000, 10, 8, 0.0)
    pool.enqueue(t, 0.0)
    pool.dispatch(0.0)
    busy = t.backend
    pool.set_backends([b for b in backends("t100", "t100") if b.name != busy], now=1.0)
    assert busy in pool.backends and pool.backends[busy or ""].view.draining
    nxt = pool.new_ticket("r2", TIERS[2], 1000, 10, 8, 1.0)
    pool.enqueue(nxt, 1.0)
    pool.dispatch(1.0)
    assert nxt.backend != busy  # draining: no new requests
    pool.release(t, 2.0, completed=True)
    assert busy not in pool.backends


def test_pool_tier_changes_remap_queued_requests_and_return_orphans() -> None:
    pool = ModelPool(M, TIERS, "polyserve")  # no backends: everything waits
    waiting = [pool.new_ticket(f"r{i}", TIERS[i], 1000, 10, 8, 0.0) for i in range(3)]
    for t in waiting:
        pool.enqueue(t, 0.0)
    pool.dispatch(0.0)
    orphans = pool.set_tiers([TIERS[0], TIERS[2]])
    assert orphans == [waiting[1]]
    assert pool.queues.lengths() == [1, 1] and waiting[2].pending.tier == 1


def test_idle_time_and_counters_feed_the_autoscaler() -> None:
    pool = ModelPool(M, TIERS, "polyserve")
    pool.set_backends(backends("t20", "t20"), now=0.0)
    t = pool.new_ticket("r", TIERS[0], 300, 10, 8, 1.0)
    pool.enqueue(t, 1.0)
    pool.dispatch(1.0)
    idle = {b.name: pool.idle_s(b, 5.0) for b in pool.backends.values()}
    assert idle == {t.backend: 0.0, ({"b0", "b1"} - {t.backend}).pop(): 5.0}
    pool.release(t, 6.0, completed=True)
    assert pool.idle_s(pool.backends[t.backend or ""], 9.0) == 3.0
    assert pool.arrivals_total == {"t20": 1} and pool.shed_total == {}


def test_shed_is_counted_once_and_outlives_a_tier_change() -> None:
    tiers = [TIERS[0].model_copy(update={"ttft_ms": 1.0}), TIERS[2]]  # t20: no prefill fits 1 ms
    pool = ModelPool(M, tiers, "polyserve")
    pool.set_backends(backends("t20"), now=0.0)
    for i in range(2):
        pool.enqueue(pool.new_ticket(f"r{i}", tiers[0], 1.0, 4000, 16, 0.0), 0.0)
    pool.dispatch(0.0)
    metrics = RouterMetrics(lambda: [pool], lambda: 0.0)

    def shed_metric() -> dict[str, float]:
        family = next(m for m in metrics.registry.collect() if m.name == "polyserve_router_shed")
        return {s.labels["tier"]: s.value for s in family.samples if s.name.endswith("_total")}

    # the state's counter and the Prometheus one are the same count; a tier yet to shed shows 0
    assert pool.shed_total == {"t20": 2}
    assert shed_metric() == {"t20": 2.0, "t100": 0.0}
    pool.set_tiers([tiers[0], TIERS[1], tiers[1]])  # a new ledger continues the counters
    assert pool.shed_total == {"t20": 2} and pool.arrivals_total == {"t20": 2}
    assert shed_metric() == {"t20": 2.0, "t50": 0.0, "t100": 0.0}


def test_slo_counters_are_the_pools_counts_and_outlive_a_tier_change() -> None:
    pool = ModelPool(M, TIERS, "polyserve")
    metrics = RouterMetrics(lambda: [pool], lambda: 0.0)

    def counted(name: str) -> dict[str, float]:
        family = next(m for m in metrics.registry.collect() if m.name == name)
        return {s.labels["tier"]: s.value for s in family.samples if s.name.endswith("_total")}

    for tier, attained in (("t20", True), ("t20", False), ("t100", True)):
        pool.judged(tier, attained)
    # the state's counters and the Prometheus ones are the same counts; a tier yet to count shows 0
    assert pool.measured_total == {"t20": 2, "t100": 1}
    assert pool.attained_total == {"t20": 1, "t100": 1}
    assert counted("polyserve_router_slo_measured") == {"t20": 2.0, "t50": 0.0, "t100": 1.0}
    assert counted("polyserve_router_slo_attained") == {"t20": 1.0, "t50": 0.0, "t100": 1.0}
    pool.set_tiers([TIERS[0], TIERS[1]])  # t100 removed: what it counted is still counted
    assert counted("polyserve_router_slo_measured") == {"t20": 2.0, "t50": 0.0, "t100": 1.0}
    assert counted("polyserve_router_slo_attained") == {"t20": 1.0, "t50": 0.0, "t100": 1.0}


def test_every_metric_the_autoscaler_queries_is_exported() -> None:
    """The Prometheus source's names (``signals.METRICS``) are the router's, with their labels."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from polyserve.autoscale.signals import METRICS

    pool = ModelPool(M, TIERS, "polyserve")
    pool.set_backends(backends("t20"), 0.0)
    metrics = RouterMetrics(lambda: [pool], lambda: 0.0)
    metrics.requests.labels(M, "t20", "ok").inc()  # an event counter shows once it counts
    exposed = {
        s.name: s.labels
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in family.samples
    }
    for name, doc in METRICS.items():
        assert name in exposed, name
        wanted = doc[doc.index("[") + 1 : doc.index("]")].split(", ")
        assert set(wanted) <= set(exposed[name]), (name, exposed[name])


def test_a_model_served_again_beside_its_retired_pool_is_exposed_once() -> None:
    """A retired pool (its model removed, requests still running) and the new pool of the same
    model: one sample per label set (Prometheus refuses a page with duplicates), counts summed."""
    from prometheus_client import generate_latest

    old, new = ModelPool(M, TIERS, "polyserve"), ModelPool(M, TIERS, "polyserve")
    for pool in (old, new):
        pool.set_backends(backends("t20"), 0.0)
        pool.judged("t20", True)
    page = generate_latest(RouterMetrics(lambda: [new, old], lambda: 0.0).registry).decode()
    samples = [line.rsplit(" ", 1)[0] for line in page.splitlines() if not line.startswith("#")]
    assert len(samples) == len(set(samples))
    assert f'polyserve_router_slo_measured_total{{model="{M}",tier="t20"}} 2.0' in page


def test_fleet_spec_rejects_inconsistent_snapshots() -> None:
    with pytest.raises(ValueError, match="unknown tier"):
        FleetSpec(tiers=TIERS, backends=backends("t30"))
    with pytest.raises(ValueError, match="used twice"):
        FleetSpec(tiers=TIERS, backends=[*backends("t20"), *backends("t20")])
    with pytest.raises(ValueError, match="DNS-1123"):
        TierSpec(name="Gold Tier", model=M, tpot_ms=20, ttft_ms=300)


def test_fast_path_agrees_with_parsing_on_vllm_chunks() -> None:
    from polyserve.router.stream import _fast_verdict

    compact = [
        (
            '{"id":"c","choices":[{"index":0,"delta":{"content":" hi"},"logprobs":null,"finish_reason":null}]}',
            True,
        ),
        (
            '{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}',
            False,
        ),
        (
            '{"id":"c","choices":[{"index":0,"text":" a","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}',
            True,
        ),
        (
            '{"id":"c","choices":[{"index":0,"text":"","logprobs":null,"finish_reason":null}],"usage":null}',
            False,
        ),
        (
            '{"id":"c","choices":[{"index":0,"text":"\\"","logprobs":null,"finish_reason":null}],"usage":null}',
            True,
        ),
        # vLLM 0.33's reasoning parsers stream the thinking as delta.reasoning
        (
            '{"id":"c","choices":[{"index":0,"delta":{"reasoning":"Hmm"},"logprobs":null,"finish_reason":null}]}',
            True,
        ),
        (
            '{"id":"c","choices":[{"index":0,"delta":{"content":null,"reasoning":"Hmm"},"logprobs":null,"finish_reason":null}]}',
            True,
        ),
        (
            '{"id":"c","choices":[{"index":0,"delta":{"content":"","reasoning":""},"logprobs":null,"finish_reason":null}]}',
            False,
        ),
        (
            '{"id":"c","choices":[{"index":0,"delta":{"content":"\\"reasoning\\":\\"\\""},"logprobs":null,"finish_reason":null}]}',
            True,
        ),
    ]
    for payload, has in compact:
        assert _fast_verdict(payload) is has
        t = StreamTally()
        t.feed(b"data: " + payload.encode() + b"\n\n")
        assert t.tokens == int(has)
    for slow in (
        '{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}',  # last chunk
        '{"choices":[],"usage":{"completion_tokens":3}}',
        '{"choices": [{"index": 0, "text": "spaced", "finish_reason": null}]}',
        # both names in one delta ("content": ends "reasoning_content":): parsed
        '{"choices":[{"index":0,"delta":{"reasoning_content":"","content":"x"},"finish_reason":null}]}',
    ):
        assert _fast_verdict(slow) is None


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_tokens_count_and_come_first(field: str) -> None:
    """Thinking is output: its first token is the request's first token (vLLM 0.33 names the
    field ``reasoning``, read on the fast path; older servers ``reasoning_content``, parsed)."""
    from polyserve.router.stream import _fast_verdict

    choice = {"index": 0, "delta": {field: "Hmm"}, "logprobs": None, "finish_reason": None}
    compact = json.dumps({"id": "c", "choices": [choice]}, separators=(",", ":"))  # vLLM's
    spaced = sse({"choices": [{"index": 0, "delta": {field: " so"}, "finish_reason": None}]})
    answer = sse({"choices": [{"index": 0, "delta": {"content": "4"}, "finish_reason": "stop"}]})
    assert _fast_verdict(compact) is (True if field == "reasoning" else None)
    t = StreamTally()
    assert t.feed(b"data: " + compact.encode() + b"\n\n") == 1  # the first token
    assert t.feed(spaced + answer + b"data: [DONE]\n\n") == 2
    assert t.tokens == 3 and t.done


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        *[(s, "answer") for s in (200, 400, 429, 500, 501)],
        *[(503, "busy"), (502, "down"), (504, "down"), (599, "down")],
    ],
)
def test_backend_answers_are_the_requests_own_busy_or_down(status: int, kind: str) -> None:
    from polyserve.router.proxy import answer_kind

    assert answer_kind(status) == kind


def test_a_busy_backend_is_held_until_a_passing_health_check_and_stays_healthy() -> None:
    pool = ModelPool(M, TIERS, "polyserve")
    pool.set_backends(backends("t100"), now=0.0)
    b = pool.backends["b0"]
    pool.set_busy("b0")
    assert b.healthy and not b.view.available  # not down, but placed on no more
    assert not pool.set_health("b0", False)  # a failing check: down, still unavailable
    assert pool.set_health("b0", True)  # a passing check ends both: queues may move
    assert b.healthy and not b.busy and b.view.available
    assert not pool.set_health("b0", True)  # no change, no wake


def test_the_router_owns_the_priority_field() -> None:
    from polyserve.router.proxy import backend_body

    client = {"model": M, "prompt": "x", "priority": -100}
    assert backend_body(client, priority=None) == {"model": M, "prompt": "x"}
    assert backend_body(client, priority=2) == {"model": M, "prompt": "x", "priority": 2}
    assert client["priority"] == -100  # the client's body is not changed


def test_discovery_keeps_following_past_a_fleet_it_cannot_apply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    from collections.abc import AsyncIterator

    from polyserve.router.server import Router
    from polyserve.router.settings import RouterSettings

    bad = FleetSpec(tiers=[TIERS[0].model_copy(update={"profile": "no-such-profile"})])
    good = FleetSpec(tiers=TIERS, backends=backends("t20", "t100"))

    async def snapshots() -> AsyncIterator[FleetSpec]:
        yield bad
        yield good
        raise RuntimeError("watch broke")

    router = Router(RouterSettings(auth=False), FleetSpec(tiers=TIERS))
    asyncio.run(router._follow(snapshots()))
    pool = router.pools[M]
    assert sorted(pool.backends) == ["b0", "b1"]  # the good snapshot after the bad one
    assert "no-such-profile" in caplog.text and "fleet discovery stopped" in caplog.text


def test_backend_flags_take_one_key_file_for_every_backend(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from polyserve.cli import app
    from polyserve.router.cli import fleet_from_flags

    spec = fleet_from_flags(
        [], ["http://a:8000", "http://b:8000@t20"], M, "llama-3.1-8b-h100", "k1"
    )
    assert [b.api_key.get_secret_value() if b.api_key else None for b in spec.backends] == [
        "k1",
        "k1",
    ]
    assert all(
        b.api_key is None
        for b in fleet_from_flags([], ["http://a:8000"], M, "llama-3.1-8b-h100").backends
    )
    runner = CliRunner()
    missing = runner.invoke(
        app,
        [
            "router",
            "--no-auth",
            "--backend",
            "http://a:8000",
            "--backend-key-file",
            str(tmp_path / "x"),
        ],
    )
    assert missing.exit_code != 0 and "--backend-key-file: cannot read" in missing.output
    assert "Traceback" not in missing.output
    (tmp_path / "empty").write_text("\n")
    empty = runner.invoke(
        app,
        [
            "router",
            "--no-auth",
            "--backend",
            "http://a:8000",
            "--backend-key-file",
            str(tmp_path / "empty"),
        ],
    )
    assert empty.exit_code != 0 and "is empty" in empty.output
    alone = runner.invoke(
        app, ["router", "--no-auth", "--backend-key-file", str(tmp_path / "empty")]
    )
    assert alone.exit_code != 0 and "give --backend too" in alone.output

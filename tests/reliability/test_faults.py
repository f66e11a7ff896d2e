"""Faults survived, nothing lost: the router in front of failing mock engines, under load.

Every scenario sends a mix of streamed and whole chat/completions requests through the harness
(:mod:`tests.reliability.harness`), which classifies each answer and fails on any request that
did not end in a complete answer, a clear error or a 429 with Retry-After. The router's own books
must then be empty and its request counter must have counted each request once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from polyserve.mockengine import MockEngineThread
from polyserve.mockengine.testing import free_port_run
from polyserve.router.spec import FleetSpec
from polyserve.router.testing import RouterThread
from tests.mockengine.conftest import raw, wait_until
from tests.reliability import harness
from tests.reliability.burst import run_burst
from tests.reliability.conftest import (
    LOOSE,
    MODEL,
    TIERS,
    TIGHT,
    assert_router_settled,
    backend,
    metric_sum,
    residents,
    router_outcomes,
)

Engines = Callable[..., MockEngineThread]
Routers = Callable[..., RouterThread]


def running(engine: MockEngineThread) -> int:
    return engine.call(lambda: engine.servers[0].engine.num_running)


def ready(r: RouterThread, name: str) -> bool:
    return r.call(lambda rt: rt.pools[MODEL].backends[name].view.healthy)


# ------------------------------------------------------------------------- 1. killed mid-stream


def test_an_engine_killed_mid_stream(start_engine: Engines, start_router: Routers) -> None:
    doomed, spare = start_engine(), start_engine()
    # t100's only engine dies; t20's stays (t100 may borrow it: lazy promotion)
    fleet = FleetSpec(
        tiers=TIERS,
        backends=[backend("doomed", doomed.urls[0]), backend("spare", spare.urls[0], "t20")],
    )
    r = start_router(fleet)
    reqs = harness.mix(40, MODEL, tiers=("t100", "t100", "t20"), max_tokens=(40, 120))

    def streaming_on_doomed() -> bool:
        # tokens the router has relayed from the doomed engine and not yet settled: only
        # streams count them before their end, so a client already holds part of an answer
        return running(doomed) >= 3 and r.call(
            lambda rt: rt.pools[MODEL].backends["doomed"].view.generated_tokens > 0
        )

    async def kill() -> None:
        await harness.wait_for(streaming_on_doomed, 10.0, "streams under way on the doomed engine")
        doomed.call(doomed.servers[0].crash)

    tally = harness.run(r.url, reqs, concurrency=8, during=kill)
    tally.check()
    cut = [o for o in tally.of("error") if o.detail.startswith("stream error event")]
    assert cut and all(o.backend == "doomed" for o in cut), tally.summary()
    # whole answers in flight were retried elsewhere: only streams that had started see an error
    assert len(tally.of("error")) == len(cut), [o.detail for o in tally.of("error")]
    assert len(tally.of("complete")) >= len(reqs) // 2, tally.summary()
    assert not ready(r, "doomed")
    assert_router_settled(r, tally.sent)


# ------------------------------------------------------------------------- 2. refusing connections


def test_an_engine_refusing_connections(start_engine: Engines, start_router: Routers) -> None:
    refusing = start_engine(port=free_port_run(1), refuse_connections=True)
    good = start_engine()
    fleet = FleetSpec(
        tiers=TIERS,
        backends=[backend("refusing", refusing.urls[0]), backend("good", good.urls[0])],
    )
    # the first health round or a failed attempt (then retried) marks it down, whichever is first
    r = start_router(fleet, health_interval_s=60.0)
    tally = harness.run(r.url, harness.mix(30, MODEL, tiers=("t100",)), concurrency=6)
    tally.check()
    assert not tally.of("error"), tally.summary()  # a healthy engine was there all along
    assert all(o.backend == "good" for o in tally.of("complete"))
    assert not ready(r, "refusing")
    assert_router_settled(r, tally.sent)


# ------------------------------------------------------------------------- 3. slowed 10x


def test_an_engine_slowed_ten_times(start_engine: Engines, start_router: Routers) -> None:
    """Slow answers are still answers; the router's SLO metrics show the damage.

    The policy predicts steps from the profile, so a slow engine does not look loaded to it (the
    gradient even fills it first): what must hold is that every request still ends cleanly."""
    slow, fast = start_engine(slowdown=10.0), start_engine()
    tiers = [TIGHT.model_copy(update={"ttft_ms": 300.0})]  # 4 tokens at 10x miss it
    fleet = FleetSpec(
        tiers=tiers,
        backends=[backend("slow", slow.urls[0], "t20"), backend("fast", fast.urls[0], "t20")],
    )
    r = start_router(fleet)
    reqs = harness.mix(24, MODEL, tiers=("t20",), max_tokens=(4, 12))
    tally = harness.run(r.url, reqs, concurrency=8, timeout_s=30.0)
    tally.check()
    assert len(tally.of("complete")) == tally.sent, tally.summary()
    on_slow = sum(o.backend == "slow" for o in tally.of("complete"))
    measured = metric_sum(r.url, "polyserve_router_slo_measured_total", tier="t20")
    attained = metric_sum(r.url, "polyserve_router_slo_attained_total", tier="t20")
    assert measured == tally.sent and attained <= tally.sent - on_slow, (on_slow, attained)
    assert_router_settled(r, tally.sent)


# ------------------------------------------------------------------------- 4. broken /metrics


def test_engines_with_garbage_or_hanging_metrics(
    start_engine: Engines, start_router: Routers
) -> None:
    garbage = start_engine(metrics_garbage=True)
    hang = start_engine(metrics_hang=True)
    ok = start_engine()
    fleet = FleetSpec(
        tiers=TIERS,
        backends=[
            backend("garbage", garbage.urls[0]),
            backend("hang", hang.urls[0]),
            backend("ok", ok.urls[0], "t20"),
        ],
    )
    r = start_router(fleet)  # scrapes every 0.1 s, each bounded by the interval

    def scraped(name: str) -> float:
        return r.call(lambda rt: rt.probes.scraped_at.get((MODEL, name), -1.0))

    # the scrape loop goes round: the good engine's page keeps being read despite the hang
    wait_until(lambda: scraped("ok") > 0, 5.0, "a first scrape")
    first = scraped("ok")
    wait_until(lambda: scraped("ok") > first + 0.25, 5.0, "later scrapes of the good engine")
    assert scraped("garbage") < 0 and scraped("hang") < 0  # neither page was ever taken as load

    tally = harness.run(r.url, harness.mix(30, MODEL, tiers=("t100", "t20")), concurrency=8)
    tally.check()
    assert len(tally.of("complete")) == tally.sent, tally.summary()
    assert {o.backend for o in tally.of("complete")} >= {"ok"}
    foreign = r.call(
        lambda rt: {n: b.view.foreign_requests for n, b in rt.pools[MODEL].backends.items()}
    )
    assert foreign["garbage"] == foreign["hang"] == 0  # no page of theirs was taken as load
    assert raw(r.url, "GET", "/health")[0] == 200 and raw(r.url, "GET", "/metrics")[0] == 200
    assert ready(r, "garbage") and ready(r, "hang")  # /metrics is no health signal
    after = scraped("ok")
    wait_until(lambda: scraped("ok") > after, 5.0, "the scrape loop still going")
    assert_router_settled(r, tally.sent)


# ------------------------------------------------------------------------- 5. a tier's engines gone


def test_a_loose_tier_without_engines_borrows_tight_ones(
    start_engine: Engines, start_router: Routers
) -> None:
    loose, tight = start_engine(), start_engine()
    fleet = FleetSpec(
        tiers=TIERS,
        backends=[backend("loose", loose.urls[0]), backend("tight", tight.urls[0], "t20")],
    )
    r = start_router(fleet)
    loose.call(loose.servers[0].crash)
    wait_until(lambda: not ready(r, "loose"), 5.0, "the crashed engine marked down")
    tally = harness.run(r.url, harness.mix(24, MODEL, tiers=("t100", "t20")), concurrency=6)
    tally.check()
    assert len(tally.of("complete")) == tally.sent, tally.summary()
    assert {o.backend for o in tally.outcomes} == {"tight"}
    assert metric_sum(r.url, "polyserve_router_promotions_total", tier="t100") == 12
    assert_router_settled(r, tally.sent)


@pytest.mark.parametrize("miss", ["reject", "degrade", "wait"])
def test_a_tight_tier_without_engines_gets_clear_answers(
    start_engine: Engines, start_router: Routers, miss: str
) -> None:
    loose, tight = start_engine(), start_engine()
    tiers = [TIGHT.model_copy(update={"ttft_ms": 300.0, "on_deadline_miss": miss}), LOOSE]
    fleet = FleetSpec(
        tiers=tiers,
        backends=[backend("loose", loose.urls[0]), backend("tight", tight.urls[0], "t20")],
    )
    r = start_router(fleet, queue_timeout_s=2.0)  # wait/degrade: nowhere to go, ever
    tight.call(tight.servers[0].crash)
    wait_until(lambda: not ready(r, "tight"), 5.0, "the crashed engine marked down")
    tally = harness.run(r.url, harness.mix(16, MODEL, tiers=("t20", "t100")), 8, 15.0)
    print(miss, tally.summary(), [o.detail for o in tally.outcomes if o.req.index % 2 == 0])
    tally.check()
    t20 = [o for o in tally.outcomes if o.req.headers["x-polyserve-tier"] == "t20"]
    t100 = [o for o in tally.outcomes if o.req.headers["x-polyserve-tier"] == "t100"]
    assert all(o.kind == "complete" and o.backend == "loose" for o in t100), tally.summary()
    # a tighter tier never runs on a looser tier's engine: its requests are refused, clearly
    # reject: 429 at the deadline; degrade/wait: nowhere to go, so 503 at the queue timeout
    want = 429 if miss == "reject" else 503
    assert all(o.kind != "complete" and o.status == want for o in t20), [o.detail for o in t20]
    assert_router_settled(r, tally.sent)


# ------------------------------------------------------------------------- 6. router restarted


def test_the_router_restarted_under_load(start_engine: Engines, start_router: Routers) -> None:
    e0, e1 = start_engine(), start_engine()
    fleet = FleetSpec(tiers=TIERS, backends=[backend("e0", e0.urls[0]), backend("e1", e1.urls[0])])
    first = start_router(fleet)
    port = first.call(lambda rt: rt.port)
    reqs = harness.mix(16, MODEL, max_tokens=(300, 400))  # long: in flight at the restart
    box: list[RouterThread] = []

    async def restart() -> None:
        def streaming() -> bool:
            held = first.call(
                lambda rt: [b.view.generated_tokens for b in rt.pools[MODEL].backends.values()]
            )
            return residents(first) >= 12 and sum(held) >= 40

        await harness.wait_for(streaming, 10.0, "streams under way")
        await asyncio.to_thread(first.__exit__, None, None, None)
        first.router = None
        box.append(await asyncio.to_thread(start_router, fleet, port=port))

    tally = harness.run(first.url, reqs, concurrency=16, timeout_s=20.0, during=restart)
    print(tally.summary(), [o.detail for o in tally.outcomes])
    tally.check()  # in-flight requests got an answer: an error event or a 503, not a cut
    assert len(tally.of("error")) >= 12, tally.summary()
    details = {o.detail for o in tally.of("error")}
    assert details <= {
        "stream error event: The router is shutting down.",
        "503: The router is shutting down.",
    }
    assert "stream error event: The router is shutting down." in details
    second = box[0]
    t0 = time.monotonic()
    wait_until(lambda: raw(second.url, "GET", "/health")[0] == 200, 5.0, "the new router")
    after = harness.run(second.url, harness.mix(12, MODEL), concurrency=6)
    assert time.monotonic() - t0 < 10.0
    after.check()
    assert len(after.of("complete")) == after.sent, after.summary()
    assert_router_settled(second, after.sent)  # a fresh router: only the new requests counted
    assert router_outcomes(second.url) == {"ok": after.sent}


# ------------------------------------------------------------------------- 7. a burst of 10x


def test_a_burst_of_ten_times_capacity(tmp_path: Path) -> None:
    """Excess gets 429 + Retry-After, the queue stays within its limit, nothing is lost, and the
    router's memory comes back (a generous bound: it catches leaks, not noise; figures in
    bench/burst.py)."""
    res = run_burst(tmp_path, waves=3, per_wave=80, engines=2, max_num_seqs=4, queue_limit=16)
    for tally in res.tallies:
        print(tally.summary())
        tally.check()
    assert res.counted == res.sent == 240
    rejected = sum(len(t.of("rejected")) for t in res.tallies)
    complete = sum(len(t.of("complete")) for t in res.tallies)
    assert rejected > 0 and complete >= res.capacity, (rejected, complete)
    assert res.max_pending <= res.queue_limit
    mib = 1024
    print(res.rss_start_kib, res.rss_peak_kib, res.rss_after_kib)
    assert res.rss_peak_kib < res.rss_start_kib + 256 * mib
    assert res.rss_after_kib[-1] < res.rss_start_kib + 64 * mib

"""The router's Prometheus metrics (prefix ``polyserve_router_``).

Events (requests, latencies, promotions, retries) are counters and histograms updated as they
happen. State (queues, backend load, drain candidates) is read from the pools when Prometheus
scrapes, so a gauge can never go stale or outlive its backend; so are the counts the pool keeps
for the router's state too (shed, SLO measured and attained), so the two can never disagree.

The names the autoscaler's Prometheus source reads are those of ``polyserve.autoscale.signals``
(``METRICS``): pending, oldest pending wait, requests, shed, and per backend ready, draining,
requests and idle seconds.

=============================================  ====================================================
metric                                         labels / meaning
=============================================  ====================================================
``polyserve_router_requests_total``            model, tier, outcome (ok, rejected, queue_full,
                                               backend_error, client_error, cancelled, unavailable)
``polyserve_router_shed_total``                model, tier: refused for their deadline (429)
``polyserve_router_slo_measured_total``        model, tier: requests judged by the SLO
``polyserve_router_slo_attained_total``        model, tier: ... that met every deadline
``polyserve_router_ttft_seconds``              model, tier: first token at the router
``polyserve_router_tpot_seconds``              model, tier: mean time per output token
``polyserve_router_queue_wait_seconds``        model, tier: time queued before placement
``polyserve_router_promotions_total``          model, tier, host_tier
``polyserve_router_retries_total``             model, backend, reason
``polyserve_router_pending_requests``          model, tier: queued now
``polyserve_router_oldest_pending_seconds``    model, tier: the head's wait
``polyserve_router_backend_requests``          model, backend, tier: requests on it (all sources)
``polyserve_router_backend_foreign_requests``  model, backend, tier: ... not sent by this router
``polyserve_router_backend_kv_tokens``         model, backend, tier: KV held (accounted)
``polyserve_router_backend_ready``             model, backend, tier: 1 healthy, 0 not
``polyserve_router_backend_draining``          model, backend, tier: 1 takes no new requests
``polyserve_router_backend_idle_seconds``      model, backend, tier: holding no request this long
=============================================  ====================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from polyserve.router.pool import ModelPool

PREFIX = "polyserve_router_"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.5)
OUTCOMES = (
    "ok",
    "rejected",
    "queue_full",
    "backend_error",
    "client_error",
    "cancelled",
    "unavailable",
)


class _Series:
    """One family's samples by label values. A model removed and served again has a retired pool
    next to the new one, both with its name: their samples are combined (``sum`` for counts,
    ``max`` for 0/1 flags and waits), since an exposition may hold each label set only once."""

    def __init__(self, family: GaugeMetricFamily | CounterMetricFamily, combine: str) -> None:
        self.family = family
        self._combine = sum if combine == "sum" else max
        self._values: dict[tuple[str, ...], list[float]] = {}

    def add(self, labels: list[str], value: float) -> None:
        self._values.setdefault(tuple(labels), []).append(value)

    def metric(self) -> Metric:
        for labels, values in self._values.items():
            self.family.add_metric(list(labels), self._combine(values))
        return self.family


class _StateCollector(Collector):
    def __init__(self, pools: Callable[[], Iterable[ModelPool]], clock: Callable[[], float]):
        self._pools = pools
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock()

        def gauge(name: str, doc: str, labels: list[str], combine: str = "sum") -> _Series:
            return _Series(GaugeMetricFamily(PREFIX + name, doc, labels=labels), combine)

        def counter(name: str, doc: str) -> _Series:
            return _Series(CounterMetricFamily(PREFIX + name, doc, labels=["model", "tier"]), "sum")

        tlabels = ["model", "tier"]
        pending = gauge("pending_requests", "Requests queued in the router.", tlabels)
        oldest = gauge(
            "oldest_pending_seconds", "Wait of the oldest queued request.", tlabels, "max"
        )
        blabels = ["model", "backend", "tier"]
        residents = gauge("backend_requests", "Requests on the backend, all sources.", blabels)
        foreign = gauge(
            "backend_foreign_requests", "Requests on the backend from elsewhere.", blabels
        )
        kv = gauge("backend_kv_tokens", "KV tokens the backend holds (accounted).", blabels)
        up = gauge("backend_ready", "1 if the backend is healthy.", blabels, "max")
        draining = gauge(
            "backend_draining", "1 if the backend takes no new requests.", blabels, "max"
        )
        idle = gauge(
            "backend_idle_seconds", "Seconds the backend has held no request.", blabels, "max"
        )
        # the pool's own counts (the state's too), so the two can never disagree
        shed = counter("shed", "Requests refused because their deadline could not be met.")
        measured = counter("slo_measured", "Requests judged by their SLO.")
        attained = counter("slo_attained", "Requests that met every deadline.")
        for pool in self._pools():
            for i, spec in enumerate(pool.tier_specs):
                pending.add([pool.model, spec.name], pool.queues.lengths()[i])
                oldest.add([pool.model, spec.name], pool.oldest_wait_s(i, now))
            tiers = [s.name for s in pool.tier_specs]
            for count, counts in (
                (shed, pool.shed_total),
                (measured, pool.measured_total),
                (attained, pool.attained_total),
            ):
                # every tier served (0 until it counts one), and any since removed that counted
                for name in dict.fromkeys([*tiers, *counts]):
                    count.add([pool.model, name], counts.get(name, 0))
            for b in pool.backends.values():
                lab = [pool.model, b.name, b.spec.tier or ""]
                residents.add(lab, b.view.residents)
                foreign.add(lab, b.view.foreign_requests)
                kv.add(lab, b.view.kv_tokens)
                up.add(lab, 1.0 if b.healthy else 0.0)
                draining.add(lab, 1.0 if b.view.draining else 0.0)
                idle.add(lab, pool.idle_s(b, now))
        for series in (pending, oldest, residents, foreign, kv, up, draining, idle):
            yield series.metric()
        for series in (shed, measured, attained):
            yield series.metric()


class RouterMetrics:
    def __init__(
        self, pools: Callable[[], Iterable[ModelPool]], clock: Callable[[], float]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        tier = ["model", "tier"]
        self.requests = Counter(
            PREFIX + "requests", "Requests by final outcome.", [*tier, "outcome"], registry=r
        )
        self.ttft = Histogram(
            PREFIX + "ttft_seconds", "Time to first token at the router.", tier,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tpot = Histogram(
            PREFIX + "tpot_seconds", "Mean time per output token after the first.", tier,
            buckets=TPOT_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            PREFIX + "queue_wait_seconds", "Time queued in the router before placement.", tier,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.promotions = Counter(
            PREFIX + "promotions", "Requests placed on a tighter tier's backend.",
            [*tier, "host_tier"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            PREFIX + "retries", "Attempts retried on another backend.",
            ["model", "backend", "reason"], registry=r,
        )  # fmt: skip
        r.register(_StateCollector(pools, clock))

"""The mock engine and the router's scraper, pinned to vLLM 0.33.0's extracted surface.

``polyserve/wire/vllm_surface/vllm-0.33.0.json`` is written by ``tools/vllm_surface/extract.py``
from the wheel; these tests read only that file (no network, no wheel).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from polyserve.mockengine import MockEngineSettings, MockEngineThread
from polyserve.wire.vllm_metrics import (
    KV_CACHE_USAGE,
    NUM_REQUESTS_RUNNING,
    NUM_REQUESTS_WAITING,
    OLD_KV_CACHE_USAGE,
    EngineLoad,
    parse_engine_load,
)
from polyserve.wire.vllm_surface import load
from tests.mockengine.conftest import fast_profile

SURFACE = load("0.33.0")
METRICS: dict[str, dict[str, Any]] = {m["name"]: m for m in SURFACE["metrics"] if m["name"]}
ENGINE_METRICS = {n: m for n, m in METRICS.items() if m["scope"] == "engine"}

#: vLLM 0.33.0 engine metrics the mock does not serve. An engineer adding one to the mock removes
#: it here; a new vLLM metric in a regenerated extraction shows up here as a failure.
EXPECTED_MISSING: frozenset[str] = frozenset(
    {
        # always created by vLLM's PrometheusStatLogger (vllm/v1/metrics/loggers.py)
        "vllm:cache_config_info",  # log_metrics_info("cache_config", ...), labels from CacheConfig
        # created only behind options the mock does not model (see each entry's created_when)
        "vllm:num_requests_kv_fetch_by_stage",
        "vllm:corrupted_requests",
        "vllm:watermark_requests",
        "vllm:kv_block_lifetime_seconds",
        "vllm:kv_block_idle_before_evict_seconds",
        "vllm:kv_block_reuse_gap_seconds",
        "vllm:lora_requests_info",
        "vllm:diffusion_num_denoising_steps",
        "vllm:diffusion_num_canvas_positions",
        "vllm:diffusion_num_committed_tokens",
        "vllm:spec_decode_num_drafts",
        "vllm:spec_decode_num_draft_tokens",
        "vllm:spec_decode_num_accepted_tokens",
        "vllm:spec_decode_num_accepted_tokens_per_pos",
        # always created by vLLM (PerfMetricsProm, vllm/v1/metrics/perf.py)
        "vllm:estimated_flops_per_gpu_total",
        "vllm:estimated_read_bytes_per_gpu_total",
        "vllm:estimated_write_bytes_per_gpu_total",
    }
)

#: routes the mock serves that vLLM does not (none so far)
MOCK_EXTRA_ROUTES: frozenset[tuple[str, str]] = frozenset()

MAX_MODEL_LEN = 2048  # fast_profile's


@pytest.fixture(scope="module")
def mock_page() -> Iterator[str]:
    with MockEngineThread(MockEngineSettings(port=0), fast_profile()) as fleet:
        page = urllib.request.urlopen(fleet.urls[0] + "/metrics", timeout=10).read().decode()
        yield page


def served_families(page: str) -> dict[str, Any]:
    """The page's vllm: families, less prometheus_client's ``<counter|histogram>_created``
    timestamps (vLLM leaves them on too: nothing in the wheel disables created series)."""
    fams = {f.name: f for f in text_string_to_metric_families(page) if f.name.startswith("vllm:")}
    return {
        n: f
        for n, f in fams.items()
        if not (
            n.endswith("_created")
            and METRICS.get(n.removesuffix("_created"), {}).get("type") in ("counter", "histogram")
        )
    }


def expected_buckets(metric: dict[str, Any]) -> list[float]:
    b = metric["buckets"]
    if b["values"] is not None:
        return [float(v) for v in b["values"]]
    assert b["depends_on"] == "max_model_len", b
    out: list[float] = []
    exponent = 0
    while True:
        for m in b["mantissas"]:
            if m * 10**exponent > MAX_MODEL_LEN:
                return out
            out.append(float(m * 10**exponent))
        exponent += 1


def test_the_extraction_is_the_pinned_wheel() -> None:
    assert SURFACE["version"] == "0.33.0"
    assert SURFACE["about"]["wheel"].startswith("vllm-0.33.0-")
    # the load gauges the router reads, as vLLM defines them
    for name in (NUM_REQUESTS_RUNNING, NUM_REQUESTS_WAITING, KV_CACHE_USAGE):
        assert METRICS[name]["type"] == "gauge"
        assert METRICS[name]["labels"] == ["model_name", "engine"]
    # 0.33.0 no longer has the old KV gauge; releases of the last year did (the parser reads both)
    assert OLD_KV_CACHE_USAGE not in METRICS
    assert SURFACE["metrics_notes"][OLD_KV_CACHE_USAGE].startswith("absent")


def test_every_metric_the_mock_serves_is_vllms_with_the_same_shape(mock_page: str) -> None:
    families = served_families(mock_page)
    assert families, "the mock serves no vllm: metrics"
    for name, fam in families.items():
        assert name in METRICS, f"{name} is not a vLLM 0.33.0 metric"
        want = METRICS[name]
        assert fam.type == want["type"], name
        sample_labels: list[str] = []
        for s in fam.samples:
            keys = [k for k in s.labels if k != "le"]
            if len(keys) > len(sample_labels):
                sample_labels = keys
        assert sorted(sample_labels) == sorted(want["labels"]), name
        for label, values in want.get("label_values", {}).items():
            served = {s.labels[label] for s in fam.samples if label in s.labels}
            assert served <= set(values), (name, label, served - set(values))
        if fam.type == "histogram":
            first = next(s.labels for s in fam.samples if s.name.endswith("_bucket"))
            key = {k: v for k, v in first.items() if k != "le"}
            les = [
                float(s.labels["le"])
                for s in fam.samples
                if s.name.endswith("_bucket")
                and {k: v for k, v in s.labels.items() if k != "le"} == key
            ]
            assert les[-1] == float("inf"), name
            assert les[:-1] == expected_buckets(want), name


def test_the_vllm_metrics_the_mock_does_not_serve_are_the_expected_ones(mock_page: str) -> None:
    missing = set(ENGINE_METRICS) - set(served_families(mock_page))
    assert missing == EXPECTED_MISSING, (
        f"newly served (drop from EXPECTED_MISSING): {sorted(EXPECTED_MISSING - missing)}; "
        f"newly missing: {sorted(missing - EXPECTED_MISSING)}"
    )


def test_the_mocks_routes_are_vllm_routes() -> None:
    from polyserve.mockengine.server import EngineServer

    app = EngineServer(MockEngineSettings(port=0), fast_profile()).make_app()
    mock_routes = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"  # aiohttp adds HEAD to each GET
    }
    vllm_routes = {(r["method"], r["path"]) for r in SURFACE["routes"]}
    assert ("POST", "/v1/chat/completions") in mock_routes
    assert mock_routes - MOCK_EXTRA_ROUTES <= vllm_routes, mock_routes - vllm_routes


# ------------------------------------------------------------------------ the router's scraper


def synthesized_page(
    engine_values: dict[str, dict[str, float]], kv_name: str = KV_CACHE_USAGE
) -> str:
    """A /metrics page with every series of every vLLM metric whose labels are known, for
    engines ``engine_values`` (engine -> gauge name -> value); other samples are 7."""
    lines: list[str] = []
    for m in SURFACE["metrics"]:
        if not m["name"] or m["labels"] is None:
            continue
        name = kv_name if m["name"] == KV_CACHE_USAGE else m["name"]
        lines.append(f"# TYPE {name} {m['type']}")
        extras = [lab for lab in m["labels"] if lab not in ("model_name", "engine")]
        extra_values = m.get("label_values", {})
        for engine, values in engine_values.items():
            for v in extra_values.get(extras[0], ["x"]) if extras else [None]:
                labels = {"model_name": "m"}
                if "engine" in m["labels"]:
                    labels["engine"] = engine
                for lab in extras:
                    labels[lab] = v if lab == extras[0] and v is not None else "x"
                lab_txt = ",".join(f'{k}="{val}"' for k, val in labels.items())
                if m["type"] == "histogram":
                    bounds = m.get("buckets", {}).get("values") or [1.0, 10.0]
                    for le in [*bounds, "+Inf"]:
                        lines.append(f'{name}_bucket{{{lab_txt},le="{le}"}} 7')
                    lines.append(f"{name}_count{{{lab_txt}}} 7")
                    lines.append(f"{name}_sum{{{lab_txt}}} 7")
                elif m["type"] == "counter":
                    lines.append(f"{m['exposed_as'][0]}{{{lab_txt}}} 7")
                else:
                    lines.append(f"{name}{{{lab_txt}}} {values.get(m['name'], 7)}")
    return "\n".join(lines) + "\n"


DP = {
    "0": {NUM_REQUESTS_RUNNING: 3, NUM_REQUESTS_WAITING: 1, KV_CACHE_USAGE: 0.2},
    "1": {NUM_REQUESTS_RUNNING: 2, NUM_REQUESTS_WAITING: 4, KV_CACHE_USAGE: 0.6},
}


def test_the_scraper_reads_a_full_data_parallel_vllm_page() -> None:
    page = synthesized_page(DP)
    assert 'engine="1"' in page and "vllm:num_requests_waiting_by_reason{" in page
    load = parse_engine_load(page)
    assert load is not None
    # running and waiting are summed over engines; the KV fraction is their mean, not the sum
    assert (load.running, load.waiting, load.bad_lines) == (5.0, 5.0, 0)
    assert load.kv_usage == pytest.approx(0.4)


def test_the_scraper_reads_the_old_kv_name() -> None:
    load = parse_engine_load(synthesized_page(DP, kv_name=OLD_KV_CACHE_USAGE))
    assert load is not None and load.kv_usage == pytest.approx(0.4)
    # with both names on a page, the current one wins
    both = synthesized_page(DP) + f'{OLD_KV_CACHE_USAGE}{{model_name="m",engine="0"}} 0.9\n'
    load = parse_engine_load(both)
    assert load is not None and load.kv_usage == pytest.approx(0.4)


def test_one_engine_page_is_its_own_load() -> None:
    load = parse_engine_load(synthesized_page({"0": DP["0"]}))
    assert load is not None
    assert load == EngineLoad(running=3.0, waiting=1.0, kv_usage=load.kv_usage, bad_lines=0)
    assert load.kv_usage == pytest.approx(0.2)

"""``polyserve load``: the plan, and a short run against a router and mock engines."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from polyserve.cli import app
from polyserve.loadgen.plan import TierInfo, plan, prompt_text
from polyserve.mockengine import MockEngineSettings, MockEngineThread
from polyserve.router.settings import RouterSettings
from polyserve.router.spec import BackendSpec, FleetSpec, TierSpec
from polyserve.router.testing import RouterThread
from polyserve.sim.workload import WorkloadError
from polyserve.wire import tokenizer

TIERS = [TierInfo("t20", 20, 500), TierInfo("t50", 50, 1000), TierInfo("t100", 100, 2000)]


def test_plan_compresses_the_trace_caps_lengths_and_draws_tiers() -> None:
    p = plan("azure-conv", TIERS, requests=200, duration_s=10.0, max_output=64, max_prompt=1000)
    assert len(p) == 200 and p[0].time == 0.0 and p[-1].time == pytest.approx(10.0)
    assert all(1 <= x.output_tokens <= 64 and 1 <= x.prompt_tokens <= 1000 for x in p)
    assert {x.tier.name for x in p} == {"t20", "t50", "t100"}
    only_loose = plan("azure-conv", TIERS, 50, 5.0, mix=[0, 0, 1])
    assert {x.tier.name for x in only_loose} == {"t100"}
    with pytest.raises(WorkloadError, match="needs 3 non-negative weights"):
        plan("azure-conv", TIERS, 50, 5.0, mix=[1, 1])


def test_prompt_text_has_the_planned_token_count() -> None:
    for n in (1, 2, 17, 300):
        assert tokenizer.completion_prompt_tokens(prompt_text(n, 3)) == n


def test_load_run_answers_every_request_and_writes_the_report(tmp_path: Path) -> None:
    profile = "llama-3.1-8b-h100"
    with MockEngineThread(MockEngineSettings(port=0, replicas=3, profile=profile)) as engines:
        model = "meta-llama/Llama-3.1-8B-Instruct"
        tiers = [
            TierSpec(name=t.name, model=model, tpot_ms=t.tpot_ms, ttft_ms=t.ttft_ms) for t in TIERS
        ]
        backends = [
            BackendSpec(name=f"e{i}", url=u, model=model, tier=t.name)
            for i, (u, t) in enumerate(zip(engines.urls, TIERS, strict=True))
        ]
        settings = RouterSettings(port=0, auth=False)
        with RouterThread(settings, FleetSpec(tiers=tiers, backends=backends)) as r:
            out = tmp_path / "report"
            args = [
                "load",
                "--url",
                r.url,
                "--requests",
                "40",
                "--duration",
                "3",
                "--max-output",
                "24",
            ]
            result = CliRunner().invoke(app, [*args, "--grace", "30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    rows = {line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| t")}
    assert rows == {"tier", "t20", "t50", "t100"}
    total = next(line for line in report.splitlines() if line.startswith("| all"))
    cells = [c.strip() for c in total.split("|")[1:-1]]
    assert cells[2] == "40" and cells[3] == "40"  # every request sent was answered, all ok
    assert (out / "latency_vs_slo.png").stat().st_size > 0
    assert (out / "requests_per_backend.png").stat().st_size > 0

"""``polyserve demo`` end to end: the local fleet, a short load, the report, nothing left behind."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from polyserve.local.config import LocalConfig, LocalTier
from polyserve.router.settings import ConfigError, read_model_file


def test_demo_answers_every_request_writes_the_report_and_leaves_no_process(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "polyserve",
        "demo",
        "--duration",
        "4",
        "--requests",
        "40",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "160"}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    engines = re.findall(r"engine (\S+) \((\S+)\) http://127\.0\.0\.1:(\d+) pid (\d+)", done.stdout)
    assert sorted(t for _, t, _, _ in engines) == ["t100", "t20", "t50"]
    report = (out / "report.md").read_text()
    rows = {
        line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")
    }
    assert {"t20", "t50", "t100", "all"} <= set(rows)
    cells = [c.strip() for c in rows["all"].split("|")[1:-1]]
    assert cells[2] == "40" and int(cells[3]) + int(cells[4]) == 40 and cells[5] == "0"
    for _, _, port, pid in engines:  # every engine process is gone and its port closed
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
        with socket.socket() as s, pytest.raises(OSError):
            s.connect(("127.0.0.1", int(port)))


def test_local_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min <= replicas <= max"):
        LocalTier(name="t", tpot_ms=20, ttft_ms=500, replicas=5, max=2)
    bad = tmp_path / "fleet.yaml"
    bad.write_text("tiers: []\nprofile: x\n")
    with pytest.raises(ConfigError, match=r"fleet\.yaml: tiers"):
        read_model_file(bad, LocalConfig, "local fleet file")


def test_local_actuator_starts_and_drains_engines() -> None:
    import asyncio

    from polyserve import precise_loop
    from polyserve.local.up import LocalFleet

    cfg = LocalConfig(
        port=0, autoscale=False, tiers=[LocalTier(name="t50", tpot_ms=50, ttft_ms=1000)]
    )

    async def wait_for(cond: object, what: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not cond():  # type: ignore[operator]
            assert loop.time() < end, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def main() -> None:
        fleet = LocalFleet(cfg, announce=lambda line: None)
        try:
            router = await fleet.start()
            backends = lambda: sorted(router.pools[fleet.model].backends)  # noqa: E731
            assert fleet.replicas("t50") == 1 and len(backends()) == 1
            fleet.scale("t50", 2, [], now=0.0)
            await wait_for(lambda: len(backends()) == 2, "the second engine in the router")
            first = backends()[0]
            pid = fleet.engines.running[first].proc.pid
            fleet.scale("t50", 1, [first], now=1.0)
            await wait_for(lambda: not fleet._tasks, "the drain to finish")
            assert backends() == list(fleet.engines.running)
            assert first not in fleet.engines.running and fleet.replicas("t50") == 1
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
            )
        finally:
            await fleet.close()

    precise_loop.run(main())


def test_local_engines_run_the_tiers_derived_vllm_flags() -> None:
    """``polyserve up`` gives each tier's engines the flags the operator derives (stock vLLM by
    default); the ``polyserve`` engine adds dynamic chunking to the tier's step budget."""
    from polyserve.local.up import LocalFleet
    from polyserve.tier_engine import derive_tier_engine

    stock = LocalFleet(LocalConfig())
    for t in stock.cfg.tiers:
        derived = derive_tier_engine(stock.profile, t.tpot_ms, t.ttft_ms, shared=True)
        assert stock.engine_args(t.name) == tuple(derived.vllm_args())
        assert stock.chunk_budget_ms(t.name) == 0.0
    ours = LocalFleet(LocalConfig(engine="polyserve"))
    args = ours.engine_args("t20")
    assert args[:-2] == stock.engine_args("t20") and args[-2] == "--chunk-budget-ms"
    assert 0 < float(args[-1]) < 20

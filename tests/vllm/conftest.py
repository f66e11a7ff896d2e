"""Say it in the summary when the scheduler plugin was not run against vLLM itself."""

from __future__ import annotations

from typing import Any

PLUGIN_TESTS = "tests/vllm/test_scheduler_plugin.py"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if PLUGIN_TESTS in r.nodeid]
    if skipped:
        terminalreporter.write_sep(
            "!",
            f"polyserve.vllm NOT tested against vLLM: {PLUGIN_TESTS} skipped (vLLM 0.33.0 and "
            "torch are not importable here; install polyserve[vllm] to run it)",
            yellow=True,
            bold=True,
        )

"""Devcluster checks that need no binaries: the version pin, launchers, the loud skip."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from polyserve.devcluster import (
    KUBE_VERSION,
    BinariesNotFoundError,
    Launcher,
    find_binaries,
    mock_engine_launcher,
    no_process_launcher,
)
from polyserve.devcluster.node_agent import _set_flag

REPO = Path(__file__).resolve().parents[2]


def test_kube_version_matches_the_go_module_pin() -> None:
    go_mod = (REPO / "tools" / "kube" / "go.mod").read_text()
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v1\.\d+\.\d+)(\s*//.*)?$", go_mod, re.MULTILINE)
    assert pinned is not None
    assert pinned.group(1) == KUBE_VERSION
    # Every staging module is replaced by the matching v0.<minor>.<patch> release.
    staging = f"v0.{KUBE_VERSION.removeprefix('v1.')}"
    replaced = re.findall(r"^\s*(k8s\.io/\S+) => (k8s\.io/\S+) (\S+)\s*$", go_mod, re.MULTILINE)
    assert len(replaced) >= 25
    assert all(src == dst and ver == staging for src, dst, ver in replaced), replaced


def test_missing_binaries_name_the_build_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYSERVE_KUBE_BIN", str(tmp_path))
    with pytest.raises(BinariesNotFoundError, match=r"make kube-build"):
        find_binaries()


def _pod(image: str, command: list[str] | None = None, args: list[str] | None = None) -> dict:  # type: ignore[type-arg]
    container: dict[str, object] = {"name": "engine", "image": image}
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": [container]}}


def test_mock_engine_launcher_runs_the_mock_engine_on_the_given_port() -> None:
    pod = _pod(
        "ghcr.io/example/polyserve:0.1",
        command=["polyserve", "mock-engine"],
        args=["--profile", "llama-8b-h100", "--port", "8000", "--host=0.0.0.0"],
    )
    argv = mock_engine_launcher(pod, 41234)
    assert argv is not None
    i = argv.index("mock-engine")
    assert Path(argv[0]).name in {"polyserve", Path(sys.executable).name}
    assert argv[i + 1 :] == ["--profile", "llama-8b-h100", "--port", "41234", "--host", "127.0.0.1"]


def test_mock_engine_launcher_with_args_only_and_no_port() -> None:
    argv = mock_engine_launcher(_pod("polyserve", args=["mock-engine", "--seed", "1"]), 5)
    assert argv is not None
    assert argv[argv.index("mock-engine") + 1 :] == [
        "--seed",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        "5",
    ]


@pytest.mark.parametrize(
    ("image", "command", "args"),
    [
        ("nginx:1.27", ["polyserve", "mock-engine"], None),  # not the polyserve image
        ("polyserve:0.1", ["polyserve", "router"], None),  # not the mock engine
        ("vllm/vllm-openai:v0.10.0", None, ["--model", "x"]),
    ],
)
def test_mock_engine_launcher_ignores_other_pods(
    image: str, command: list[str] | None, args: list[str] | None
) -> None:
    assert mock_engine_launcher(_pod(image, command, args), 1) is None


def test_no_process_launcher_runs_nothing() -> None:
    pod = _pod("polyserve", command=["polyserve", "mock-engine"])
    assert mock_engine_launcher(pod, 1) is not None
    launcher: Launcher = no_process_launcher
    assert launcher(pod, 1) is None


def test_set_flag() -> None:
    assert _set_flag(["--port"], "--port", "9") == ["--port", "9"]
    assert _set_flag(["-x", "--port=1", "y"], "--port", "9") == ["-x", "--port", "9", "y"]


@pytest.mark.timeout(120)
def test_cluster_tests_skip_loudly_without_binaries(tmp_path: Path) -> None:
    """Without binaries the cluster tests SKIP (never pass, never fail) and say how to build."""
    env = {k: v for k, v in os.environ.items() if k != "POLYSERVE_REQUIRE_KUBE"}
    env["POLYSERVE_KUBE_BIN"] = str(tmp_path)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "version_is"]
    cmd.append(str(REPO / "tests" / "k8s" / "test_devcluster.py"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout
    assert "Kubernetes binaries not built: run `make kube-build`" in proc.stdout
    assert "Kubernetes tests (tests/k8s) were SKIPPED" in proc.stdout

    env["POLYSERVE_REQUIRE_KUBE"] = "1"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode != 0, "POLYSERVE_REQUIRE_KUBE=1 turns the skip into an error"
    assert "POLYSERVE_REQUIRE_KUBE=1" in proc.stdout

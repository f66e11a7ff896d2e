"""Fixtures for tests against a real Kubernetes control plane (polyserve.devcluster).

One cluster per test session. When the binaries are not built the cluster tests SKIP with the
reason and a banner at the end of the run; with ``POLYSERVE_REQUIRE_KUBE=1`` (CI sets it after
``make kube-build``) a missing binary is an error instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from polyserve.devcluster import (
    BinariesNotFoundError,
    DevCluster,
    NodeAgentConfig,
    find_binaries,
    mock_engine_launcher,
)

TEST_SERVER_IMAGE = "polyserve.io/test-http-server:latest"
HTTP_SERVER = Path(__file__).with_name("http_server.py")

_skipped_for_binaries: list[str] = []

T = TypeVar("T")


def launch_for_tests(pod: dict[str, Any], port: int) -> list[str] | None:
    """The test server image runs tests/k8s/http_server.py; else the default launcher."""
    for container in pod["spec"]["containers"]:
        if container.get("image") == TEST_SERVER_IMAGE:
            args = [str(a) for a in container.get("args") or []]
            return [sys.executable, str(HTTP_SERVER), *args, "--port", str(port)]
    return mock_engine_launcher(pod, port)


@pytest.fixture(scope="session")
def devcluster() -> Iterator[DevCluster]:
    try:
        binaries = find_binaries()
    except BinariesNotFoundError as exc:
        if os.environ.get("POLYSERVE_REQUIRE_KUBE") == "1":
            pytest.fail(f"POLYSERVE_REQUIRE_KUBE=1 but {exc}", pytrace=False)
        _skipped_for_binaries.append(str(exc))
        pytest.skip(str(exc))
    config = NodeAgentConfig(launcher=launch_for_tests, gpus=8)
    with DevCluster(binaries=binaries, node_agent=config) as cluster:
        yield cluster
        assert cluster.node_agent is not None
        assert cluster.node_agent.errors == [], cluster.node_agent.errors


@pytest.fixture(scope="session")
def api(devcluster: DevCluster) -> Any:
    return devcluster.api_client()


def new_namespace(api: Any) -> str:
    """A fresh namespace, once its default ServiceAccount exists (pods are admitted only then)."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_for(
        lambda: any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items
        ),
        timeout_s=30,
        what=f"the default ServiceAccount in {name}",
    )
    return name


@pytest.fixture()
def namespace(api: Any) -> Iterator[str]:
    """A fresh namespace (deleted afterwards, without waiting) with its default ServiceAccount."""
    from kubernetes import client

    name = new_namespace(api)
    yield name
    client.CoreV1Api(api).delete_namespace(name)


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped_for_binaries:
        line = "=" * 78
        terminalreporter.write_line(line, yellow=True, bold=True)
        terminalreporter.write_line(
            "Kubernetes tests (tests/k8s) were SKIPPED, not run:", yellow=True, bold=True
        )
        terminalreporter.write_line(f"  {_skipped_for_binaries[0]}", yellow=True, bold=True)
        terminalreporter.write_line(line, yellow=True, bold=True)


async def discovering_router(api: Any, namespace: str) -> Any:
    """A started router (no auth, fast health checks) following the namespace's SLOTiers and
    engine pods through the Kubernetes discovery; run it on a LoopThread, close it there."""
    from polyserve.operator.discovery import kubernetes_fleet
    from polyserve.router.server import Router
    from polyserve.router.settings import RouterSettings

    source = kubernetes_fleet(namespace, api, watch_timeout_s=10)
    first = await anext(source)
    router = Router(RouterSettings(port=0, auth=False, health_interval_s=0.5), first, source=source)
    await router.start()
    return router

"""The router's Kubernetes discovery on the real API server: SLOTiers become tiers, Ready engine
pods become backends (address, draining, priority), and changes arrive as new snapshots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from polyserve.operator import resources as r
from polyserve.operator.discovery import kubernetes_fleet
from polyserve.operator.model import GROUP, PLURAL, VERSION
from polyserve.router.spec import FleetSpec
from tests.operator.manifests import slotier

pytestmark = pytest.mark.timeout(120)


def _pod(
    name: str, tier: str, annotations: dict[str, str] | None = None, priority: bool = False
) -> dict[str, Any]:
    args = ["--scheduling-policy", "priority"] if priority else []
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {r.LABEL_TIER: tier, r.LABEL_COMPONENT: r.COMPONENT_ENGINE},
            "annotations": {r.ANNOTATION_ENGINE_PORT: "8000", **(annotations or {})},
        },
        # An image the node agent runs no process for: the pod is Ready at once.
        "spec": {
            "containers": [{"name": "engine", "image": "registry.example/vllm:1", "args": args}]
        },
    }


async def _until(
    source: AsyncIterator[FleetSpec], ok: Callable[[FleetSpec], bool], what: str
) -> FleetSpec:
    async def scan() -> FleetSpec:
        async for fleet in source:
            if ok(fleet):
                return fleet
        raise AssertionError("the source ended")

    try:
        return await asyncio.wait_for(scan(), timeout=60)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def test_discovery_follows_tiers_and_pods(slotier_crd: str, api: Any, namespace: str) -> None:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, slotier("t50", onDeadlineMiss="degrade")
    )
    core.create_namespaced_pod(namespace, _pod("a", "t50", priority=True))
    core.create_namespaced_pod(namespace, _pod("b", "t50", {r.ANNOTATION_DRAINING: "true"}))
    core.create_namespaced_pod(
        namespace,
        _pod("c", "t50", {r.ANNOTATION_LOCAL_HOST: "127.0.0.1", r.ANNOTATION_LOCAL_PORT: "9999"}),
    )
    core.create_namespaced_pod(namespace, _pod("stray", "no-such-tier"))

    async def main() -> None:
        source = kubernetes_fleet(namespace, api, watch_timeout_s=10)
        try:
            fleet = await _until(source, lambda f: len(f.backends) == 3, "three backends")
            (tier,) = fleet.tiers
            assert (tier.name, tier.model, tier.tpot_ms, tier.ttft_ms) == (
                "t50",
                "llama-3.1-8b",
                50,
                1000,
            )
            assert tier.on_deadline_miss == "degrade"
            assert tier.profile == "llama-3.1-8b-h100"
            by = {b.name: b for b in fleet.backends}
            assert by["a"].priority and not by["a"].draining
            assert by["b"].draining and not by["b"].priority
            assert by["c"].url == "http://127.0.0.1:9999"
            pod_ip = core.read_namespaced_pod("a", namespace).status.pod_ip
            assert by["a"].url == f"http://{pod_ip}:8000"
            assert all(b.tier == "t50" for b in fleet.backends)

            # Changes: draining set by the operator, a pod deleted, the tier deleted.
            await asyncio.to_thread(
                core.patch_namespaced_pod, "a", namespace,
                {"metadata": {"annotations": {r.ANNOTATION_DRAINING: "true"}}},
            )  # fmt: skip
            await _until(
                source,
                lambda f: any(b.name == "a" and b.draining for b in f.backends),
                "pod a draining",
            )
            await asyncio.to_thread(core.delete_namespaced_pod, "c", namespace)
            await _until(source, lambda f: {b.name for b in f.backends} == {"a", "b"}, "pod c gone")
            await asyncio.to_thread(
                custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, "t50"
            )
            await _until(source, lambda f: not f.tiers and not f.backends, "the tier gone")
        finally:
            await source.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())

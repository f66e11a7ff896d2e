"""Engine keys on the real control plane (issue 19): an SLOTier's ``engine.apiKeySecretRef`` becomes
the engine container's ``VLLM_API_KEY`` from the Secret, the mock engine started with it refuses
requests without the key, and the router, having read the same Secret, is served. The discovery
follows the Secret: a rotated key is a new snapshot, a deleted Secret takes the tier's backends
away (the tier stays)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from polyserve.loopthread import LoopThread
from polyserve.operator import resources as r
from polyserve.operator.discovery import kubernetes_fleet
from polyserve.operator.kube import Kube
from polyserve.operator.model import GROUP, PLURAL, VERSION
from polyserve.operator.reconcile import Reconciler
from tests.k8s.conftest import discovering_router, wait_for
from tests.k8s.operator.test_discovery import _pod, _until
from tests.k8s.operator.test_rbac import NoStreams
from tests.mockengine.conftest import raw
from tests.operator.manifests import slotier

pytestmark = pytest.mark.timeout(180)

REF = {"name": "engine-key", "key": "api-key"}


def _secret(value: str) -> dict[str, Any]:
    return {"metadata": {"name": "engine-key"}, "stringData": {"api-key": value}}


def _key(fleet: Any) -> list[str | None]:
    return [None if b.api_key is None else b.api_key.get_secret_value() for b in fleet.backends]


def test_discovery_follows_the_secret(slotier_crd: str, api: Any, namespace: str) -> None:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(namespace, _secret("key-1"))
    body = slotier("voice", engine={"image": "registry.example/vllm:1", "apiKeySecretRef": REF})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    core.create_namespaced_pod(namespace, _pod("v0", "voice"))

    async def main() -> None:
        source = kubernetes_fleet(namespace, api, watch_timeout_s=2)
        try:
            await _until(source, lambda f: _key(f) == ["key-1"], "the backend with the key")
            await asyncio.to_thread(
                core.patch_namespaced_secret, "engine-key", namespace, _secret("key-2")
            )
            # no event of a watched kind: the key arrives with the next re-list
            await _until(source, lambda f: _key(f) == ["key-2"], "the rotated key")
            await asyncio.to_thread(core.delete_namespaced_secret, "engine-key", namespace)
            fleet = await _until(
                source, lambda f: not f.backends, "the keyless tier's backends out"
            )
            assert [t.name for t in fleet.tiers] == ["voice"]
            await asyncio.to_thread(core.create_namespaced_secret, namespace, _secret("key-3"))
            await _until(source, lambda f: _key(f) == ["key-3"], "the backend back")
        finally:
            await source.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_router_serves_a_keyed_mock_engine(slotier_crd: str, api: Any, namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    core.create_namespaced_secret(namespace, _secret("sk-cluster-7"))
    body = slotier("keyed", engine={"apiKeySecretRef": REF})
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    kube = Kube(api)
    reconciler = Reconciler(kube, probe=NoStreams())

    def run_pass() -> Any:
        return asyncio.run(reconciler.reconcile(kube.get_tier(namespace, "keyed") or {}))

    wait_for(lambda: run_pass().ready_replicas == 1, timeout_s=90, what="the keyed engine Ready")
    dep = kube.get_deployment(namespace, "keyed") or {}
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": REF}} in container["env"]

    (pod,) = kube.list_pods(namespace, r.tier_selector("keyed"))["items"]
    address = r.pod_address(pod)
    assert address is not None
    engine = f"http://{address[0]}:{address[1]}"
    req = {"model": "llama-3.1-8b", "prompt": "hello", "max_tokens": 2}
    status, _, data = raw(engine, "POST", "/v1/completions", req)
    assert (status, json.loads(data)) == (401, {"error": "Unauthorized"})  # the Secret's key is on

    loop = LoopThread("router")
    loop.start()

    router = loop.run(discovering_router(api, namespace), timeout=60)
    try:

        def ready() -> bool:
            state = raw(router.url, "GET", "/polyserve/v1/state")[2].decode()
            assert "sk-cluster-7" not in state
            return any(b["ready"] for b in json.loads(state)["backends"])

        wait_for(ready, timeout_s=60, what="the keyed backend ready in the router")
        status, headers, data = raw(router.url, "POST", "/v1/completions", req)
        assert status == 200, data
        assert headers["X-PolyServe-Tier"] == "keyed"
        assert json.loads(data)["usage"]["completion_tokens"] == 2
    finally:
        loop.run(router.close())
        loop.stop()

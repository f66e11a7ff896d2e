"""The chart's Roles are enough: the operator's passes and the router's discovery run as their
service accounts (impersonated) against the real RBAC authorizer, with nothing more granted. The
router reads the engine-key Secret it is given by name (``router.backendKeySecrets``) and no
other."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest
import yaml

from polyserve.devcluster import DevCluster
from polyserve.operator import resources as r
from polyserve.operator.discovery import kubernetes_fleet
from polyserve.operator.kube import Kube
from polyserve.operator.model import GROUP, PLURAL, VERSION
from polyserve.operator.reconcile import Reconciler
from tests.chart.test_chart import CHART, _helm
from tests.k8s.conftest import wait_for
from tests.operator.manifests import slotier

pytestmark = pytest.mark.timeout(180)


def _install_rbac(api: Any, namespace: str) -> None:
    from kubernetes import client, utils

    out = subprocess.run(
        [_helm(), "template", "ps", str(CHART), "--namespace", namespace, "--show-only",
         "templates/operator-rbac.yaml", "--show-only", "templates/router-rbac.yaml",
         "--set", "router.backendKeySecrets={engine-key}"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for doc in yaml.safe_load_all(out):
        if doc:
            utils.create_from_dict(api, doc, namespace=namespace)
    assert client  # imported for the side effect of loading the models


def _as(devcluster: DevCluster, namespace: str, account: str) -> Any:
    api = devcluster.api_client()
    api.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:{account}")
    return api


class NoStreams:
    async def active_streams(self, pod: Any) -> int | None:
        return 0


def test_chart_roles_suffice(
    devcluster: DevCluster, slotier_crd: str, api: Any, namespace: str
) -> None:
    from kubernetes import client

    _install_rbac(api, namespace)
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    for name in ("engine-key", "other-key"):
        core.create_namespaced_secret(
            namespace, {"metadata": {"name": name}, "stringData": {"api-key": f"{name}-value"}}
        )
    engine = {"image": "registry.example/vllm:1"}
    body = slotier(
        "rbac",
        replicas={"fixed": 2},
        engine={**engine, "apiKeySecretRef": {"name": "engine-key", "key": "api-key"}},
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    operator = Kube(_as(devcluster, namespace, "ps-polyserve-operator"))
    reconciler = Reconciler(operator, probe=NoStreams())

    def run_pass() -> Any:
        tier = operator.get_tier(namespace, "rbac")
        return asyncio.run(reconciler.reconcile(tier or {}))

    wait_for(lambda: run_pass().ready_replicas == 2, timeout_s=60, what="2 ready replicas")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "rbac", {"spec": {"replicas": {"fixed": 1}}}
    )
    wait_for(
        lambda: (
            run_pass().ready_replicas == 1
            and len(client.CoreV1Api(api).list_namespaced_pod(namespace).items) == 1
        ),
        timeout_s=60,
        what="a drained scale-down as the operator's service account",
    )

    async def discover() -> Any:
        source = kubernetes_fleet(namespace, _as(devcluster, namespace, "ps-polyserve-router"))
        try:
            return await asyncio.wait_for(anext(source), timeout=30)
        finally:
            await source.aclose()  # type: ignore[attr-defined]

    # A tier whose Secret the router may not read: the tier, none of its engines.
    locked = slotier(
        "locked",
        tpotMs=100,
        engine={**engine, "apiKeySecretRef": {"name": "other-key", "key": "api-key"}},
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, locked)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "locked-0", "labels": r.selector_labels("locked")},
            "spec": {"containers": [{"name": "engine", "image": "registry.example/vllm:1"}]},
        },
    )
    wait_for(
        lambda: r.pod_ready(
            api.sanitize_for_serialization(core.read_namespaced_pod("locked-0", namespace))
        ),
        timeout_s=30,
        what="the locked tier's pod Ready",
    )
    fleet = asyncio.run(discover())
    assert [t.name for t in fleet.tiers] == ["locked", "rbac"]
    (backend,) = fleet.backends
    assert backend.tier == "rbac"
    assert backend.api_key is not None and backend.api_key.get_secret_value() == "engine-key-value"

    # And the router may not touch what it does not need.
    from kubernetes.client.exceptions import ApiException

    router_core = client.CoreV1Api(_as(devcluster, namespace, "ps-polyserve-router"))
    with pytest.raises(ApiException) as err:
        router_core.list_namespaced_secret(namespace)
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:
        router_core.read_namespaced_secret("other-key", namespace)
    assert err.value.status == 403
    assert r.LABEL_TIER  # the labels the roles' watches select on

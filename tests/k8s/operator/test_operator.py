"""The operator against the real control plane, with mock engines as the tier's pods.

One tier goes through its life: created (Deployment, Service, Ready pods, status), scaled up with
the scale subresource, scaled down through the drain protocol, its Deployment edited behind the
operator's back, the operator restarted (nothing changes), and deleted (garbage collected).
Every wait polls with a deadline.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from polyserve.devcluster import DevCluster
from polyserve.operator import resources as r
from polyserve.operator.handlers import OperatorConfig, operator_in_thread
from polyserve.operator.model import GROUP, PLURAL, VERSION, SLOTierStatus
from tests.k8s.conftest import wait_for
from tests.operator.manifests import slotier, tier_condition

pytestmark = pytest.mark.timeout(240)


class Passes:
    """Counts the operator's passes per tier (the on_pass hook)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count: collections.Counter[str] = collections.Counter()

    def __call__(self, namespace: str, name: str, status: SLOTierStatus) -> None:
        with self.lock:
            self.count[name] += 1

    def wait(self, name: str, more: int, timeout_s: float = 30) -> None:
        start = self.count[name]
        wait_for(
            lambda: self.count[name] >= start + more,
            timeout_s=timeout_s,
            what=f"{more} operator passes over {name}",
        )


@pytest.fixture()
def passes() -> Passes:
    return Passes()


@pytest.fixture()
def operator(
    devcluster: DevCluster, slotier_crd: str, namespace: str, passes: Passes
) -> Iterator[OperatorConfig]:
    config = OperatorConfig(
        interval_s=1.0,
        namespaces=(namespace,),
        kubeconfig=devcluster.kubeconfig,
        on_pass=passes,
    )
    with operator_in_thread(config):
        yield config


def _apis(api: Any) -> tuple[Any, Any, Any]:
    from kubernetes import client

    return client.CustomObjectsApi(api), client.AppsV1Api(api), client.CoreV1Api(api)


def _tier(api: Any, namespace: str, name: str) -> dict[str, Any]:
    custom, _, _ = _apis(api)
    got: dict[str, Any] = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return got


def _pods(api: Any, namespace: str, name: str) -> list[Any]:
    _, _, core = _apis(api)
    return list(core.list_namespaced_pod(namespace, label_selector=r.tier_selector(name)).items)


def _live_ready(api: Any, namespace: str, name: str) -> list[str]:
    return sorted(
        p.metadata.name
        for p in _pods(api, namespace, name)
        if not p.metadata.deletion_timestamp
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    )


def _ready_status(api: Any, namespace: str, name: str, n: int) -> dict[str, Any] | None:
    tier = _tier(api, namespace, name)
    status = tier.get("status") or {}
    ready = tier_condition(tier, "Ready")
    if (
        status.get("readyReplicas") == n
        and status.get("replicas") == n
        and ready
        and ready["status"] == "True"
        and len(_live_ready(api, namespace, name)) == n
    ):
        return tier
    return None


def test_tier_lifecycle(
    devcluster: DevCluster, api: Any, namespace: str, passes: Passes, slotier_crd: str
) -> None:
    custom, apps, core = _apis(api)
    config = OperatorConfig(
        interval_s=1.0, namespaces=(namespace,), kubeconfig=devcluster.kubeconfig, on_pass=passes
    )
    body = slotier("chat", engine={"args": ["--scheduling-policy", "priority"]})
    with operator_in_thread(config):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

        # Created: Deployment + Service owned by the tier, one Ready mock engine, status.
        tier = wait_for(
            lambda: _ready_status(api, namespace, "chat", 1), timeout_s=90, what="1 ready replica"
        )
        uid = tier["metadata"]["uid"]
        dep = apps.read_namespaced_deployment("chat", namespace)
        svc = core.read_namespaced_service("chat", namespace)
        for obj in (dep, svc):
            (owner,) = obj.metadata.owner_references
            assert (owner.kind, owner.uid, owner.controller) == ("SLOTier", uid, True)
            assert obj.metadata.labels[r.LABEL_TIER] == "chat"
            assert obj.metadata.labels[r.LABEL_MODEL] == "llama-3.1-8b"
        container = dep.spec.template.spec.containers[0]
        assert container.readiness_probe.http_get.path == "/health"
        assert container.args[-4:] == ["--port", "8000", "--served-model-name", "llama-3.1-8b"]
        assert "--max-num-batched-tokens" in container.args  # the flags derived for the tier
        assert dep.spec.template.spec.termination_grace_period_seconds == 5
        assert svc.spec.selector == r.selector_labels("chat")
        status = tier["status"]
        assert status["observedGeneration"] == tier["metadata"]["generation"]
        assert status["selector"] == r.tier_selector("chat")
        assert status["desiredReplicas"] == 1
        assert status["engineArgs"] == container.args
        assert "--max-num-seqs" in status["engineReasons"]
        for type_, want in [("InvalidSpec", "False"), ("ProfileMissing", "False")]:
            cond = tier_condition(tier, type_)
            assert cond is not None and cond["status"] == want, cond

        # Scale up through the scale subresource (kubectl scale slotier chat --replicas 2).
        custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, PLURAL, "chat", {"spec": {"replicas": 2}}
        )
        tier = wait_for(
            lambda: _ready_status(api, namespace, "chat", 2), timeout_s=90, what="2 ready replicas"
        )
        assert tier["status"]["lastScaling"]["fromReplicas"] == 1
        assert tier["status"]["lastScaling"]["toReplicas"] == 2
        assert tier["status"]["lastScaling"]["reason"] == "FixedReplicas"

        # Scale down: a pod is marked draining, gets the lowest deletion cost, then goes.
        before = _live_ready(api, namespace, "chat")
        custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, PLURAL, "chat", {"spec": {"replicas": 1}}
        )
        seen_marked: set[str] = set()

        def drained() -> list[str] | None:
            for p in _pods(api, namespace, "chat"):
                ann = p.metadata.annotations or {}
                if ann.get(r.ANNOTATION_DRAINING) == "true":
                    seen_marked.add(p.metadata.name)
            left = _live_ready(api, namespace, "chat")
            pods = _pods(api, namespace, "chat")
            return left if len(left) == 1 and len(pods) == 1 else None

        left = wait_for(drained, timeout_s=90, what="the drained pod to be removed")
        assert len(seen_marked) == 1, seen_marked
        (gone,) = set(before) - set(left)
        assert seen_marked == {gone}, "the pod removed is the one that was drained"
        assert apps.read_namespaced_deployment("chat", namespace).spec.replicas == 1

        # An edit of the Deployment's replicas is put back (the SLOTier owns the count).
        apps.patch_namespaced_deployment_scale("chat", namespace, {"spec": {"replicas": 0}})
        wait_for(
            lambda: _ready_status(api, namespace, "chat", 1), timeout_s=90, what="replicas put back"
        )
        passes.wait("chat", 2)

    # Restart: a new operator changes nothing.
    versions = _versions(api, namespace, "chat")
    with operator_in_thread(config):
        passes.wait("chat", 3)
    assert versions == _versions(api, namespace, "chat")

    # Delete: the garbage collector removes the Deployment, Service and pods.
    with operator_in_thread(config):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")
        wait_for(
            lambda: (
                not apps.list_namespaced_deployment(namespace).items
                and not core.list_namespaced_service(namespace).items
                and not _pods(api, namespace, "chat")
            ),
            timeout_s=90,
            what="garbage collection of the tier's objects",
        )


def _versions(api: Any, namespace: str, name: str) -> dict[str, Any]:
    """resourceVersions of everything the operator could write for a tier."""
    _, apps, core = _apis(api)
    return {
        "tier": _tier(api, namespace, name)["metadata"]["resourceVersion"],
        "deployment": apps.read_namespaced_deployment(name, namespace).metadata.resource_version,
        "service": core.read_namespaced_service(name, namespace).metadata.resource_version,
        "pods": sorted(
            (p.metadata.name, p.metadata.resource_version) for p in _pods(api, namespace, name)
        ),
    }


def _events(api: Any, namespace: str, name: str) -> list[str]:
    _, _, core = _apis(api)
    return [
        e.reason
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object.name == name and e.involved_object.kind == "SLOTier"
    ]


@pytest.mark.parametrize(
    ("spec", "condition", "reason"),
    [
        ({"profile": {"name": "no-such-gpu"}}, "ProfileMissing", "ProfileNotFound"),
        (
            {"profile": {"name": None, "configMapKeyRef": {"name": "nope", "key": "p.yaml"}}},
            "ProfileMissing",
            "ProfileNotFound",
        ),
        ({"tpotMs": 2}, "InvalidSpec", "TPOTUnattainable"),
    ],
    ids=["unknown-profile", "missing-configmap", "tpot-unattainable"],
)
def test_bad_tier_sets_a_condition_and_an_event(
    operator: OperatorConfig,
    api: Any,
    namespace: str,
    passes: Passes,
    spec: dict[str, Any],
    condition: str,
    reason: str,
) -> None:
    custom, apps, _ = _apis(api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, slotier("bad", **spec)
    )

    def flagged() -> dict[str, Any] | None:
        cond = tier_condition(_tier(api, namespace, "bad"), condition)
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for(flagged, timeout_s=30, what=f"{condition}=True")
    assert cond["reason"] == reason
    ready = tier_condition(_tier(api, namespace, "bad"), "Ready")
    assert ready is not None and ready["status"] == "False"
    wait_for(lambda: reason in _events(api, namespace, "bad"), timeout_s=30, what="the Event")
    # Not a hot loop: more passes post no more events and create nothing.
    passes.wait("bad", 3)
    assert _events(api, namespace, "bad").count(reason) == 1
    assert not apps.list_namespaced_deployment(namespace).items

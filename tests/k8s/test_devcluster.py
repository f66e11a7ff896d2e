"""The devcluster is a real control plane: API validation, controllers, GC, watches, endpoints.

Each test proves one thing that a mocked client could not: the API server's own schema and CEL
messages, the controller-manager's Deployment -> ReplicaSet -> Pod chain, garbage collection,
watch streams, and EndpointSlices, with the node agent making pods Ready.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
import uuid
from typing import Any

import pytest

from polyserve.devcluster import (
    ANNOTATION_LOCAL_HOST,
    ANNOTATION_LOCAL_PID,
    ANNOTATION_LOCAL_PORT,
    KUBE_VERSION,
    DevCluster,
)
from tests.k8s.conftest import TEST_SERVER_IMAGE, wait_for

pytestmark = pytest.mark.timeout(180)


def _client() -> Any:
    from kubernetes import client

    return client


def _deployment(
    name: str,
    replicas: int,
    image: str = "registry.example/app:1",
    args: list[str] | None = None,
    gpus: int = 0,
    readiness_path: str | None = None,
    grace_s: int | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "image": image,
        "ports": [{"containerPort": 8000, "name": "http"}],
    }
    if args is not None:
        container["args"] = args
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if readiness_path is not None:
        container["readinessProbe"] = {"httpGet": {"path": readiness_path, "port": 8000}}
    pod_spec: dict[str, Any] = {"containers": [container]}
    if grace_s is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace_s
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def _pods(api: Any, namespace: str, app: str) -> list[Any]:
    core = _client().CoreV1Api(api)
    return list(core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _available(api: Any, namespace: str, name: str, replicas: int) -> Any:
    dep = _client().AppsV1Api(api).read_namespaced_deployment(name, namespace)
    status = dep.status
    if (status.available_replicas or 0) == replicas and (status.replicas or 0) == replicas:
        return dep
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (the agent reaps its children, so this is brief).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_version_is_the_pinned_one(devcluster: DevCluster, api: Any) -> None:
    version = _client().VersionApi(api).get_code()
    assert version.git_version == KUBE_VERSION


def test_node_is_ready_with_gpus(devcluster: DevCluster, api: Any) -> None:
    core = _client().CoreV1Api(api)
    node = core.read_node(devcluster.node_agent_config.node_name)
    assert node.status.allocatable["nvidia.com/gpu"] == "8"
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    # The node-lifecycle controller (controller-manager) removes the not-ready taint that the
    # API server's admission put on the new Node, once it sees the Ready condition and lease.
    wait_for(
        lambda: not (core.read_node(node.metadata.name).spec.taints or []),
        timeout_s=60,
        what="the node-lifecycle controller to untaint the node",
    )


def test_crd_schema_and_cel_validation(api: Any) -> None:
    client = _client()
    ext = client.ApiextensionsV1Api(api)
    group = f"t{uuid.uuid4().hex[:6]}.polyserve.io"
    plural = "widgets"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["minReplicas", "maxReplicas"],
                                    "properties": {
                                        "minReplicas": {"type": "integer", "minimum": 0},
                                        "maxReplicas": {"type": "integer", "minimum": 1},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.minReplicas <= self.maxReplicas",
                                            "message": "minReplicas must not exceed maxReplicas",
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)
    try:

        def established() -> bool:
            got = ext.read_custom_resource_definition(f"{plural}.{group}")
            conds = got.status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_for(established, timeout_s=30, what="the CRD to be Established")
        custom = client.CustomObjectsApi(api)

        def create(spec: dict[str, int]) -> Any:
            body = {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": f"w-{uuid.uuid4().hex[:6]}"},
                "spec": spec,
            }
            return custom.create_namespaced_custom_object(group, "v1", "default", plural, body)

        # The new resource needs a moment to be served by the API server's discovery.
        wait_for(
            lambda: _try(lambda: create({"minReplicas": 1, "maxReplicas": 2})),
            timeout_s=30,
            what="a valid Widget to be accepted",
        )
        with pytest.raises(client.exceptions.ApiException) as schema_err:
            create({"minReplicas": -1, "maxReplicas": 2})
        assert schema_err.value.status == 422
        assert "should be greater than or equal to 0" in str(schema_err.value.body)

        with pytest.raises(client.exceptions.ApiException) as cel_err:
            create({"minReplicas": 3, "maxReplicas": 2})
        assert cel_err.value.status == 422
        body = json.loads(cel_err.value.body)
        assert "minReplicas must not exceed maxReplicas" in body["message"]
        assert body["details"]["causes"][0]["field"] == "spec"
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{group}")


def _try(fn: Any) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return fn() or True
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_deployment_replicaset_pods_and_garbage_collection(
    devcluster: DevCluster, api: Any, namespace: str
) -> None:
    client = _client()
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, _deployment("web", 3, gpus=1))
    dep = wait_for(
        lambda: _available(api, namespace, "web", 3),
        timeout_s=60,
        what="3 available replicas",
    )

    replicasets = apps.list_namespaced_replica_set(namespace).items
    assert len(replicasets) == 1
    rs = replicasets[0]
    assert rs.metadata.owner_references[0].uid == dep.metadata.uid
    pods = _pods(api, namespace, "web")
    assert len(pods) == 3
    for pod in pods:
        assert pod.metadata.owner_references[0].uid == rs.metadata.uid
        assert pod.spec.node_name == devcluster.node_agent_config.node_name
        assert pod.status.phase == "Running"
        assert _ready(pod)
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert len({p.status.pod_ip for p in pods}) == 3, "every pod gets its own pod IP"

    # Scale down: the ReplicaSet controller deletes pods; the agent finishes their deletion.
    apps.patch_namespaced_deployment_scale(
        namespace=namespace, name="web", body={"spec": {"replicas": 1}}
    )
    wait_for(lambda: len(_pods(api, namespace, "web")) == 1, timeout_s=60, what="1 pod left")

    # Deleting the Deployment: the garbage collector removes the ReplicaSet, then the pods.
    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    wait_for(
        lambda: not apps.list_namespaced_replica_set(namespace).items,
        timeout_s=60,
        what="the garbage collector to delete the ReplicaSet",
    )
    wait_for(
        lambda: not core.list_namespaced_pod(namespace).items,
        timeout_s=60,
        what="the garbage collector to delete the pods",
    )


def test_watch_sees_pod_lifecycle(api: Any, namespace: str) -> None:
    from kubernetes import watch

    client = _client()
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    watch_factory: Any = watch.Watch
    events: list[tuple[str, str, bool, str | None]] = []
    done = threading.Event()

    def run() -> None:
        w: Any = watch_factory()
        deadline = time.monotonic() + 90
        while not done.is_set() and time.monotonic() < deadline:
            for event in w.stream(
                core.list_namespaced_pod, namespace, label_selector="app=watched", timeout_seconds=2
            ):
                pod = event["object"]
                events.append((event["type"], pod.metadata.name, _ready(pod), pod.spec.node_name))
                if event["type"] == "DELETED":
                    done.set()
                    w.stop()
                    break

    watcher = threading.Thread(target=run, daemon=True)
    watcher.start()
    time.sleep(0.5)  # let the watch open; events before that would still come from the list
    apps.create_namespaced_deployment(namespace, _deployment("watched", 1))
    wait_for(lambda: any(e[2] for e in events), timeout_s=60, what="a watch event with Ready pod")
    apps.delete_namespaced_deployment("watched", namespace)
    assert done.wait(60), f"no DELETED event; saw {events}"
    watcher.join(10)
    kinds = [e[0] for e in events]
    assert kinds[0] == "ADDED" and kinds[-1] == "DELETED"
    assert events[0][3] is None, "created unbound (no scheduler ran yet)"
    assert any(e[3] for e in events), "bound by the node agent"
    assert "MODIFIED" in kinds


def test_endpointslice_follows_ready_pods(api: Any, namespace: str) -> None:
    client = _client()
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "svc"},
            "spec": {"selector": {"app": "ep"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    )
    apps.create_namespaced_deployment(namespace, _deployment("ep", 2))
    wait_for(lambda: _available(api, namespace, "ep", 2), timeout_s=60, what="2 replicas")
    pod_ips = {p.status.pod_ip for p in _pods(api, namespace, "ep")}

    def slice_ips() -> set[str] | None:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=svc"
        ).items
        ready = {
            addr
            for s in slices
            for ep in s.endpoints or []
            if ep.conditions.ready
            for addr in ep.addresses
        }
        return ready if ready == pod_ips else None

    wait_for(slice_ips, timeout_s=60, what=f"an EndpointSlice with ready {pod_ips}")
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector="kubernetes.io/service-name=svc"
    ).items
    assert slices[0].ports[0].port == 8000  # the named targetPort resolved by the controller
    assert {ep.target_ref.kind for s in slices for ep in s.endpoints} == {"Pod"}

    apps.patch_namespaced_deployment_scale(
        namespace=namespace, name="ep", body={"spec": {"replicas": 1}}
    )
    wait_for(lambda: len(_pods(api, namespace, "ep")) == 1, timeout_s=60, what="1 pod left")
    pod_ips = {p.status.pod_ip for p in _pods(api, namespace, "ep")}
    wait_for(slice_ips, timeout_s=60, what=f"the EndpointSlice to shrink to {pod_ips}")


def _get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def test_pods_run_local_processes(devcluster: DevCluster, api: Any, namespace: str) -> None:
    client = _client()
    apps = client.AppsV1Api(api)
    deployment = _deployment(
        "proc", 2, image=TEST_SERVER_IMAGE, args=["--ready-after", "1.0"], readiness_path="/health"
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "GREETING", "value": "hello"}
    ]
    started = time.monotonic()
    apps.create_namespaced_deployment(namespace, deployment)
    wait_for(lambda: _available(api, namespace, "proc", 2), timeout_s=60, what="2 ready pods")
    assert time.monotonic() - started >= 1.0, "Ready only after the readiness endpoint said so"

    pods = _pods(api, namespace, "proc")
    pids = []
    for pod in pods:
        annotations = pod.metadata.annotations
        assert annotations[ANNOTATION_LOCAL_HOST] == "127.0.0.1"
        port = int(annotations[ANNOTATION_LOCAL_PORT])
        who = _get_json(port, "/whoami")
        assert who["pod"] == pod.metadata.name
        assert who["namespace"] == namespace
        assert who["greeting"] == "hello"
        assert who["pid"] == int(annotations[ANNOTATION_LOCAL_PID])
        pids.append(who["pid"])
    assert len({int(p.metadata.annotations[ANNOTATION_LOCAL_PORT]) for p in pods}) == 2

    # Deleting the Deployment stops the processes (SIGTERM) and the pods go away.
    apps.delete_namespaced_deployment("proc", namespace, propagation_policy="Foreground")
    wait_for(lambda: not _pods(api, namespace, "proc"), timeout_s=60, what="the pods to be deleted")
    wait_for(
        lambda: not any(_pid_alive(pid) for pid in pids), timeout_s=10, what="processes to exit"
    )


def test_grace_period_then_sigkill(devcluster: DevCluster, api: Any, namespace: str) -> None:
    core = _client().CoreV1Api(api)
    pod = {
        "metadata": {"name": "stubborn", "labels": {"app": "stubborn"}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {"name": "app", "image": TEST_SERVER_IMAGE, "args": ["--ignore-sigterm"]}
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    ready = wait_for(
        lambda: next((p for p in _pods(api, namespace, "stubborn") if _ready(p)), None),
        timeout_s=60,
        what="the pod to be Ready",
    )
    pid = int(ready.metadata.annotations[ANNOTATION_LOCAL_PID])
    start = time.monotonic()
    core.delete_namespaced_pod("stubborn", namespace)
    # It ignores SIGTERM: the pod must stay (terminating) for the grace period, then go.
    time.sleep(1.0)
    assert _pid_alive(pid)
    assert _pods(api, namespace, "stubborn"), "still terminating within its grace period"
    wait_for(lambda: not _pods(api, namespace, "stubborn"), timeout_s=30, what="the pod to go away")
    assert time.monotonic() - start >= 2.0
    assert not _pid_alive(pid)


def test_crashing_process_is_restarted(devcluster: DevCluster, api: Any, namespace: str) -> None:
    core = _client().CoreV1Api(api)
    pod = {
        "metadata": {"name": "crashy", "labels": {"app": "crashy"}},
        "spec": {
            "containers": [
                {"name": "app", "image": TEST_SERVER_IMAGE, "args": ["--exit-after", "1.5"]}
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)

    def restarted() -> Any:
        got = core.read_namespaced_pod("crashy", namespace)
        statuses = got.status.container_statuses or []
        if statuses and statuses[0].restart_count >= 1 and statuses[0].last_state.terminated:
            return statuses[0]
        return None

    status = wait_for(restarted, timeout_s=60, what="a restart after the process crashed")
    assert status.last_state.terminated.exit_code == 3
    core.delete_namespaced_pod("crashy", namespace, grace_period_seconds=1)
    wait_for(lambda: not _pods(api, namespace, "crashy"), timeout_s=30, what="pod deletion")


def test_default_launcher_runs_the_mock_engine(
    devcluster: DevCluster, api: Any, namespace: str
) -> None:
    """A pod of the polyserve image running `polyserve mock-engine` is a real local mock engine."""
    client = _client()
    apps = client.AppsV1Api(api)
    deployment = _deployment("engine", 1, image="ghcr.io/example/polyserve:dev", gpus=1)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["polyserve", "mock-engine"]
    container["args"] = ["--port", "8000", "--startup-delay", "0.5", "--log-level", "warning"]
    apps.create_namespaced_deployment(namespace, deployment)
    wait_for(lambda: _available(api, namespace, "engine", 1), timeout_s=90, what="a ready engine")
    (pod,) = _pods(api, namespace, "engine")
    port = int(pod.metadata.annotations[ANNOTATION_LOCAL_PORT])
    models = _get_json(port, "/v1/models")
    assert models["data"], models
    pid = int(pod.metadata.annotations[ANNOTATION_LOCAL_PID])
    apps.delete_namespaced_deployment("engine", namespace)
    wait_for(lambda: not _pods(api, namespace, "engine"), timeout_s=60, what="pod deletion")
    wait_for(lambda: not _pid_alive(pid), timeout_s=10, what="the engine to exit")

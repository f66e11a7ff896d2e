"""A test node agent: the devcluster's stand-in for scheduler, kubelet and container runtime.

In the spirit of kwok, one agent plays one Node against the real API server:

* it registers a Node with allocatable CPU, memory and ``nvidia.com/gpu`` (so GPU-requesting
  pods fit) and keeps it Ready by renewing its Lease in ``kube-node-lease``, the heartbeat the
  controller-manager's node-lifecycle controller watches;
* it binds every pending pod (no ``spec.nodeName``, no scheduling gates) to that Node, as the
  scheduler would (no filtering or scoring: a single node takes everything);
* for each pod bound to it, it asks a pluggable *launcher* ``(pod, port) -> argv | None`` whether
  the pod runs as a real local process. If so it starts ``argv`` on 127.0.0.1 with a free
  ``port``, records the port in the pod annotation ``polyserve.io/local-port`` and reports the pod
  Ready once ``GET http://127.0.0.1:<port><path>`` answers 2xx/3xx (the path is the container's
  ``readinessProbe.httpGet.path`` if it has one, else ``NodeAgentConfig.readiness_path``,
  ``/health`` by default), re-probing periodically like kubelet. Pods without a process are
  reported Running and Ready at once;
* when a pod is deleted (it gets a ``deletionTimestamp``) it sends SIGTERM to the process group,
  SIGKILL after the grace period, and then removes the pod with ``gracePeriodSeconds=0``: the
  step kubelet performs once the containers are gone. A process that exits on its own is
  restarted (``restartPolicy: Always``/``OnFailure``) or ends the pod (``Succeeded``/``Failed``).

Addressing: every pod gets a distinct fake pod IP from ``10.244.0.0/16`` in ``status.podIP``,
because the API server rejects loopback addresses in EndpointSlices, so a pod IP of 127.0.0.1
would keep Services from getting endpoints. The pod IP is not reachable; a pod's process is
reached at ``127.0.0.1:<polyserve.io/local-port>``. Clients that discover pods (the router's
Kubernetes discovery) use that annotation when it is present.

The default launcher (:func:`mock_engine_launcher`) runs containers whose image name contains
``polyserve`` and whose command/args start the mock engine (``polyserve mock-engine ...``) as
``<this venv>/bin/polyserve mock-engine ... --host 127.0.0.1 --port <port>``. A process gets the
container's ``env``: plain values, and ``secretKeyRef``/``configMapKeyRef`` values read when it
starts (a missing required one: the pod waits in ``CreateContainerConfigError``, for good).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from polyserve.devcluster.procs import ManagedProcess, free_port

__all__ = [
    "ANNOTATION_LOCAL_HOST",
    "ANNOTATION_LOCAL_PID",
    "ANNOTATION_LOCAL_PORT",
    "Launcher",
    "NodeAgent",
    "NodeAgentConfig",
    "mock_engine_launcher",
    "no_process_launcher",
]

log = logging.getLogger(__name__)

ANNOTATION_LOCAL_PORT = "polyserve.io/local-port"
ANNOTATION_LOCAL_HOST = "polyserve.io/local-host"
ANNOTATION_LOCAL_PID = "polyserve.io/local-pid"
LOCAL_HOST = "127.0.0.1"

Pod = dict[str, Any]
"""A pod as the API serves it in JSON (camelCase keys), e.g. ``pod["spec"]["containers"]``."""

Launcher = Callable[[Pod, int], Sequence[str] | None]
"""``(pod, port) -> argv``: the local command for a pod, or None to run no process.

``port`` is the free 127.0.0.1 port the agent chose for this pod; the process must listen on
it (the agent also passes it as ``$POLYSERVE_LOCAL_PORT``)."""

_PATCH = "application/strategic-merge-patch+json"
_MERGE = "application/merge-patch+json"


def _gone(exc: Any) -> bool:
    """An ApiException saying the pod was deleted, or replaced by a namesake (uid mismatch)."""
    if exc.status in (404, 409):
        return True
    return bool(exc.status == 422 and "uid" in str(exc.body).lower())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _words(container: dict[str, Any]) -> list[str]:
    return [str(w) for w in (container.get("command") or []) + (container.get("args") or [])]


def _polyserve_command() -> list[str]:
    beside = Path(sys.executable).parent / "polyserve"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("polyserve")
    if found:
        return [found]
    return [sys.executable, "-m", "polyserve.cli"]


def _set_flag(words: list[str], flag: str, value: str) -> list[str]:
    """Replace ``flag V`` / ``flag=V`` in ``words`` with ``flag value``, or append it."""
    out: list[str] = []
    found = False
    skip = False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word == flag:
            out += [flag, value]
            found = True
            skip = i + 1 < len(words)
        elif word.startswith(flag + "="):
            out += [flag, value]
            found = True
        else:
            out.append(word)
    if not found:
        out += [flag, value]
    return out


def mock_engine_launcher(pod: Pod, port: int) -> list[str] | None:
    """Run pods of the polyserve image that start the mock engine as local processes.

    Matches the first container whose image name contains ``polyserve`` and whose first three
    command/args words include ``mock-engine``; runs the words after ``mock-engine`` with this
    environment's ``polyserve`` command, with ``--host 127.0.0.1 --port <port>`` forced.
    """
    for container in pod.get("spec", {}).get("containers", []):
        image = str(container.get("image", ""))
        words = _words(container)
        if "polyserve" not in image or "mock-engine" not in words[:3]:
            continue
        rest = words[words.index("mock-engine") + 1 :]
        rest = _set_flag(rest, "--host", LOCAL_HOST)
        rest = _set_flag(rest, "--port", str(port))
        return [*_polyserve_command(), "mock-engine", *rest]
    return None


def no_process_launcher(pod: Pod, port: int) -> None:
    """Run nothing: every pod only reports Running/Ready."""
    return None


@dataclass(frozen=True)
class NodeAgentConfig:
    """Everything the node agent does that a test may want to change."""

    node_name: str = "polyserve-node-0"
    cpu: str = "64"
    memory: str = "256Gi"
    max_pods: int = 110
    gpus: int = 8
    gpu_resource: str = "nvidia.com/gpu"
    labels: dict[str, str] = field(default_factory=dict)
    pod_cidr: str = "10.244.0.0/16"
    launcher: Launcher = mock_engine_launcher
    readiness_path: str = "/health"
    readiness_period_s: float = 1.0
    readiness_failure_threshold: int = 3
    probe_timeout_s: float = 1.0
    restart_backoff_s: float = 1.0
    max_restart_backoff_s: float = 10.0
    lease_duration_s: int = 40
    heartbeat_interval_s: float = 10.0
    watch_timeout_s: int = 2
    tick_s: float = 0.1
    log_dir: Path | None = None
    """Where process logs go (``<namespace>_<pod>.log``); default: a temporary directory."""
    max_grace_on_stop_s: float = 5.0
    """Grace given to processes when the agent itself stops (the cluster goes away)."""


@dataclass
class _LocalPod:
    uid: str
    namespace: str
    name: str
    pod: Pod
    ip: str
    port: int = 0
    argv: list[str] | None = None
    proc: ManagedProcess | None = None
    ready: bool = False
    probe_failures: int = 0
    next_probe: float = 0.0
    restart_count: int = 0
    restart_at: float | None = None
    finished: bool = False
    stopping: bool = False
    kill_at: float = 0.0
    started_at: str = field(default_factory=_now)
    start_time: str = field(default_factory=_now)
    last_exit: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class NodeAgent:
    """Plays one Node against the API server: binds pods, runs their processes, reports status.

    ``api_client`` is a ``kubernetes.client.ApiClient`` with rights over nodes, leases and pods
    (the devcluster passes its admin client). :meth:`start` registers the Node and starts two
    threads (a pod watch and a reconcile loop); :meth:`stop` ends them and every process.
    """

    def __init__(self, api_client: Any, config: NodeAgentConfig | None = None) -> None:
        from kubernetes import client

        self.config = config or NodeAgentConfig()
        self._api = api_client
        # Typed as Any: the agent speaks the API's JSON (dict bodies, raw responses), not the
        # client's model classes that its annotations describe.
        self._core: Any = client.CoreV1Api(api_client)
        self._coord: Any = client.CoordinationV1Api(api_client)
        self._events: queue.Queue[tuple[str, Pod]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pods: dict[str, _LocalPod] = {}
        self._orphans: list[tuple[ManagedProcess, float]] = []
        network = ipaddress.ip_network(self.config.pod_cidr)
        self._free_ips = [str(ip) for ip in list(network.hosts())[1:]]  # first is the gateway
        self._free_ips.reverse()
        self._allocated_ips: set[str] = set()
        self._next_heartbeat = 0.0
        self._own_log_dir = self.config.log_dir is None
        self.log_dir = self.config.log_dir or Path(tempfile.mkdtemp(prefix="polyserve-agent-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.errors: list[str] = []
        """Unexpected errors the reconcile loop survived (tests can assert it stays empty)."""

    # ----------------------------------------------------------------------------------------
    # lifecycle

    def start(self) -> None:
        self._register_node()
        self._heartbeat()
        for name, target in (("watch", self._watch_loop), ("reconcile", self._reconcile_loop)):
            thread = threading.Thread(
                target=target, name=f"node-agent-{name}-{self.config.node_name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop watching and reconciling; stop every process (SIGTERM, then SIGKILL)."""
        self._stop.set()
        join_s = self.config.watch_timeout_s + 10.0
        for thread in self._threads:
            thread.join(timeout=join_s)
        self._threads.clear()
        procs = [p.proc for p in self._pods.values() if p.proc is not None]
        procs += [proc for proc, _ in self._orphans]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + self.config.max_grace_on_stop_s
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.01))
        for proc in procs:
            proc.stop(grace_s=0.0)
        self._pods.clear()
        self._orphans.clear()
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def node_ready(self) -> bool:
        """True once the Node exists with condition Ready=True."""
        node = self._read_node()
        if node is None:
            return False
        for cond in node.get("status", {}).get("conditions", []):
            if cond.get("type") == "Ready":
                return bool(cond.get("status") == "True")
        return False

    # ----------------------------------------------------------------------------------------
    # the node

    def _read_node(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self._core.read_node(self.config.node_name, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        body: dict[str, Any] = json.loads(resp.data)
        return body

    def _register_node(self) -> None:
        from kubernetes.client.exceptions import ApiException

        cfg = self.config
        labels = {
            "kubernetes.io/hostname": cfg.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "polyserve-devcluster",
            "polyserve.io/node-agent": "true",
            **cfg.labels,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": cfg.node_name, "labels": labels},
            "spec": {},
        }
        try:
            self._core.create_node(body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
        resources = {"cpu": cfg.cpu, "memory": cfg.memory, "pods": str(cfg.max_pods)}
        if cfg.gpus > 0:
            resources[cfg.gpu_resource] = str(cfg.gpus)
        now = _now()

        def cond(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        status = {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                cond("Ready", "True", "KubeletReady", "polyserve devcluster node agent is ready"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": LOCAL_HOST},
                {"type": "Hostname", "address": cfg.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "polyserve-devcluster",
                "systemUUID": "polyserve-devcluster",
                "bootID": "polyserve-devcluster",
                "kernelVersion": os.uname().release,
                "osImage": "polyserve devcluster node agent",
                "containerRuntimeVersion": "polyserve-local://0",
                "kubeletVersion": "v0.0.0-polyserve-node-agent",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self._core.patch_node_status(
            cfg.node_name, {"status": status}, _content_type=_MERGE, _preload_content=False
        )

    def _heartbeat(self) -> None:
        """Create or renew the node's Lease (what the node-lifecycle controller watches)."""
        from kubernetes.client.exceptions import ApiException

        cfg = self.config
        spec = {
            "holderIdentity": cfg.node_name,
            "leaseDurationSeconds": cfg.lease_duration_s,
            "renewTime": _now_micro(),
        }
        try:
            self._coord.patch_namespaced_lease(
                cfg.node_name,
                "kube-node-lease",
                {"spec": spec},
                _content_type=_MERGE,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            node = self._read_node() or {}
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": cfg.node_name,
                "uid": node.get("metadata", {}).get("uid", ""),
            }
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": cfg.node_name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [owner] if owner["uid"] else [],
                },
                "spec": spec,
            }
            self._coord.create_namespaced_lease("kube-node-lease", body, _preload_content=False)
        self._next_heartbeat = time.monotonic() + cfg.heartbeat_interval_s

    # ----------------------------------------------------------------------------------------
    # the pod watch (its own thread: it only reads and queues)

    def _watch_loop(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        watch_factory: Any = watch.Watch
        while not self._stop.is_set():
            try:
                resp = self._core.list_pod_for_all_namespaces(
                    _preload_content=False, _request_timeout=60
                )
                listing = json.loads(resp.data)
                version = listing["metadata"]["resourceVersion"]
                items = listing.get("items", [])
                for item in items:
                    self._events.put(("SYNC", item))
                # Pods deleted while the watch was down are absent from the list: forget them.
                uids = [str(i.get("metadata", {}).get("uid", "")) for i in items]
                self._events.put(("LISTED", {"uids": uids}))
                while not self._stop.is_set():
                    w: Any = watch_factory()
                    for event in w.stream(
                        self._core.list_pod_for_all_namespaces,
                        resource_version=version,
                        timeout_seconds=self.config.watch_timeout_s,
                        allow_watch_bookmarks=True,
                        _request_timeout=self.config.watch_timeout_s + 10,
                    ):
                        raw: Pod = event["raw_object"]
                        version = raw.get("metadata", {}).get("resourceVersion", version)
                        if event["type"] != "BOOKMARK":
                            self._events.put((str(event["type"]), raw))
                        if self._stop.is_set():
                            w.stop()
                            break
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the version expired, list again
                    self._record_error(f"pod watch: {exc}")
                    self._stop.wait(0.5)
            except Exception as exc:
                if not self._stop.is_set():
                    self._record_error(f"pod watch: {type(exc).__name__}: {exc}")
                    self._stop.wait(0.5)

    def _record_error(self, message: str) -> None:
        log.warning("node agent %s: %s", self.config.node_name, message)
        with self._lock:
            self.errors.append(message)

    # ----------------------------------------------------------------------------------------
    # the reconcile loop (its own thread: all writes happen here)

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            try:
                try:
                    kind, pod = self._events.get(timeout=self.config.tick_s)
                except queue.Empty:
                    pass
                else:
                    self._handle(kind, pod)
                    while True:
                        try:
                            kind, pod = self._events.get_nowait()
                        except queue.Empty:
                            break
                        self._handle(kind, pod)
                self._tick()
            except Exception as exc:
                self._record_error(f"reconcile: {type(exc).__name__}: {exc}")
                self._stop.wait(0.2)

    def _handle(self, kind: str, pod: Pod) -> None:
        from kubernetes.client.exceptions import ApiException

        if kind == "LISTED":
            present = set(pod["uids"])
            with self._lock:
                gone = [p for uid, p in self._pods.items() if uid not in present]
                for stale in gone:
                    del self._pods[stale.uid]
            for stale in gone:
                self._release(stale, orphan=True)
            return
        meta = pod.get("metadata", {})
        uid = str(meta.get("uid", ""))
        spec = pod.get("spec", {})
        node = spec.get("nodeName")
        if kind == "DELETED":
            with self._lock:
                local = self._pods.pop(uid, None)
            if local is not None:
                self._release(local, orphan=True)
            return
        if not node:
            if meta.get("deletionTimestamp") or spec.get("schedulingGates"):
                return
            try:
                self._bind(pod)
            except ApiException as exc:
                if exc.status not in (404, 409):  # gone, or bound meanwhile
                    raise
            return
        if node != self.config.node_name:
            return
        local = self._pods.get(uid)
        if meta.get("deletionTimestamp"):
            self._begin_termination(pod, local)
            return
        if local is None and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            self._start_pod(pod)
        elif local is not None:
            local.pod = pod

    def _bind(self, pod: Pod) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.node_name},
        }
        self._core.create_namespaced_pod_binding(
            meta["name"], meta["namespace"], body, _preload_content=False
        )

    def _readiness_path(self, pod: Pod) -> str:
        for container in pod.get("spec", {}).get("containers", []):
            http_get = (container.get("readinessProbe") or {}).get("httpGet") or {}
            if http_get.get("path"):
                return str(http_get["path"])
        return self.config.readiness_path

    def _start_pod(self, pod: Pod) -> None:
        meta = pod["metadata"]
        if not self._free_ips:
            raise RuntimeError(f"pod CIDR {self.config.pod_cidr} exhausted")
        ip = self._free_ips.pop()
        self._allocated_ips.add(ip)
        local = _LocalPod(
            uid=str(meta["uid"]), namespace=meta["namespace"], name=meta["name"], pod=pod, ip=ip
        )
        with self._lock:
            self._pods[local.uid] = local
        port = free_port()
        try:
            argv = self.config.launcher(pod, port)
        except Exception as exc:
            self._record_error(f"launcher failed for {local.key}: {exc}")
            self._report_waiting(local, "RunContainerError", f"launcher failed: {exc}")
            local.finished = True
            return
        if argv is None:
            local.ready = True
            self._report(local)
            return
        local.port = port
        local.argv = [str(a) for a in argv]
        self._patch_annotations(local)
        self._spawn(local)
        if not local.finished:
            self._report(local)

    def _spawn(self, local: _LocalPod) -> None:
        assert local.argv is not None
        env = {"POLYSERVE_LOCAL_PORT": str(local.port), "POD_NAME": local.name,
               "POD_NAMESPACE": local.namespace, "POD_IP": local.ip}  # fmt: skip
        for container in local.pod.get("spec", {}).get("containers", []):
            for var in container.get("env") or []:
                if "value" in var:
                    env[str(var["name"])] = str(var["value"])
                elif "valueFrom" in var:
                    try:
                        value = self._env_from(local.namespace, var["valueFrom"])
                    except ValueError as exc:  # kubelet's CreateContainerConfigError
                        self._record_error(f"cannot start {local.key}: {exc}")
                        local.finished = True
                        self._report_waiting(local, "CreateContainerConfigError", str(exc))
                        return
                    if value is not None:
                        env[str(var["name"])] = value
        env["POLYSERVE_LOCAL_PORT"] = str(local.port)
        log_path = self.log_dir / f"{local.namespace}_{local.name}.log"
        try:
            # Started from the reconcile thread, which outlives every process it starts.
            local.proc = ManagedProcess(
                local.key, local.argv, log_path, env=env, die_with_parent=True
            )
        except OSError as exc:
            self._record_error(f"cannot start {local.argv!r} for {local.key}: {exc}")
            local.finished = True
            self._report_waiting(local, "RunContainerError", str(exc))
            return
        local.started_at = _now()
        local.ready = False
        local.probe_failures = 0
        local.next_probe = time.monotonic()
        log.info("node agent: started %s for %s on port %d", local.argv, local.key, local.port)
        self._patch_annotations(local)

    def _env_from(self, namespace: str, source: dict[str, Any]) -> str | None:
        """A ``valueFrom`` variable's value, read at start as kubelet does: ``secretKeyRef`` and
        ``configMapKeyRef`` (None for other sources and for an optional one that is missing).
        Unlike kubelet, a missing required one fails the pod for good instead of retrying."""
        from kubernetes.client.exceptions import ApiException

        for kind, read in (
            ("secretKeyRef", self._core.read_namespaced_secret),
            ("configMapKeyRef", self._core.read_namespaced_config_map),
        ):
            ref = source.get(kind)
            if ref is None:
                continue
            what = "secret" if kind == "secretKeyRef" else "configmap"
            try:
                obj = json.loads(read(ref["name"], namespace, _preload_content=False).data)
            except ApiException as exc:
                if exc.status == 404 and ref.get("optional"):
                    return None
                raise ValueError(f'{what} "{ref["name"]}" not found ({exc.status})') from None
            if kind == "secretKeyRef":
                data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
            else:
                data = dict(obj.get("data") or {})
            if ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise ValueError(
                    f"couldn't find key {ref['key']} in {what} {namespace}/{ref['name']}"
                )
            return str(data[ref["key"]])
        return None

    def _patch_annotations(self, local: _LocalPod) -> None:
        annotations = {
            ANNOTATION_LOCAL_HOST: LOCAL_HOST,
            ANNOTATION_LOCAL_PORT: str(local.port),
        }
        if local.proc is not None:
            annotations[ANNOTATION_LOCAL_PID] = str(local.proc.pid)
        from kubernetes.client.exceptions import ApiException

        body = {"metadata": {"uid": local.uid, "annotations": annotations}}
        try:
            self._core.patch_namespaced_pod(
                local.name, local.namespace, body, _content_type=_MERGE, _preload_content=False
            )
        except ApiException as exc:
            if not _gone(exc):
                raise

    # ----------------------------------------------------------------------------------------
    # status

    def _container_statuses(self, local: _LocalPod, ready: bool) -> list[dict[str, Any]]:
        statuses = []
        for container in local.pod.get("spec", {}).get("containers", []):
            status: dict[str, Any] = {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "containerID": f"polyserve-local://{local.uid}/{container['name']}",
                "ready": ready,
                "started": not local.finished,
                "restartCount": local.restart_count,
                "state": {"running": {"startedAt": local.started_at}},
            }
            if local.last_exit is not None:
                status["lastState"] = {"terminated": local.last_exit}
            if local.finished and local.last_exit is not None:
                status["state"] = {"terminated": local.last_exit}
                status.pop("lastState", None)
            statuses.append(status)
        return statuses

    def _init_statuses(self, local: _LocalPod) -> list[dict[str, Any]]:
        return [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": local.start_time,
                        "finishedAt": local.start_time,
                    }
                },
            }
            for c in local.pod.get("spec", {}).get("initContainers") or []
        ]

    def _conditions(self, ready: bool, reason: str = "") -> list[dict[str, Any]]:
        now = _now()
        not_ready = {"reason": reason or "ContainersNotReady"} if not ready else {}
        flag = "True" if ready else "False"
        return [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now, **not_ready},
            {"type": "Ready", "status": flag, "lastTransitionTime": now, **not_ready},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ]

    def _base_status(self, local: _LocalPod) -> dict[str, Any]:
        return {
            "hostIP": LOCAL_HOST,
            "hostIPs": [{"ip": LOCAL_HOST}],
            "podIP": local.ip,
            "podIPs": [{"ip": local.ip}],
            "startTime": local.start_time,
            "initContainerStatuses": self._init_statuses(local),
        }

    def _report(self, local: _LocalPod) -> None:
        status = self._base_status(local)
        status["phase"] = "Running"
        status["conditions"] = self._conditions(local.ready)
        status["containerStatuses"] = self._container_statuses(local, local.ready)
        self._patch_status(local, status)

    def _report_finished(self, local: _LocalPod, exit_code: int) -> None:
        status = self._base_status(local)
        status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        status["conditions"] = self._conditions(False, "PodCompleted")
        status["containerStatuses"] = self._container_statuses(local, False)
        self._patch_status(local, status)

    def _report_waiting(self, local: _LocalPod, reason: str, message: str) -> None:
        status = self._base_status(local)
        status["phase"] = "Pending"
        status["conditions"] = self._conditions(False)
        status["containerStatuses"] = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": local.restart_count,
                "state": {"waiting": {"reason": reason, "message": message[:1000]}},
            }
            for c in local.pod.get("spec", {}).get("containers", [])
        ]
        self._patch_status(local, status)

    def _patch_status(self, local: _LocalPod, status: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {"metadata": {"uid": local.uid}, "status": status}
        try:
            self._core.patch_namespaced_pod_status(
                local.name, local.namespace, body, _content_type=_PATCH, _preload_content=False
            )
        except ApiException as exc:
            if not _gone(exc):
                raise

    # ----------------------------------------------------------------------------------------
    # termination

    def _begin_termination(self, pod: Pod, local: _LocalPod | None) -> None:
        if local is None or local.proc is None or not local.proc.alive():
            self._force_delete(pod)
            if local is not None:
                with self._lock:
                    self._pods.pop(local.uid, None)
                self._release(local, orphan=False)
            return
        if local.stopping:
            return
        meta = pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
        local.stopping = True
        local.pod = pod
        local.kill_at = time.monotonic() + float(grace)
        log.info("node agent: stopping %s (grace %ss)", local.key, grace)
        local.proc.terminate()

    def _force_delete(self, pod: Pod) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        try:
            self._core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                body=body,
                grace_period_seconds=0,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _release(self, local: _LocalPod, *, orphan: bool) -> None:
        """Forget a pod: give back its IP; a still-running process becomes an orphan to kill."""
        if local.proc is not None:
            if local.proc.alive():
                if orphan:
                    local.proc.terminate()
                    grace = local.pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
                    self._orphans.append((local.proc, time.monotonic() + float(grace)))
                else:
                    local.proc.stop(grace_s=0.0)
            else:
                local.proc.close()
        if local.ip in self._allocated_ips:
            self._allocated_ips.discard(local.ip)
            self._free_ips.insert(0, local.ip)

    # ----------------------------------------------------------------------------------------
    # periodic work: probes, exits, kills, heartbeat

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._heartbeat()
        for proc, kill_at in list(self._orphans):
            if not proc.alive():
                proc.close()
                self._orphans.remove((proc, kill_at))
            elif now >= kill_at:
                proc.kill()
        for local in list(self._pods.values()):
            if local.proc is None or local.finished:
                continue
            if local.stopping:
                if not local.proc.alive():
                    self._force_delete(local.pod)
                    with self._lock:
                        self._pods.pop(local.uid, None)
                    self._release(local, orphan=False)
                elif now >= local.kill_at:
                    local.proc.kill()
                continue
            code = local.proc.returncode
            if code is not None:
                self._on_exit(local, code)
            elif local.restart_at is None and now >= local.next_probe:
                self._probe(local)
            if local.restart_at is not None and now >= local.restart_at:
                local.restart_at = None
                local.restart_count += 1
                self._spawn(local)
                if not local.finished:
                    self._report(local)

    def _on_exit(self, local: _LocalPod, code: int) -> None:
        assert local.proc is not None
        if local.restart_at is not None:
            return
        log.info("node agent: process of %s exited with %d", local.key, code)
        local.last_exit = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": local.started_at,
            "finishedAt": _now(),
        }
        local.proc.close()
        local.ready = False
        policy = local.pod.get("spec", {}).get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            backoff = min(
                self.config.restart_backoff_s * (2 ** min(local.restart_count, 10)),
                self.config.max_restart_backoff_s,
            )
            local.restart_at = time.monotonic() + backoff
            self._report(local)
        else:
            local.finished = True
            self._report_finished(local, code)

    def _probe(self, local: _LocalPod) -> None:
        path = self._readiness_path(local.pod)
        url = f"http://{LOCAL_HOST}:{local.port}{path}"
        ok = False
        try:
            with urllib.request.urlopen(url, timeout=self.config.probe_timeout_s) as resp:
                ok = 200 <= resp.status < 400
        except (urllib.error.URLError, OSError, ValueError):
            ok = False
        local.next_probe = time.monotonic() + (
            self.config.readiness_period_s if local.ready else min(self.config.tick_s * 2, 0.25)
        )
        if ok:
            local.probe_failures = 0
            if not local.ready:
                local.ready = True
                self._report(local)
        elif local.ready:
            local.probe_failures += 1
            if local.probe_failures >= self.config.readiness_failure_threshold:
                local.ready = False
                self._report(local)

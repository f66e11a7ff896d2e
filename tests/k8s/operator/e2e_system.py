"""The whole system for the three-tier end-to-end test, on one of two clusters.

* **The devcluster** (the default): the chart is rendered with the pinned helm and what the
  control plane can hold is created from it (the CRD, ServiceAccounts, Roles and RoleBindings, the
  API-key Secret, the router's Service). The operator and the router do not run as pods (the
  devcluster's node agent runs only mock engines): they run as local processes started with the
  arguments of the chart's rendered Deployments, each as its chart ServiceAccount (a token from
  the TokenRequest API in a kubeconfig of its own), so the chart's RBAC is what they get.
* **An existing cluster** (``make e2e-kind``, or any cluster where the chart is installed with
  ``e2e-values.yaml``): ``POLYSERVE_E2E_KUBECONFIG`` names it, ``POLYSERVE_E2E_NAMESPACE`` the
  release's namespace and ``POLYSERVE_E2E_ROUTER_URL`` where the router answers (a
  ``kubectl port-forward``); the operator and the router are the chart's pods.

:class:`System` is what the tests see either way: an admin API client, the namespace, the
router's URL, the API keys, a way to stop and start the operator, and a way to talk to one engine
pod directly (bypassing the router, as a batch client holding a stream would).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from polyserve.devcluster.procs import ManagedProcess, free_port
from polyserve.operator import resources as r
from polyserve.operator.model import GROUP, PLURAL, VERSION
from tests.chart.test_chart import CHART, _helm
from tests.k8s.conftest import wait_for
from tests.operator.manifests import MOCK_IMAGE

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "slotiers.yaml"
VALUES = Path(__file__).with_name("e2e-values.yaml")
RELEASE = "ps"

ENV_KUBECONFIG = "POLYSERVE_E2E_KUBECONFIG"
ENV_NAMESPACE = "POLYSERVE_E2E_NAMESPACE"
ENV_ROUTER_URL = "POLYSERVE_E2E_ROUTER_URL"
ENV_ENGINE_IMAGE = "POLYSERVE_E2E_ENGINE_IMAGE"
ENV_RELEASE = "POLYSERVE_E2E_RELEASE"


# ------------------------------------------------------------------------------ the manifests


def api_keys() -> dict[str, str]:
    """The test API keys of ``e2e-values.yaml``, by name."""
    values = yaml.safe_load(VALUES.read_text())
    return {k["name"]: k["key"] for k in values["apiKeys"]["keys"]}


#: Autoscaler timings of the test, per tier: seconds instead of minutes so every wait is short.
#: voice grows on pending requests only (no scale-ahead) and may reach 2 replicas.
TEST_TIMING: dict[str, dict[str, Any]] = {
    "voice": {
        "replicas": {"min": 1, "max": 2},
        "autoscaling": {
            "enabled": True,
            "decisionIntervalS": 1,
            "startupS": 5,
            "scaleUpCooldownS": 0,
            "scaleDownCooldownS": 5,
            "drainAfterS": 3,
            "trendWindowS": 6,
            "staleAfterS": 10,
            "scaleAhead": False,
        },
        "drainTimeoutSeconds": 60,
    },
}


def for_mock_engines(doc: dict[str, Any], engine_image: str) -> dict[str, Any]:
    """An example SLOTier adapted to run the CPU mock engine, and nothing else changed but the
    timings in :data:`TEST_TIMING`.

    The engine: the mock engine's image and command instead of vLLM's; its arguments keep a
    scheduling policy the example sets (``--scheduling-policy priority``) and take the profile in
    place of ``--model`` (the mock engine has no weights), with ``--host 0.0.0.0`` (the mock engine
    listens on loopback by default, vLLM on every address). The operator appends the flags it
    derives for the tier as it does for vLLM, and the mock engine takes them unchanged (they time
    it). No GPU, memory request, node selector or
    toleration (a kind node has no GPU; the devcluster's node agent would not mind), no
    ``HF_TOKEN`` (nothing to download), and a short grace period (a mock engine stops at once).
    """
    out = copy.deepcopy(doc)
    spec = out["spec"]
    old = spec["engine"]
    args = [str(a) for a in old.get("args") or []]
    policy = ["--scheduling-policy", "priority"] if r.uses_priority_scheduling(args) else []
    spec["engine"] = {
        "image": engine_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["polyserve", "mock-engine"],
        "args": ["--profile", spec["profile"]["name"], "--host", "0.0.0.0", *policy],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
        "terminationGracePeriodSeconds": 5,
        "preStopSleepSeconds": 1 if old.get("preStopSleepSeconds") else 0,
    }
    for key, value in TEST_TIMING.get(out["metadata"]["name"], {}).items():
        if isinstance(value, dict):
            spec[key] = {**spec.get(key, {}), **value}
        else:
            spec[key] = value
    return out


def example_tiers(engine_image: str) -> list[dict[str, Any]]:
    """examples/slotiers.yaml (voice, chat, batch), adapted by :func:`for_mock_engines`."""
    docs = [d for d in yaml.safe_load_all(EXAMPLES.read_text()) if d]
    return [for_mock_engines(d, engine_image) for d in docs]


def render_chart(namespace: str, release: str = RELEASE) -> list[dict[str, Any]]:
    out = subprocess.run(
        [_helm(), "template", release, str(CHART), "--namespace", namespace, "--include-crds",
         "-f", str(VALUES)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


# ------------------------------------------------------------------------------ the system


class Operator:
    """Stops and starts the operator (a local process, or the chart's Deployment)."""

    def stop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError


EngineLines = Callable[[dict[str, Any], str, dict[str, Any]], Iterator[bytes]]
"""(pod, path, JSON body) -> the lines of the engine's answer, read as they come."""


@dataclass
class System:
    api: Any
    namespace: str
    router_url: str
    engine_image: str
    operator: Operator
    #: POST straight to one engine pod (not through the router)
    engine_lines: EngineLines
    #: seconds between two operator passes (the chart's operator.intervalSeconds)
    interval_s: float = 1.0
    logs: Callable[[], str] = field(default=lambda: "")
    #: log lines of the operator and the router where the API server refused them (devcluster;
    #: in-cluster logs are not read)
    refusals: Callable[[], list[str]] = field(default=list)


def _polyserve() -> list[str]:
    beside = Path(sys.executable).parent / "polyserve"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("polyserve")
    return [found] if found else [sys.executable, "-m", "polyserve.cli"]


def _set_flag(args: list[str], flag: str, value: str | None) -> list[str]:
    """``flag value`` in place of the existing one (or appended); ``None`` drops the flag."""
    out: list[str] = []
    i = 0
    found = False
    while i < len(args):
        if args[i] == flag:
            found = True
            if value is not None:
                out += [flag, value]
            i += 2
            continue
        out.append(args[i])
        i += 1
    if not found and value is not None:
        out += [flag, value]
    return out


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class LocalComponents(Operator):
    """The chart on the devcluster, with the operator and the router as local processes that
    run as the chart's ServiceAccounts."""

    def __init__(self, api: Any, namespace: str, workdir: Path) -> None:
        self.api, self.namespace, self.workdir = api, namespace, workdir
        self.processes: list[ManagedProcess] = []
        self.operator_process: ManagedProcess | None = None
        self.router_process: ManagedProcess | None = None
        self.starts = 0
        docs = render_chart(namespace)
        deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
        self.router_dep = deployments[f"{RELEASE}-polyserve-router"]
        self.operator_dep = deployments[f"{RELEASE}-polyserve-operator"]
        self._install(docs)

    def _install(self, docs: list[dict[str, Any]]) -> None:
        from kubernetes import client, utils
        from kubernetes.client.exceptions import ApiException

        for doc in docs:
            kind = doc["kind"]
            if kind == "CustomResourceDefinition":
                try:
                    client.ApiextensionsV1Api(self.api).create_custom_resource_definition(doc)
                except ApiException as exc:
                    if exc.status != 409:  # already there (the session's CRD fixture)
                        raise
            elif kind in ("ServiceAccount", "Secret", "Role", "RoleBinding", "Service"):
                utils.create_from_dict(self.api, doc, namespace=self.namespace)
            elif kind == "Deployment":
                continue  # run below as local processes (the node agent runs mock engines only)
            else:
                raise AssertionError(f"the chart renders a {kind} this test does not install")
        custom = client.CustomObjectsApi(self.api)

        def served() -> bool:
            try:
                custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True

        wait_for(served, timeout_s=30, what="the chart's SLOTier CRD to be served")

    def _kubeconfig_as(self, account: str) -> Path:
        """A kubeconfig holding a token of ``account`` (TokenRequest), nothing more."""
        from kubernetes import client

        token = (
            client.CoreV1Api(self.api)
            .create_namespaced_service_account_token(
                account, self.namespace, {"spec": {"expirationSeconds": 3600}}
            )
            .status.token
        )
        cfg = self.api.configuration
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {"server": cfg.host, "certificate-authority": cfg.ssl_ca_cert},
                }
            ],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [
                {
                    "name": account,
                    "context": {"cluster": "e2e", "user": account, "namespace": self.namespace},
                }
            ],
            "current-context": account,
        }
        path = self.workdir / f"{account}.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        path.chmod(0o600)
        return path

    @staticmethod
    def _args(dep: dict[str, Any]) -> list[str]:
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        return [str(a) for a in container["args"]]

    def start_router(self) -> str:
        from kubernetes import client

        secret = client.CoreV1Api(self.api).read_namespaced_secret(
            f"{RELEASE}-polyserve-api-keys", self.namespace
        )
        import base64

        keys = self.workdir / "keys.yaml"
        keys.write_bytes(base64.b64decode(secret.data["keys.yaml"]))
        port = free_port()
        args = self._args(self.router_dep)
        args = _set_flag(args, "--host", "127.0.0.1")
        args = _set_flag(args, "--port", str(port))
        args = _set_flag(args, "--keys", str(keys))
        args = _set_flag(
            args, "--kubeconfig", str(self._kubeconfig_as(self._account(self.router_dep)))
        )
        self.router_process = self._spawn("router", args)
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: self._alive(self.router_process) and _get_ok(url + "/polyserve/v1/state"),
            timeout_s=60,
            what="the router (as the chart's router ServiceAccount) to answer",
        )
        self.router_url = url
        return url

    def _account(self, dep: dict[str, Any]) -> str:
        return str(dep["spec"]["template"]["spec"]["serviceAccountName"])

    def _alive(self, proc: ManagedProcess | None) -> bool:
        if proc is None or not proc.alive():
            raise AssertionError(f"{proc} exited:\n{proc.log_tail() if proc else ''}")
        return True

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        self.starts += 1
        log = self.workdir / f"{name}-{self.starts}.log"
        proc = ManagedProcess(name, [*_polyserve(), *args], log, die_with_parent=True)
        self.processes.append(proc)
        return proc

    # Operator
    def start(self) -> None:
        liveness = free_port()
        args = self._args(self.operator_dep)
        args = _set_flag(args, "--router-url", self.router_url)
        args = _set_flag(args, "--liveness", f"http://127.0.0.1:{liveness}/healthz")
        kubeconfig = self._kubeconfig_as(self._account(self.operator_dep))
        args = _set_flag(args, "--kubeconfig", str(kubeconfig))
        self.operator_process = self._spawn("operator", args)
        wait_for(
            lambda: (
                self._alive(self.operator_process)
                and _get_ok(f"http://127.0.0.1:{liveness}/healthz")
            ),
            timeout_s=60,
            what="the operator (as the chart's operator ServiceAccount) to be live",
        )

    def stop(self) -> None:
        proc = self.operator_process
        assert proc is not None
        code = proc.stop(grace_s=20)
        assert code is not None, "the operator did not exit"
        self.operator_process = None

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop(grace_s=5)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path})\n{p.log_tail(3000)}" for p in self.processes)

    def refusals(self) -> list[str]:
        return [
            f"{p.log_path.name}: {line[:300]}"
            for p in self.processes
            for line in p.log_path.read_text(errors="replace").splitlines()
            if "Forbidden" in line or "forbidden" in line
        ]

    def engine_lines(self, pod: dict[str, Any], path: str, body: dict[str, Any]) -> Iterator[bytes]:
        """Straight to the pod's local process (the devcluster's pod IPs are not routable)."""
        address = r.pod_address(pod)
        assert address is not None, pod["metadata"]["name"]
        host, port = address
        req = urllib.request.Request(
            f"http://{host}:{port}{path}",
            json.dumps(body).encode() if body else None,
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            yield from resp


class InstalledComponents(Operator):
    """The chart installed on a cluster (kind): the operator is its Deployment."""

    def __init__(self, api: Any, namespace: str, release: str) -> None:
        self.api, self.namespace = api, namespace
        self.deployment = f"{release}-polyserve-operator"
        self.selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"

    def _scale(self, n: int) -> None:
        from kubernetes import client

        client.AppsV1Api(self.api).patch_namespaced_deployment_scale(
            self.deployment, self.namespace, {"spec": {"replicas": n}}
        )

    def _pods(self) -> list[Any]:
        from kubernetes import client

        return list(
            client.CoreV1Api(self.api)
            .list_namespaced_pod(self.namespace, label_selector=self.selector)
            .items
        )

    def stop(self) -> None:
        self._scale(0)
        wait_for(lambda: not self._pods(), timeout_s=90, what="the operator pod to be gone")

    def start(self) -> None:
        self._scale(1)

        def ready() -> bool:
            return any(
                not p.metadata.deletion_timestamp
                and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
                for p in self._pods()
            )

        wait_for(ready, timeout_s=120, what="a new operator pod to be Ready")

    def engine_lines(self, pod: dict[str, Any], path: str, body: dict[str, Any]) -> Iterator[bytes]:
        """Through the API server's pod proxy (the test runs outside the cluster network)."""
        cfg = self.api.configuration
        meta = pod["metadata"]
        port = (meta.get("annotations") or {}).get(r.ANNOTATION_ENGINE_PORT) or 8000
        url = f"{cfg.host}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}:{port}/proxy{path}"
        headers = {"Content-Type": "application/json"}
        auth = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix(
            "BearerToken"
        )
        if auth:
            headers["Authorization"] = auth
        resp = self.api.rest_client.pool_manager.request(
            "POST" if body else "GET",
            url,
            body=json.dumps(body) if body else None,
            headers=headers,
            preload_content=False,
            timeout=60,
        )
        try:
            if resp.status != 200:
                raise AssertionError(f"{url}: HTTP {resp.status}: {resp.read()[:500]!r}")
            buffer = b""
            for chunk in resp.stream(1024, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    yield line + b"\n"
            if buffer:
                yield buffer
        finally:
            resp.release_conn()


@contextlib.contextmanager
def existing_cluster() -> Iterator[System]:
    """The system as ``make e2e-kind`` installed it (see the module doc)."""
    from kubernetes import config

    kubeconfig = os.environ[ENV_KUBECONFIG]
    namespace = os.environ.get(ENV_NAMESPACE) or "polyserve"
    router_url = os.environ.get(ENV_ROUTER_URL)
    if not router_url:
        raise AssertionError(f"{ENV_KUBECONFIG} is set: set {ENV_ROUTER_URL} too (a port-forward)")
    cfg: Any = config
    api = cfg.new_client_from_config(config_file=kubeconfig)
    installed = InstalledComponents(api, namespace, os.environ.get(ENV_RELEASE) or RELEASE)
    wait_for(lambda: _get_ok(router_url + "/polyserve/v1/state"), timeout_s=60, what="the router")
    yield System(
        api=api,
        namespace=namespace,
        router_url=router_url.rstrip("/"),
        engine_image=os.environ.get(ENV_ENGINE_IMAGE) or MOCK_IMAGE,
        operator=installed,
        engine_lines=installed.engine_lines,
    )


@contextlib.contextmanager
def on_devcluster(api: Any, namespace: str, workdir: Path) -> Iterator[System]:
    """The chart on the devcluster, its operator and router as local processes."""
    local = LocalComponents(api, namespace, workdir)
    try:
        url = local.start_router()
        local.start()
        yield System(
            api=api,
            namespace=namespace,
            router_url=url,
            engine_image=os.environ.get(ENV_ENGINE_IMAGE) or MOCK_IMAGE,
            operator=local,
            engine_lines=local.engine_lines,
            logs=local.logs,
            refusals=local.refusals,
        )
    finally:
        local.close()


# ------------------------------------------------------------------------------ observers


@dataclass(frozen=True)
class PodEvent:
    at: float  # time.monotonic() when seen
    type: str
    name: str
    tier: str
    draining: bool
    cost: str | None
    deleting: bool
    ready: bool


class PodRecorder:
    """Every change of the namespace's engine pods, from a watch (nothing is missed between two
    polls): the drain annotation, the deletion cost, the deletion."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.events: list[PodEvent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-recorder", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> PodRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        selector = f"{r.LABEL_COMPONENT}={r.COMPONENT_ENGINE}"
        version = ""
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                if not version:
                    listed = core.list_namespaced_pod(self.namespace, label_selector=selector)
                    version = listed.metadata.resource_version
                    for pod in listed.items:
                        self._add("LISTED", pod)
                for ev in w.stream(
                    core.list_namespaced_pod,
                    self.namespace,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=2,
                ):
                    pod = ev["object"]
                    version = pod.metadata.resource_version
                    self._add(ev["type"], pod)
                    if self._stop.is_set():
                        break
            except Exception as exc:  # a 410 Gone: list again
                self.errors.append(repr(exc))
                version = ""
            finally:
                w.stop()

    def _add(self, type_: str, pod: Any) -> None:
        ann = pod.metadata.annotations or {}
        event = PodEvent(
            at=time.monotonic(),
            type=type_,
            name=pod.metadata.name,
            tier=(pod.metadata.labels or {}).get(r.LABEL_TIER, ""),
            draining=ann.get(r.ANNOTATION_DRAINING) == "true",
            cost=ann.get(r.ANNOTATION_DELETION_COST),
            deleting=pod.metadata.deletion_timestamp is not None or type_ == "DELETED",
            ready=any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            ),
        )
        with self._lock:
            self.events.append(event)

    def of(self, name: str) -> list[PodEvent]:
        with self._lock:
            return [e for e in self.events if e.name == name]

    def first(self, name: str, test: Callable[[PodEvent], bool]) -> PodEvent | None:
        return next((e for e in self.of(name) if test(e)), None)

    def names(self, tier: str) -> set[str]:
        """The tier's pods seen alive in the window (not one already terminating when first seen:
        a leftover of an earlier scale-down is not this window's)."""
        with self._lock:
            return {e.name for e in self.events if e.tier == tier and not e.deleting}


class EngineStream(threading.Thread):
    """One long completion streamed straight from an engine pod, read to its end."""

    def __init__(self, system: System, pod: dict[str, Any], max_tokens: int) -> None:
        super().__init__(name=f"stream-{pod['metadata']['name']}", daemon=True)
        self.system, self.pod, self.max_tokens = system, pod, max_tokens
        self.first_token = threading.Event()
        self.chunks = 0
        self.completion_tokens: int | None = None
        self.done = False
        self.error: str | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        body = {
            "model": _served_model(self.pod),
            "prompt": "a long batch job",
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            for raw in self.system.engine_lines(self.pod, "/v1/completions", body):
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    self.done = True
                    break
                event = json.loads(data)
                if event.get("choices"):
                    self.chunks += 1
                    self.first_token.set()
                if event.get("usage"):
                    self.completion_tokens = event["usage"]["completion_tokens"]
        except Exception as exc:
            self.error = repr(exc)
        finally:
            self.ended_at = time.monotonic()
            self.first_token.set()


def _served_model(pod: dict[str, Any]) -> str:
    """The model name the engine serves (its ``--served-model-name``)."""
    for c in pod["spec"]["containers"]:
        words = [str(w) for w in (c.get("command") or []) + (c.get("args") or [])]
        if "--served-model-name" in words:
            return words[words.index("--served-model-name") + 1]
    raise AssertionError(f"no --served-model-name in {pod['metadata']['name']}")

"""The three example SLOTiers end to end, with the chart: installed from its rendered manifests,
the operator and the router running with the chart's arguments and RBAC, a workload through the
router, a scale-up under load, a drained scale-down, a bad tier refused, and the operator
restarted in the middle of a drain.

The same module runs on the devcluster (by default) and on a cluster where the chart is installed
(``make e2e-kind``): the ``system`` fixture is the one switch (see ``e2e_system``). Every wait has
a deadline; the autoscaler's timings are seconds (``e2e_system.TEST_TIMING``).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from polyserve.operator import resources as r
from polyserve.operator.model import GROUP, PLURAL, VERSION
from tests.k8s.conftest import new_namespace, wait_for
from tests.k8s.operator.e2e_system import (
    ENV_KUBECONFIG,
    EngineStream,
    PodRecorder,
    System,
    api_keys,
    example_tiers,
    existing_cluster,
    on_devcluster,
)
from tests.operator.manifests import BAD_SPECS, _merge, tier_condition

pytestmark = pytest.mark.timeout(300)

#: the tier each example runs at first, and its TPOT
START = {"voice": 1, "chat": 1, "batch": 2}
KEYS = api_keys()


@pytest.fixture(scope="module")
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """The one switch: an existing cluster when ``POLYSERVE_E2E_KUBECONFIG`` is set (the chart
    installed there by ``make e2e-kind``), else the chart on the session's devcluster."""
    failed = request.session.testsfailed
    if os.environ.get(ENV_KUBECONFIG):
        with existing_cluster() as system:
            yield system
        return
    api = request.getfixturevalue("api")
    namespace = new_namespace(api)
    try:
        with on_devcluster(api, namespace, tmp_path_factory.mktemp("e2e")) as system:
            yield system
            if request.session.testsfailed > failed:  # the operator's and router's logs
                reporter = request.config.pluginmanager.get_plugin("terminalreporter")
                if reporter is not None:
                    reporter.write_line(system.logs())
    finally:
        from kubernetes import client

        client.CoreV1Api(api).delete_namespace(namespace)


@pytest.fixture(scope="module")
def tiers(system: System) -> Iterator[dict[str, dict[str, Any]]]:
    """The three example tiers applied (as the API server stored them), once all are Ready;
    deleted afterwards (a kept kind cluster is reused by the next run)."""
    from kubernetes.client.exceptions import ApiException

    custom = _custom(system)
    bodies = {t["metadata"]["name"]: t for t in example_tiers(system.engine_image)}

    def delete_all() -> None:
        for name in bodies:
            try:
                custom.delete_namespaced_custom_object(
                    GROUP, VERSION, system.namespace, PLURAL, name
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

    delete_all()  # left over from an earlier run on the same cluster
    wait_for(
        lambda: (
            not any(_pods(system, name) for name in bodies)
            and not custom.list_namespaced_custom_object(GROUP, VERSION, system.namespace, PLURAL)[
                "items"
            ]
        ),
        timeout_s=120,
        what="no SLOTier and no engine pod left in the namespace",
    )
    for body in bodies.values():
        custom.create_namespaced_custom_object(
            GROUP, VERSION, system.namespace, PLURAL, body, field_validation="Strict"
        )
    for name, n in START.items():
        wait_for(
            lambda name=name, n=n: _ready(system, name, n),
            timeout_s=120,
            what=f"{name}: {n} ready replicas in the status",
        )
    yield {name: _tier(system, name) for name in bodies}
    delete_all()


# ------------------------------------------------------------------------------ helpers


def _custom(system: System) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(system.api)


def _tier(system: System, name: str) -> dict[str, Any]:
    got: dict[str, Any] = _custom(system).get_namespaced_custom_object(
        GROUP, VERSION, system.namespace, PLURAL, name
    )
    return got


def _pods(system: System, tier: str) -> list[dict[str, Any]]:
    """The tier's engine pods not being deleted, as API JSON."""
    from kubernetes import client

    items = (
        client.CoreV1Api(system.api)
        .list_namespaced_pod(system.namespace, label_selector=r.tier_selector(tier))
        .items
    )
    pods = [system.api.sanitize_for_serialization(p) for p in items]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _ready_pods(system: System, tier: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in _pods(system, tier) if r.pod_ready(p))


def _deployment_replicas(system: System, tier: str) -> int:
    from kubernetes import client

    dep = client.AppsV1Api(system.api).read_namespaced_deployment(tier, system.namespace)
    return int(dep.spec.replicas)


def _ready(system: System, name: str, n: int) -> dict[str, Any] | None:
    """The tier at ``n`` replicas, all Ready, by its status and by its pods."""
    tier = _tier(system, name)
    status = tier.get("status") or {}
    ready = tier_condition(tier, "Ready")
    if (
        status.get("replicas") == n
        and status.get("readyReplicas") == n
        and status.get("desiredReplicas") == n
        and ready is not None
        and ready["status"] == "True"
        and len(_ready_pods(system, name)) == n
        and len(_pods(system, name)) == n
    ):
        return tier
    return None


def _state(system: System) -> dict[str, Any]:
    with urllib.request.urlopen(system.router_url + "/polyserve/v1/state", timeout=5) as resp:
        state: dict[str, Any] = json.loads(resp.read())
    return state


def _router_backends(system: System, tier: str) -> list[str]:
    return sorted(b["name"] for b in _state(system)["backends"] if b["tier"] == tier and b["ready"])


def _send(
    system: System,
    tier: str | None,
    *,
    key: str = "e2e-all",
    prompt: str | list[int] = "hello from the e2e test",
    max_tokens: int = 8,
    stream: bool = False,
    timeout_s: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    body = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
    }
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEYS[key]}"}
    if tier is not None:
        headers["x-polyserve-tier"] = tier
    req = urllib.request.Request(
        system.router_url + "/v1/completions", json.dumps(body).encode(), headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class Load:
    """Requests sent back to back from a few threads until stopped; their answers kept as
    (tier asked, HTTP status, tier served, backend)."""

    def __init__(self, system: System, tiers: list[str], threads: int, **request: Any) -> None:
        self.system, self.tiers, self.request = system, tiers, request
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[str, int, str | None, str | None]] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def _run(self, i: int) -> None:
        while not self.stop.is_set():
            tier = self.tiers[i % len(self.tiers)]
            status, headers, _ = _send(self.system, tier, stream=i % 2 == 0, **self.request)
            with self.lock:
                self.results.append(
                    (
                        tier,
                        status,
                        headers.get("X-PolyServe-Tier"),
                        headers.get("X-PolyServe-Backend"),
                    )
                )
            i += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)


def _attainments(system: System) -> dict[str, dict[str, Any]] | None:
    """Every tier (as stored) once each has a status.attainment."""
    got = {name: _tier(system, name) for name in START}
    if all((t.get("status") or {}).get("attainment") is not None for t in got.values()):
        return got
    return None


# ------------------------------------------------------------------------------ the tests


def test_three_example_tiers_end_to_end(system: System, tiers: dict[str, dict[str, Any]]) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    apps = client.AppsV1Api(system.api)
    tpot = {name: float(t["spec"]["tpotMs"]) for name, t in tiers.items()}

    # Deployments and pods for all three tiers, owned by their SLOTier; the status agrees.
    for name, n in START.items():
        dep = apps.read_namespaced_deployment(name, system.namespace)
        (owner,) = dep.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == (
            "SLOTier",
            name,
            tiers[name]["metadata"]["uid"],
        )
        assert dep.spec.replicas == n and len(_ready_pods(system, name)) == n
        for type_ in ("InvalidSpec", "ProfileMissing"):
            cond = tier_condition(tiers[name], type_)
            assert cond is not None and cond["status"] == "False", cond
        assert tiers[name]["status"]["selector"] == r.tier_selector(name)
    wait_for(
        lambda: all(_router_backends(system, name) == _ready_pods(system, name) for name in START),
        timeout_s=60,
        what="the router to discover every tier's ready pods",
    )
    backend_tier = {b["name"]: b["tier"] for b in _state(system)["backends"]}

    # A workload through the router, until the operator reports every tier's attainment.
    with Load(system, list(START), threads=3, max_tokens=6) as work:
        stored = wait_for(
            lambda: _attainments(system), timeout_s=60, what="status.attainment of every tier"
        )
    # Each request ran on a server of its tier or a tighter one (lazy promotion, never looser).
    assert {t for t, _, _, _ in work.results} == set(START)
    for tier, status, served_tier, backend in work.results:
        assert status == 200 and served_tier == tier, (tier, status, served_tier)
        host = backend_tier[backend or ""]
        assert tpot[host] <= tpot[tier], f"a {tier} request ran on a {host} server"
    assert {backend_tier[b or ""] for t, _, _, b in work.results if t == "voice"} == {"voice"}
    # Status: attainment from the router's verdicts, Degraded agreeing with it.
    for name, tier_obj in stored.items():
        value = tier_obj["status"]["attainment"]
        assert 0.0 <= value <= 1.0 and math.isfinite(value)
        degraded = tier_condition(tier_obj, "Degraded")
        assert degraded is not None
        assert degraded["status"] == ("True" if value < 0.9 else "False"), (name, degraded)
    # The API key's default tier, and a key that may not use a tighter tier than its own.
    status, headers, _ = _send(system, None)
    assert status == 200 and headers["X-PolyServe-Tier"] == "chat"
    status, _, data = _send(system, "voice", key="e2e-batch")
    assert status == 403, data

    # (a request that had to wait during the workload may have grown voice already: back to 1)
    wait_for(lambda: _ready(system, "voice", 1), timeout_s=60, what="voice at 1 replica")
    with PodRecorder(system.api, system.namespace) as pods:
        # Scale-up under load: voice's requests pend (one server cannot prefill them all within
        # the TTFT), so the autoscaler adds a server.
        with Load(system, ["voice"], threads=4, prompt=[7] * 6000, max_tokens=4) as load:
            up = wait_for(
                lambda: _ready(system, "voice", 2),
                timeout_s=90,
                what="voice grown to 2 ready replicas",
            )
        assert any(status == 429 for _, status, _, _ in load.results), "voice was over capacity"
        last = up["status"]["lastScaling"]
        assert (last["fromReplicas"], last["toReplicas"], last["reason"]) == (
            1,
            2,
            "ScaleUpPending",
        )

        # Load gone: one voice server drains (marked, lowest deletion cost, deleted).
        wait_for(
            lambda: _ready(system, "voice", 1) and _deployment_replicas(system, "voice") == 1,
            timeout_s=90,
            what="voice drained back to 1 replica",
        )
        (kept,) = _ready_pods(system, "voice")
        # Every voice server that went in this window (one, unless the load grew voice again
        # before it drained): each drained in order, whichever the autoscaler picked.
        gone = pods.names("voice") - {kept}
        assert gone, "a voice server was removed"
        for name in sorted(gone):
            wait_for(
                lambda name=name: pods.first(name, lambda e: e.type == "DELETED"),
                timeout_s=30,
                what=f"{name} deleted",
            )
    for name in sorted(gone):
        marked = pods.first(name, lambda e: e.draining)
        costed = pods.first(name, lambda e: e.cost == r.DRAINED_DELETION_COST)
        deleting = pods.first(name, lambda e: e.deleting)
        assert marked and costed and deleting, pods.of(name)
        assert marked.at <= costed.at <= deleting.at, "marked, then the lowest cost, then deleted"
    assert not pods.first(kept, lambda e: e.draining or e.cost is not None or e.deleting)
    tier = _tier(system, "voice")
    last = tier["status"]["lastScaling"]
    assert (last["fromReplicas"], last["toReplicas"]) == (2, 1)
    assert last["reason"] in ("ScaleDownNoTraffic", "ScaleDownDrained"), last
    assert tier["status"].get("draining", []) == []
    wait_for(
        lambda: _router_backends(system, "voice") == [kept],
        timeout_s=30,
        what="the router to forget the drained server",
    )

    # A bad SLOTier is refused by the API server with the schema's (or CEL rule's) message.
    batch = next(t for t in example_tiers(system.engine_image) if t["metadata"]["name"] == "batch")
    bad = {what: (spec, phrase) for what, spec, phrase in BAD_SPECS}
    for what in ("tpot zero", "min above max", "fixed with autoscaling on", "unknown field"):
        spec, phrase = bad[what]
        body = {**batch, "metadata": {"name": "bad"}, "spec": _merge(batch["spec"], spec)}
        with pytest.raises(ApiException) as err:
            _custom(system).create_namespaced_custom_object(
                GROUP, VERSION, system.namespace, PLURAL, body, field_validation="Strict"
            )
        assert err.value.status in (400, 422), err.value.body
        assert phrase in json.loads(err.value.body)["message"], (what, err.value.body)
    stored_names = _custom(system).list_namespaced_custom_object(
        GROUP, VERSION, system.namespace, PLURAL
    )["items"]
    assert sorted(t["metadata"]["name"] for t in stored_names) == ["batch", "chat", "voice"]
    # The operator and the router did all this with the chart's RBAC, never refused.
    assert system.refusals() == []


def test_operator_restarted_mid_drain_deletes_no_streaming_pod(
    system: System, tiers: dict[str, dict[str, Any]]
) -> None:
    """batch (fixed replicas) is scaled 2 -> 1 while both its servers hold a long stream; the
    operator is stopped and a new one started while the drain waits. No pod goes while its stream
    lasts; once it ends the new operator finishes the drain."""
    wait_for(lambda: _ready(system, "batch", 2), timeout_s=120, what="batch at 2 ready replicas")
    with PodRecorder(system.api, system.namespace) as pods:
        streams = {
            p["metadata"]["name"]: EngineStream(system, p, max_tokens=2500)
            for p in _pods(system, "batch")
        }
        for s in streams.values():
            s.start()
        for name, s in streams.items():
            assert s.first_token.wait(30) and s.error is None, (name, s.error)

        # kubectl scale slotier batch --replicas 1
        _custom(system).patch_namespaced_custom_object_scale(
            GROUP, VERSION, system.namespace, PLURAL, "batch", {"spec": {"replicas": 1}}
        )

        def marked() -> list[str]:
            return [n for n in streams if pods.first(n, lambda e: e.draining)]

        (draining,) = wait_for(marked, timeout_s=30, what="a batch pod marked draining")
        stream = streams[draining]
        assert stream.ended_at is None, "the drained pod's stream is still running"
        wait_for(
            lambda: any(
                b["name"] == draining and b["draining"] for b in _state(system)["backends"]
            ),
            timeout_s=30,
            what="the router to stop sending to the draining pod",
        )

        system.operator.stop()
        assert stream.ended_at is None, "the stream outlasts the old operator"
        system.operator.start()
        restarted_at = time.monotonic()

        # While the stream lasts, the new operator keeps the pod (and its replica).
        while stream.is_alive():
            assert _deployment_replicas(system, "batch") == 2
            assert len(_pods(system, "batch")) == 2
            stream.join(timeout=0.5)
        assert stream.ended_at is not None
        assert stream.ended_at - restarted_at >= 3 * system.interval_s, (
            "the stream ended before the new operator ran a few passes: make it longer"
        )
        for name, s in streams.items():
            s.join(timeout=60)
            assert s.error is None and s.done, (
                f"{name}'s stream was cut ({s.error}): it went mid-stream"
            )
            assert s.completion_tokens == 2500, (name, s.completion_tokens)

        # Then the drain completes: the lowest cost, the replica released, the pod deleted.
        wait_for(
            lambda: _ready(system, "batch", 1) and _deployment_replicas(system, "batch") == 1,
            timeout_s=60,
            what="batch at 1 replica",
        )
        wait_for(
            lambda: pods.first(draining, lambda e: e.type == "DELETED"),
            timeout_s=30,
            what=f"{draining} deleted",
        )
    costed = pods.first(draining, lambda e: e.cost == r.DRAINED_DELETION_COST)
    deleting = pods.first(draining, lambda e: e.deleting)
    assert costed and deleting
    assert stream.ended_at <= deleting.at, "deleted only after its stream ended"
    # (the cost may be set a beat before the client reads the end: the engine finished first)
    assert costed.at >= restarted_at, "the new operator finished the drain"
    (other,) = set(streams) - {draining}
    assert not pods.first(other, lambda e: e.draining or e.deleting or e.cost is not None)
    assert _ready_pods(system, "batch") == [other]
    tier = _tier(system, "batch")
    status = tier["status"]
    assert (status["replicas"], status["readyReplicas"], status["desiredReplicas"]) == (1, 1, 1)
    assert status.get("draining", []) == []
    scaling = tier_condition(tier, "Scaling")
    assert scaling is not None and scaling["status"] == "False", scaling
    last = status["lastScaling"]
    assert (last["fromReplicas"], last["toReplicas"], last["reason"]) == (2, 1, "FixedReplicas")
    # Both operators and the router did all this with the chart's RBAC, never refused.
    assert system.refusals() == []

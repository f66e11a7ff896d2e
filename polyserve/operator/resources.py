"""Pure functions from an SLOTier to the objects the operator keeps: its Deployment and Service.

Nothing here talks to the API. Labels and annotations that other components rely on are defined
here once:

* ``polyserve.io/tier=<SLOTier name>`` and ``app.kubernetes.io/component=engine`` on every engine
  pod: the Deployment's and Service's selector, and what the router's discovery watches;
* ``polyserve.io/model=<model, as a label value>`` on the pods (the exact served name is in the
  pod annotation ``polyserve.io/model``);
* ``polyserve.io/draining: "true"`` on a pod the operator is draining for a scale-down: the router
  sends it no new requests and lets it finish what it has;
* ``controller.kubernetes.io/pod-deletion-cost`` (the lowest int32) on a drained pod, so that the
  ReplicaSet controller removes exactly that pod when the replica count drops.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from polyserve.operator.model import API_VERSION, KIND, EngineSpec, SLOTierSpec
from polyserve.policy.checks import step_budget_ms
from polyserve.profile import Profile
from polyserve.tier_engine import TierEngine, derive_tier_engine
from polyserve.vllm import ENV_CHUNK_BUDGET_MS, ENV_PROFILE, ENV_PROFILE_YAML, SCHEDULER_CLS
from polyserve.wire.vllm_args import flag_value, has_flag

LABEL_TIER = "polyserve.io/tier"
LABEL_MODEL = "polyserve.io/model"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
COMPONENT_ENGINE = "engine"
MANAGED_BY = "polyserve-operator"

ANNOTATION_MODEL = "polyserve.io/model"
ANNOTATION_ENGINE_PORT = "polyserve.io/engine-port"
ANNOTATION_DRAINING = "polyserve.io/draining"
ANNOTATION_DRAINING_SINCE = "polyserve.io/draining-since"
ANNOTATION_APPLIED = "polyserve.io/applied"
"""Digest of what the operator last applied (unchanged: nothing to write)."""
ANNOTATION_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: the devcluster's node agent: where a pod's process really listens (pod IPs there are fake)
ANNOTATION_LOCAL_HOST = "polyserve.io/local-host"
ANNOTATION_LOCAL_PORT = "polyserve.io/local-port"
#: lowest pod-deletion-cost (int32 minimum): the ReplicaSet controller deletes this pod first
DRAINED_DELETION_COST = str(-(2**31))

FIELD_MANAGER = "polyserve-operator"
ENGINE_CONTAINER = "engine"
PORT_NAME = "http"


def model_label(model: str) -> str:
    """A model name as a label value: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", ".", model)[:63]
    return value.strip("._-") or "model"


def selector_labels(tier: str) -> dict[str, str]:
    """The labels that select a tier's engine pods (Deployment selector, Service, router)."""
    return {LABEL_TIER: tier, LABEL_COMPONENT: COMPONENT_ENGINE}


def tier_selector(tier: str) -> str:
    """``selector_labels`` as a label-selector string (SLOTier ``status.selector``, list calls)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(tier).items()))


ENGINE_PODS_SELECTOR = f"{LABEL_TIER},{LABEL_COMPONENT}={COMPONENT_ENGINE}"
"""Every tier's engine pods (the router's discovery watches these)."""


def labels(tier: str, spec: SLOTierSpec) -> dict[str, str]:
    return {
        **selector_labels(tier),
        LABEL_MODEL: model_label(spec.model),
        LABEL_NAME: "polyserve-engine",
        LABEL_INSTANCE: tier,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: "polyserve",
    }


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


#: Every tier's servers may take looser tiers' requests (the router's lazy promotion), so every
#: tier's engines schedule by priority unless the user's ``engine.args`` say otherwise.
SHARED_SERVERS = True


def tier_engine(spec: SLOTierSpec, profile: Profile) -> TierEngine:
    """The engine flags the operator derives for the tier (``polyserve.tier_engine``)."""
    return derive_tier_engine(profile, spec.tpot_ms, spec.ttft_ms, shared=SHARED_SERVERS)


def engine_args(spec: SLOTierSpec, derived: TierEngine) -> list[str]:
    """The engine's arguments: the user's, then each derived flag the user did not set (the
    user's win flag by flag), then ``--port`` and ``--served-model-name`` if absent (the Service,
    probe and router need the port; the router asks for the tier's model name)."""
    args = derived.args_after(spec.engine.args)
    if spec.engine.dynamic_chunking.enabled and not has_flag(args, "--scheduler-cls"):
        args += ["--scheduler-cls", SCHEDULER_CLS]
    if not has_flag(args, "--port"):
        args += ["--port", str(spec.engine.port)]
    if not has_flag(args, "--served-model-name"):
        args += ["--served-model-name", spec.model]
    return args


def derived_reasons(spec: SLOTierSpec, derived: TierEngine) -> dict[str, str]:
    """Why each derived flag that :func:`engine_args` appended has its value (status)."""
    added = set(engine_args(spec, derived)[len(spec.engine.args) :])
    reasons = {flag: why for flag, why in derived.reasons.items() if flag in added}
    if "--scheduler-cls" in added:
        reasons["--scheduler-cls"] = (
            f"{SCHEDULER_CLS}: engine.dynamicChunking.enabled (steps with decodes cut to "
            f"{chunk_budget_ms(spec):g} ms)"
        )
    return reasons


def chunk_budget_ms(spec: SLOTierSpec) -> float:
    """The tier's dynamic-chunking step budget: ``engine.dynamicChunking.budgetMs``, else the
    step budget the simulator gives the tier's TPOT."""
    return spec.engine.dynamic_chunking.budget_ms or round(step_budget_ms(spec.tpot_ms), 3)


def engine_env(spec: SLOTierSpec) -> list[dict[str, Any]]:
    """The engine container's environment: ``engine.env``, then ``VLLM_API_KEY`` from
    ``engine.apiKeySecretRef``, then, with dynamic chunking, the scheduler plugin's variables
    (each only if the user did not set it)."""
    env = [e.model_dump(by_alias=True, exclude_none=True) for e in spec.engine.env]
    env += api_key_env(spec)
    if not spec.engine.dynamic_chunking.enabled:
        return env
    ref = spec.profile.config_map_key_ref
    profile: dict[str, Any] = (
        {"name": ENV_PROFILE, "value": spec.profile.name}
        if ref is None
        else {
            "name": ENV_PROFILE_YAML,
            "valueFrom": {"configMapKeyRef": ref.model_dump(by_alias=True, exclude_none=True)},
        }
    )
    given = {e.name for e in spec.engine.env}
    plugin = [profile, {"name": ENV_CHUNK_BUDGET_MS, "value": str(chunk_budget_ms(spec))}]
    if given & {ENV_PROFILE, ENV_PROFILE_YAML}:
        plugin = plugin[1:]  # the user's profile variable wins (either spelling)
    return env + [v for v in plugin if v["name"] not in given]


ENV_API_KEY = "VLLM_API_KEY"
"""vLLM's API key variable (``--api-key`` wins over it)."""


def api_key_env(spec: SLOTierSpec) -> list[dict[str, Any]]:
    """``VLLM_API_KEY`` from ``engine.apiKeySecretRef``, unless ``engine.env`` sets it (a second
    entry of one name would be refused by server-side apply; the user's wins)."""
    ref = spec.engine.api_key_secret_ref
    if ref is None or any(e.name == ENV_API_KEY for e in spec.engine.env):
        return []
    return [
        {"name": ENV_API_KEY, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    ]


def uses_priority_scheduling(args: list[str]) -> bool:
    """True when engine arguments select vLLM's ``--scheduling-policy priority``."""
    return flag_value(args, "--scheduling-policy") == "priority"


def _container(spec: SLOTierSpec, derived: TierEngine) -> dict[str, Any]:
    engine: EngineSpec = spec.engine
    container: dict[str, Any] = {
        "name": ENGINE_CONTAINER,
        "image": engine.image,
        "args": engine_args(spec, derived),
        "ports": [{"name": PORT_NAME, "containerPort": engine.port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
    }
    if engine.command:
        container["command"] = list(engine.command)
    if engine.image_pull_policy:
        container["imagePullPolicy"] = engine.image_pull_policy
    env = engine_env(spec)
    if env:
        container["env"] = env
    resources = engine.resources.model_dump(by_alias=True, exclude_defaults=True)
    if resources:
        container["resources"] = {
            kind: {k: str(v) for k, v in values.items()} for kind, values in resources.items()
        }
    if engine.pre_stop_sleep_seconds:
        # Keep serving while endpoints and the router's discovery drop the pod; then SIGTERM.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": engine.pre_stop_sleep_seconds}}}
    return container


def pod_template(name: str, spec: SLOTierSpec, derived: TierEngine) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "containers": [_container(spec, derived)],
        "terminationGracePeriodSeconds": spec.engine.termination_grace_period_seconds,
        "automountServiceAccountToken": False,  # engines never talk to the API
        "enableServiceLinks": False,
    }
    if spec.engine.node_selector:
        pod_spec["nodeSelector"] = dict(spec.engine.node_selector)
    if spec.engine.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in spec.engine.tolerations
        ]
    return {
        "metadata": {
            "labels": labels(name, spec),
            "annotations": {
                ANNOTATION_MODEL: spec.model,
                ANNOTATION_ENGINE_PORT: str(spec.engine.port),
            },
        },
        "spec": pod_spec,
    }


def _owned_metadata(name: str, namespace: str, uid: str, spec: SLOTierSpec) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(name, spec),
        "ownerReferences": [owner_reference(name, uid)],
    }


def desired_deployment(
    name: str, namespace: str, uid: str, spec: SLOTierSpec, replicas: int, derived: TierEngine
) -> dict[str, Any]:
    """The tier's Deployment with ``replicas`` (the server-side-apply body the operator owns);
    ``derived``: the tier's engine flags (:func:`tier_engine`)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _owned_metadata(name, namespace, uid, spec),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            # A new engine is Ready before an old one goes: no capacity dip in a rollout.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": pod_template(name, spec, derived),
        },
    }


def desired_service(name: str, namespace: str, uid: str, spec: SLOTierSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _owned_metadata(name, namespace, uid, spec),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": spec.engine.port,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def digest(obj: Any) -> str:
    """A stable short hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def pod_address(pod: dict[str, Any], default_port: int | None = None) -> tuple[str, int] | None:
    """Where a pod's engine answers: the devcluster's local annotations when present, else the
    pod IP and the engine port (``polyserve.io/engine-port``, else ``default_port``)."""
    meta = pod.get("metadata") or {}
    ann = meta.get("annotations") or {}
    local_port = ann.get(ANNOTATION_LOCAL_PORT)
    if local_port:
        return ann.get(ANNOTATION_LOCAL_HOST) or "127.0.0.1", int(local_port)
    ip = (pod.get("status") or {}).get("podIP")
    port = ann.get(ANNOTATION_ENGINE_PORT) or default_port
    if not ip or not port:
        return None
    return ip, int(port)


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_draining(pod: dict[str, Any]) -> bool:
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    return ann.get(ANNOTATION_DRAINING) == "true"

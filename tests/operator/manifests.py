"""SLOTier manifests for the tests: one valid tier, and the bad variants the schema must refuse."""

from __future__ import annotations

import copy
from typing import Any

MOCK_IMAGE = "polyserve/polyserve:test"


def slotier(name: str = "chat", **spec: Any) -> dict[str, Any]:
    """A valid SLOTier running the mock engine (the devcluster's launcher runs it locally)."""
    base: dict[str, Any] = {
        "model": "llama-3.1-8b",
        "tpotMs": 50,
        "ttftMs": 1000,
        "replicas": {"min": 1, "max": 4, "fixed": 1},
        "autoscaling": {"enabled": False},
        "engine": {
            "image": MOCK_IMAGE,
            "command": ["polyserve", "mock-engine"],
            "args": ["--profile", "llama-3.1-8b-h100"],
            "resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "500m"}},
            "terminationGracePeriodSeconds": 5,
            "preStopSleepSeconds": 0,
        },
        "profile": {"name": "llama-3.1-8b-h100"},
    }
    merged = _merge(base, spec)
    return {
        "apiVersion": "polyserve.io/v1alpha1",
        "kind": "SLOTier",
        "metadata": {"name": name},
        "spec": merged,
    }


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


#: (what is wrong, spec overrides or a whole-object change, a phrase the API server's message has)
BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("tpot zero", {"tpotMs": 0}, "spec.tpotMs"),
    ("tpot too large", {"tpotMs": 100_000}, "spec.tpotMs"),
    ("ttft negative", {"ttftMs": -5}, "spec.ttftMs"),
    ("no model", {"model": ""}, "spec.model"),
    ("min negative", {"replicas": {"min": -1, "fixed": None}}, "spec.replicas.min"),
    ("max zero", {"replicas": {"min": 0, "max": 0, "fixed": None}}, "spec.replicas.max"),
    ("max too large", {"replicas": {"max": 5000}}, "spec.replicas.max"),
    (
        "min above max",
        {"replicas": {"min": 5, "max": 2, "fixed": None}},
        "replicas.min must be <= replicas.max",
    ),
    ("fixed outside bounds", {"replicas": {"fixed": 9}}, "replicas.fixed must lie within"),
    (
        "fixed with autoscaling on",
        {"autoscaling": {"enabled": True}},
        "replicas.fixed may be set only with autoscaling.enabled: false",
    ),
    ("bad deadline-miss enum", {"onDeadlineMiss": "drop"}, "spec.onDeadlineMiss"),
    ("port zero", {"engine": {"port": 0}}, "spec.engine.port"),
    (
        "bad quantity",
        {"engine": {"resources": {"limits": {"cpu": "lots"}}}},
        "spec.engine.resources.limits",
    ),
    ("bad toleration effect", {"engine": {"tolerations": [{"effect": "Sometimes"}]}}, "effect"),
    (
        "preStop longer than grace",
        {"engine": {"preStopSleepSeconds": 10, "terminationGracePeriodSeconds": 5}},
        "engine.preStopSleepSeconds must be <=",
    ),
    ("no profile", {"profile": {"name": None}}, "profile needs exactly one of"),
    (
        "two profiles",
        {"profile": {"configMapKeyRef": {"name": "p", "key": "profile.yaml"}}},
        "profile needs exactly one of",
    ),
    ("autoscaling interval zero", {"autoscaling": {"decisionIntervalS": 0}}, "decisionIntervalS"),
    (
        "stale before a decision",
        {"autoscaling": {"decisionIntervalS": 20, "staleAfterS": 10}},
        "staleAfterS must be at least decisionIntervalS",
    ),
    (
        "scale-down cooldown shorter than scale-up",
        {"autoscaling": {"scaleUpCooldownS": 100, "scaleDownCooldownS": 10}},
        "scaleDownCooldownS must be at least scaleUpCooldownS",
    ),
    (
        "trend window too short",
        {"autoscaling": {"decisionIntervalS": 30, "trendWindowS": 40, "staleAfterS": 30}},
        "trendWindowS must cover at least two decision intervals",
    ),
    (
        "key Secret name not a DNS subdomain",
        {"engine": {"apiKeySecretRef": {"name": "Engine_Key", "key": "api-key"}}},
        "spec.engine.apiKeySecretRef.name",
    ),
    ("unknown field", {"colour": "blue"}, "colour"),
]


def tier_condition(tier: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The stored SLOTier's condition of ``type_``, if it has one."""
    for c in (tier.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None

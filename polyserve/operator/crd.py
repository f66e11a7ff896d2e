"""The SLOTier CustomResourceDefinition, generated from the pydantic models in ``model.py``.

``crd_manifest()`` turns the models' JSON Schema into a Kubernetes *structural* OpenAPI v3 schema
(refs inlined, ``Optional`` as an omitted field, int-or-string quantities, OpenAPI 3.0's boolean
``exclusiveMinimum``) and adds what JSON Schema cannot say: CEL rules
(``x-kubernetes-validations``) for the cross-field checks the models' validators make, the status
and scale subresources, and printer columns. ``crds/slotiers.polyserve.io.yaml`` is this output
(``polyserve operator crd -o crds/slotiers.polyserve.io.yaml``, or ``make crds``); a test keeps the
two equal, and another keeps every CEL rule in step with the model's own validators.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from polyserve.operator import model as m

Schema = dict[str, Any]

HEADER = (
    "# GENERATED from polyserve/operator/model.py by `polyserve operator crd` (make crds).\n"
    "# Do not edit: change the model or polyserve/operator/crd.py and regenerate.\n"
)

#: Where the committed CRD lives in a checkout.
CRD_PATH = Path(__file__).resolve().parent.parent.parent / "crds" / f"{m.CRD_NAME}.yaml"


def _rule(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


#: CEL rules by schema path (property names from the root of the object). Each mirrors a model
#: validator; tests/operator check both refuse the same manifests.
CEL_RULES: dict[tuple[str, ...], list[dict[str, str]]] = {
    (): [
        _rule(
            f"self.metadata.name.size() <= {m.NAME_MAX} && "
            f"self.metadata.name.matches('{m.NAME_PATTERN}')",
            "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting "
            f"with a letter, at most {m.NAME_MAX} characters): it names the tier's Deployment "
            "and Service",
        ),
    ],
    ("spec",): [
        _rule(
            "!has(self.replicas) || !has(self.replicas.fixed) || "
            "(has(self.autoscaling) && !self.autoscaling.enabled)",
            "replicas.fixed may be set only with autoscaling.enabled: false (the autoscaler owns "
            "the replica count otherwise)",
            ".replicas.fixed",
        ),
    ],
    ("spec", "replicas"): [
        _rule(
            "self.min <= self.max",
            "replicas.min must be <= replicas.max",
            ".min",
        ),
        _rule(
            "!has(self.fixed) || (self.min <= self.fixed && self.fixed <= self.max)",
            "replicas.fixed must lie within replicas.min..max",
            ".fixed",
        ),
    ],
    ("spec", "autoscaling"): [
        _rule(
            "self.staleAfterS >= self.decisionIntervalS",
            "staleAfterS must be at least decisionIntervalS",
            ".staleAfterS",
        ),
        _rule(
            "self.scaleDownCooldownS >= self.scaleUpCooldownS",
            "scaleDownCooldownS must be at least scaleUpCooldownS",
            ".scaleDownCooldownS",
        ),
        _rule(
            "self.trendWindowS >= 2.0 * self.decisionIntervalS",
            "trendWindowS must cover at least two decision intervals",
            ".trendWindowS",
        ),
    ],
    ("spec", "engine"): [
        _rule(
            "self.preStopSleepSeconds <= self.terminationGracePeriodSeconds",
            "engine.preStopSleepSeconds must be <= engine.terminationGracePeriodSeconds",
            ".preStopSleepSeconds",
        ),
    ],
    ("spec", "profile"): [
        _rule(
            "has(self.name) != has(self.configMapKeyRef)",
            "profile needs exactly one of name or configMapKeyRef",
        ),
    ],
}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
    {"name": "TPOT", "type": "number", "jsonPath": ".spec.tpotMs", "description": "ms per token"},
    {"name": "TTFT", "type": "number", "jsonPath": ".spec.ttftMs", "description": "ms"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {
        "name": "Attainment",
        "type": "number",
        "jsonPath": ".status.attainment",
        "description": "fraction of recent requests that met the SLO (router)",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# x-kubernetes-list-type / -map-keys by schema path
LIST_TYPES: dict[tuple[str, ...], Schema] = {
    ("status", "conditions"): {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    },
    ("spec", "engine", "env"): {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    },
}

_DROP = {"title", "additionalProperties", "$defs"}
_SCALARS = (bool, int, float, str)


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def structural(node: Schema, defs: dict[str, Schema], path: tuple[str, ...] = ()) -> Schema:
    """A pydantic JSON Schema node as a Kubernetes structural schema node."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        options = [_resolve(o, defs) for o in node["anyOf"]]
        non_null = [o for o in options if o.get("type") != "null"]
        types = sorted(str(o.get("type")) for o in non_null)
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(non_null) == 1:  # Optional[X]: an omitted field
            merged = {**non_null[0], **rest}
            if merged.get("default", 0) is None:
                merged.pop("default")
            return structural(merged, defs, path)
        if types == ["integer", "string"]:  # a quantity
            out: Schema = {k: v for k, v in rest.items() if k in ("description",)}
            pattern = next((o["pattern"] for o in non_null if "pattern" in o), None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            if pattern:
                out["pattern"] = pattern
            out["x-kubernetes-int-or-string"] = True
            return out
        raise ValueError(f"{'.'.join(path)}: no structural form for anyOf {types}")

    out = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default":
            if isinstance(value, _SCALARS):
                out[key] = value
        elif key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: structural(sub, defs, (*path, name)) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs, (*path, "[]"))
        else:
            out[key] = copy.deepcopy(value)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = structural(extra, defs, (*path, "{}"))
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if path in CEL_RULES:
        out["x-kubernetes-validations"] = copy.deepcopy(CEL_RULES[path])
    if path in LIST_TYPES:
        out.update(LIST_TYPES[path])
    return out


def _model_schema(cls: type[m._Api], path: tuple[str, ...]) -> Schema:
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), path)


def open_api_schema() -> Schema:
    """The ``openAPIV3Schema`` of the SLOTier CRD."""
    spec = _model_schema(m.SLOTierSpec, ("spec",))
    status = _model_schema(m.SLOTierStatus, ("status",))
    root: Schema = {
        "type": "object",
        "description": "One SLO class of one model, served by a Deployment of vLLM engines.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": copy.deepcopy(CEL_RULES[()]),
    }
    return root


def crd_manifest() -> Schema:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": m.CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "polyserve"},
        },
        "spec": {
            "group": m.GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": m.PLURAL,
                "singular": m.SINGULAR,
                "kind": m.KIND,
                "listKind": f"{m.KIND}List",
                "shortNames": list(m.SHORT_NAMES),
                "categories": ["polyserve"],
            },
            "versions": [
                {
                    "name": m.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas.fixed",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                }
            ],
        },
    }


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd_manifest(), sort_keys=False, width=100)

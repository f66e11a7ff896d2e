"""The SLOTier model and its generated CRD: the committed YAML is the generated one, and the
model refuses every manifest the CRD's schema refuses (the API-server side is in tests/k8s)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from polyserve.operator.crd import CRD_PATH, crd_manifest, crd_yaml, structural
from polyserve.operator.model import SLOTier, SLOTierSpec
from tests.operator.manifests import BAD_SPECS, slotier


def test_committed_crd_is_the_generated_one() -> None:
    assert CRD_PATH.read_text() == crd_yaml(), (
        "crds/slotiers.polyserve.io.yaml is stale: run `make crds`"
    )


def test_valid_manifest_parses() -> None:
    tier = SLOTier.model_validate(slotier())
    assert tier.spec.replicas.fixed == 1
    assert tier.spec.engine.resources.limits["nvidia.com/gpu"] == 1
    assert tier.spec.on_deadline_miss == "reject"
    assert tier.spec.autoscaling.enabled is False
    # camelCase out, as the API wants it
    dumped = tier.spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["tpotMs"] == 50 and "terminationGracePeriodSeconds" in dumped["engine"]


@pytest.mark.parametrize(("what", "spec", "phrase"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_model_refuses_what_the_schema_refuses(
    what: str, spec: dict[str, Any], phrase: str
) -> None:
    with pytest.raises(ValidationError):
        SLOTierSpec.model_validate(slotier(**spec)["spec"])


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural() -> None:
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "title" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert "type" in node, f"{path} has no type"
        if node["type"] == "object":
            assert node.get("additionalProperties") is not False, path
        assert not isinstance(node.get("exclusiveMinimum"), float), path


def test_printer_columns_and_subresources() -> None:
    version = crd_manifest()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Model", "TPOT", "TTFT", "Replicas", "Ready", "Attainment", "Age",
    ]  # fmt: skip
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas.fixed"
    assert "status" in version["subresources"]


def test_unknown_anyof_is_an_error() -> None:
    with pytest.raises(ValueError, match="no structural form"):
        structural({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, {}, ("x",))


def test_crd_yaml_round_trips() -> None:
    assert yaml.safe_load(crd_yaml()) == crd_manifest()

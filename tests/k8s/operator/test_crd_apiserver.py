"""The generated SLOTier CRD on a real API server: valid tiers are stored (with defaults), bad ones
are refused with the message the schema or CEL rule carries, and the scale subresource works."""

from __future__ import annotations

import json
from typing import Any

import pytest

from polyserve.operator.model import GROUP, PLURAL, VERSION, SLOTierSpec
from tests.operator.manifests import BAD_SPECS, slotier

pytestmark = pytest.mark.timeout(120)


def _custom(api: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api)


def _create(api: Any, namespace: str, body: dict[str, Any]) -> Any:
    return _custom(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
    )


def test_valid_tier_is_stored_with_defaults(slotier_crd: str, api: Any, namespace: str) -> None:
    got = _create(api, namespace, slotier("chat"))
    spec = got["spec"]
    assert spec["onDeadlineMiss"] == "reject"
    assert spec["drainTimeoutSeconds"] == 300
    assert spec["engine"]["port"] == 8000
    assert spec["autoscaling"]["decisionIntervalS"] == 10.0
    # What the API server stored (defaults applied) is a valid model.
    SLOTierSpec.model_validate(spec)


def test_autoscaled_tier_without_fixed_replicas(slotier_crd: str, api: Any, namespace: str) -> None:
    body = slotier("auto", replicas={"fixed": None}, autoscaling={"enabled": True})
    assert _create(api, namespace, body)["spec"]["autoscaling"]["enabled"] is True


@pytest.mark.parametrize(("what", "spec", "phrase"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_tier_is_refused_with_a_clear_message(
    slotier_crd: str, api: Any, namespace: str, what: str, spec: dict[str, Any], phrase: str
) -> None:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as err:
        _create(api, namespace, slotier("bad", **spec))
    assert err.value.status in (400, 422), err.value.body
    message = json.loads(err.value.body)["message"]
    assert phrase in message, message


def test_bad_name_is_refused(slotier_crd: str, api: Any, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as err:
        _create(api, namespace, slotier("20ms"))
    assert "DNS-1035" in json.loads(err.value.body)["message"]


def test_scale_subresource(slotier_crd: str, api: Any, namespace: str) -> None:
    """`kubectl scale` (a patch of /scale) sets replicas.fixed, within the CEL bounds."""
    from kubernetes.client.exceptions import ApiException

    custom = _custom(api)
    _create(api, namespace, slotier("fixed"))
    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "fixed")
    assert scale["spec"]["replicas"] == 1
    custom.patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, "fixed", {"spec": {"replicas": 3}}
    )
    got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fixed")
    assert got["spec"]["replicas"]["fixed"] == 3
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, PLURAL, "fixed", {"spec": {"replicas": 7}}
        )
    assert "replicas.fixed must lie within" in json.loads(err.value.body)["message"]

    # An autoscaled tier refuses `kubectl scale`: the autoscaler owns its replica count.
    _create(
        api, namespace, slotier("auto", replicas={"fixed": None}, autoscaling={"enabled": True})
    )
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, PLURAL, "auto", {"spec": {"replicas": 2}}
        )
    assert err.value.status in (400, 404, 422), err.value.body


def test_examples_are_accepted(slotier_crd: str, api: Any, namespace: str) -> None:
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[3] / "examples" / "slotiers.yaml"
    for doc in yaml.safe_load_all(path.read_text()):
        _custom(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, doc, field_validation="Strict", dry_run="All"
        )

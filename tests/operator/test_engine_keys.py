"""Engine keys (``engine.apiKeySecretRef``, issue 19): the engine's ``VLLM_API_KEY`` from the
Secret, and the discovery's backends carrying the same key, masked; a tier whose key cannot be
read keeps its tier but none of its engines (they would answer 401)."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from pydantic import SecretStr

from polyserve.operator import resources as r
from polyserve.operator.discovery import SecretKeys, fleet_from_objects, secret_api_key
from polyserve.operator.model import SecretKeyRef, SLOTierSpec
from polyserve.operator.resources import desired_deployment, tier_engine
from polyserve.profile import load_profile
from tests.operator.manifests import slotier

KEY = "sk-engine-3f9a"
REF = {"name": "engine-key", "key": "api-key"}


def _tier(name: str, ref: dict[str, str] | None = None, **engine: Any) -> dict[str, Any]:
    body = slotier(name, engine={"apiKeySecretRef": ref, **engine})
    body["metadata"]["namespace"] = "llm"
    return body


def _pod(name: str, tier: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {r.LABEL_TIER: tier, r.LABEL_COMPONENT: r.COMPONENT_ENGINE},
            "annotations": {r.ANNOTATION_ENGINE_PORT: "8000"},
        },
        "spec": {"containers": [{"name": r.ENGINE_CONTAINER, "args": []}]},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _secret(data: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "engine-key"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _from(secrets: dict[str, dict[str, Any]]) -> Any:
    def keys(namespace: str, tier: str, ref: SecretKeyRef) -> SecretStr | None:
        try:
            return secret_api_key(secrets.get(ref.name), ref)
        except ValueError:
            return None

    return keys


# -- the engine's environment -----------------------------------------------------------------


def _engine_env(body: dict[str, Any]) -> list[dict[str, Any]]:
    spec = SLOTierSpec.model_validate(body["spec"])
    derived = tier_engine(spec, load_profile("llama-3.1-8b-h100"))
    dep = desired_deployment("voice", "llm", "uid", spec, 1, derived)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return list(container.get("env") or [])


def test_the_engine_gets_vllm_api_key_from_the_secret() -> None:
    env = _engine_env(_tier("voice", REF, env=[{"name": "HF_HOME", "value": "/cache"}]))
    assert env == [
        {"name": "HF_HOME", "value": "/cache"},
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": REF}},
    ]
    assert _engine_env(_tier("voice")) == []


def test_the_users_vllm_api_key_wins() -> None:
    """One entry per name: server-side apply refuses an env list with a name twice."""
    mine = {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}
    assert _engine_env(_tier("voice", REF, env=[mine])) == [mine]


@pytest.mark.parametrize("ref", [{"name": "Engine_Key", "key": "k"}, {"name": "k", "key": "a/b"}])
def test_a_ref_that_names_no_possible_secret_key_is_refused(ref: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="apiKeySecretRef"):
        SLOTierSpec.model_validate(_tier("voice", ref)["spec"])


# -- discovery --------------------------------------------------------------------------------


def test_the_backends_of_a_keyed_tier_carry_the_key_masked() -> None:
    keys = _from({"engine-key": _secret({"api-key": KEY})})
    fleet = fleet_from_objects(
        [_tier("voice", REF), _tier("batch")],
        [_pod("voice-0", "voice"), _pod("batch-0", "batch")],
        keys=keys,
    )
    by_name = {b.name: b for b in fleet.backends}
    voice, batch = by_name["voice-0"], by_name["batch-0"]
    assert voice.api_key is not None and voice.api_key.get_secret_value() == KEY
    assert batch.api_key is None
    for dump in (fleet.model_dump_json(), repr(fleet), str(fleet.model_dump())):
        assert KEY not in dump
    # a rotated key is a new fleet (the discovery yields a snapshot only on a change)
    rotated = _from({"engine-key": _secret({"api-key": KEY + "-2"})})
    again = fleet_from_objects([_tier("voice", REF)], [_pod("voice-0", "voice")], keys=rotated)
    assert again != fleet_from_objects([_tier("voice", REF)], [_pod("voice-0", "voice")], keys=keys)


@pytest.mark.parametrize(
    ("secrets", "why"),
    [
        ({}, "does not exist"),
        ({"engine-key": _secret({"other": KEY})}, "has no key 'api-key'"),
        ({"engine-key": _secret({"api-key": KEY + "\n"})}, "trailing newline"),
        ({"engine-key": _secret({"api-key": ""})}, "is empty"),
        ({"engine-key": {"data": {"api-key": "%%%"}}}, "not ASCII text"),
    ],
)
def test_a_tier_whose_key_cannot_be_used_has_no_backends(
    secrets: dict[str, dict[str, Any]], why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        secret_api_key(secrets.get("engine-key"), SecretKeyRef.model_validate(REF))
    fleet = fleet_from_objects(
        [_tier("voice", REF), _tier("batch")],
        [_pod("voice-0", "voice"), _pod("batch-0", "batch")],
        keys=_from(secrets),
    )
    assert [t.name for t in fleet.tiers] == ["batch", "voice"]  # the tier stays
    assert [b.name for b in fleet.backends] == ["batch-0"]


def test_without_a_key_reader_keyed_tiers_have_no_backends() -> None:
    fleet = fleet_from_objects([_tier("voice", REF)], [_pod("voice-0", "voice")])
    assert fleet.backends == []


class FakeKube:
    def __init__(self) -> None:
        self.answer: dict[str, Any] | Exception | None = None
        self.reads = 0

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_secret_keys_logs_each_change_once_and_survives_api_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube = FakeKube()
    keys = SecretKeys(kube)  # type: ignore[arg-type]
    ref = SecretKeyRef.model_validate(REF)
    caplog.set_level(logging.INFO, logger="polyserve.operator.discovery")

    def read() -> str | None:
        key = keys("llm", "voice", ref)
        return None if key is None else key.get_secret_value()

    assert read() is None and read() is None  # no Secret yet: one line, not two
    assert [m for m in caplog.messages if "left out" in m] == [
        "SLOTier llm/voice: its engines are left out: Secret engine-key does not exist"
    ]
    caplog.clear()
    kube.answer = _secret({"api-key": KEY})
    assert read() == KEY and read() == KEY
    assert caplog.messages == ["SLOTier llm/voice: engine key read from Secret engine-key"]
    caplog.clear()
    kube.answer = ApiException(status=503)
    assert read() == KEY  # an API hiccup keeps the last good key
    assert "keeping the last key" in caplog.messages[0]
    kube.answer = ApiException(status=403)
    assert read() is None
    assert "router.backendKeySecrets must list it" in caplog.messages[-1]
    kube.answer = ConnectionError("refused")
    assert read() is None  # no stale key once the Secret was refused
    kube.answer = _secret({"api-key": KEY})
    assert read() == KEY
    kube.answer = ConnectionError("refused")
    assert read() == KEY
    assert all(KEY not in m for m in caplog.messages)
    assert kube.reads == 9

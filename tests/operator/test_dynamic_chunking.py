"""engine.dynamicChunking: the operator renders the scheduler plugin's flag and variables only when
it is on, and the user's own flag and variables win."""

from __future__ import annotations

from typing import Any

from polyserve.mockengine.cli import parse_args
from polyserve.operator import resources as r
from polyserve.operator.model import SLOTierSpec
from polyserve.policy.checks import step_budget_ms
from polyserve.profile import load_profile
from polyserve.vllm import SCHEDULER_CLS
from tests.operator.manifests import slotier

PROFILE = load_profile("llama-3.1-8b-h100")


def spec(engine: dict[str, Any], **over: Any) -> SLOTierSpec:
    return SLOTierSpec.model_validate(slotier(engine=engine, **over)["spec"])


def container(s: SLOTierSpec) -> dict[str, Any]:
    dep = r.desired_deployment("chat", "ns", "u", s, 1, r.tier_engine(s, PROFILE))
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


def test_off_by_default_nothing_is_added() -> None:
    s = spec({"env": [{"name": "X", "value": "1"}]})
    assert not s.engine.dynamic_chunking.enabled
    c = container(s)
    assert "--scheduler-cls" not in c["args"]
    assert c["env"] == [{"name": "X", "value": "1"}]
    assert "env" not in container(spec({}))


def test_on_the_flag_and_variables_are_rendered_from_the_tier() -> None:
    s = spec({"dynamicChunking": {"enabled": True}}, tpotMs=40)
    c = container(s)
    i = c["args"].index("--scheduler-cls")
    assert c["args"][i + 1] == SCHEDULER_CLS
    assert c["args"].index("--port") > i  # after the derived flags, with port and name last
    budget = round(step_budget_ms(40), 3)
    assert c["env"] == [
        {"name": "POLYSERVE_PROFILE", "value": "llama-3.1-8b-h100"},
        {"name": "POLYSERVE_CHUNK_BUDGET_MS", "value": str(budget)},
    ]
    reasons = r.derived_reasons(s, r.tier_engine(s, PROFILE))
    assert reasons["--scheduler-cls"].startswith(SCHEDULER_CLS)


def test_the_budget_and_a_configmap_profile() -> None:
    s = spec(
        {"dynamicChunking": {"enabled": True, "budgetMs": 25}},
        profile={"name": None, "configMapKeyRef": {"name": "prof", "key": "p.yaml"}},
    )
    assert container(s)["env"] == [
        {
            "name": "POLYSERVE_PROFILE_YAML",
            "valueFrom": {"configMapKeyRef": {"name": "prof", "key": "p.yaml"}},
        },
        {"name": "POLYSERVE_CHUNK_BUDGET_MS", "value": "25.0"},
    ]


def test_the_users_flag_and_variables_win() -> None:
    s = spec(
        {
            "dynamicChunking": {"enabled": True},
            "args": ["--scheduler-cls=my.Sched"],
            "env": [
                {"name": "POLYSERVE_PROFILE_YAML", "value": "..."},
                {"name": "POLYSERVE_CHUNK_BUDGET_MS", "value": "7"},
            ],
        }
    )
    c = container(s)
    assert c["args"][0] == "--scheduler-cls=my.Sched" and c["args"].count("--scheduler-cls") == 0
    assert [e["name"] for e in c["env"]] == ["POLYSERVE_PROFILE_YAML", "POLYSERVE_CHUNK_BUDGET_MS"]
    assert c["env"][1]["value"] == "7"


def test_the_rendered_mock_deployment_runs_dynamic_chunking() -> None:
    s = spec({"dynamicChunking": {"enabled": True}}, tpotMs=40)
    c = container(s)
    env = {e["name"]: e["value"] for e in c["env"]}
    settings = parse_args(c["args"], env)
    assert settings.scheduler_cls == SCHEDULER_CLS
    assert settings.chunk_budget_ms == round(step_budget_ms(40), 3)
    assert settings.engine_config(PROFILE).chunk_budget_ms == settings.chunk_budget_ms

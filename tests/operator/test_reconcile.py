"""The operator's pure decisions: replica owner, the drain plan, conditions, desired objects."""

from __future__ import annotations

from typing import Any

from polyserve.autoscale.decide import Reason as ScaleReason
from polyserve.operator import resources as r
from polyserve.operator.model import ConditionType, ProfileRef, Reason, SLOTierSpec
from polyserve.operator.plan import (
    StatusInput,
    build_status,
    check_attainable,
    owner_target,
    plan_scale,
    resolve_profile,
)
from polyserve.operator.views import PodView, ScalingDecision
from polyserve.profile import load_profile
from tests.operator.manifests import slotier


def spec(**over: Any) -> SLOTierSpec:
    return SLOTierSpec.model_validate(slotier(**over)["spec"])


def pod(name: str, created: str = "2026-01-01T00:00:00Z", **kw: Any) -> PodView:
    return PodView(name=name, ready=kw.pop("ready", True), deleting=False, created=created, **kw)


def test_owner_is_fixed_replicas_or_the_autoscaler() -> None:
    fixed = spec(replicas={"fixed": 3})
    assert owner_target(fixed, 1, ScalingDecision(9, ScaleReason.SCALE_UP_PENDING))[:2] == (
        3,
        "FixedReplicas",
    )
    auto = spec(replicas={"fixed": None, "min": 1, "max": 4}, autoscaling={"enabled": True})
    assert owner_target(auto, None, None)[0] == 1
    assert owner_target(auto, 3, None)[:2] == (3, "Hold")
    assert owner_target(auto, 3, ScalingDecision(9, ScaleReason.SCALE_UP_PREDICTED))[:2] == (
        4,
        "ScaleUpPredicted",
    )
    assert owner_target(auto, 3, ScalingDecision(0, ScaleReason.SCALE_DOWN_DRAINED))[0] == 1


def test_scale_down_marks_then_costs_then_lowers() -> None:
    a, b = pod("a", "2026-01-01T00:00:00Z"), pod("b", "2026-01-01T00:05:00Z")
    step1 = plan_scale(1, 2, [a, b], {}, now=100.0, drain_timeout_s=300)
    assert step1 == pd(2, mark=("b",), draining=("b",))  # the newest pod drains
    b = pod("b", "2026-01-01T00:05:00Z", draining_since=100.0)
    busy = plan_scale(1, 2, [a, b], {"b": 3}, now=110.0, drain_timeout_s=300)
    assert busy == pd(2, draining=("b",))  # still streaming: wait
    idle = plan_scale(1, 2, [a, b], {"b": 0}, now=120.0, drain_timeout_s=300)
    assert idle == pd(2, set_cost=("b",), draining=("b",))
    late = plan_scale(1, 2, [a, b], {"b": None}, now=400.0, drain_timeout_s=300)
    assert late.set_cost == ("b",)  # the deadline ends the wait
    b = pod("b", "2026-01-01T00:05:00Z", draining_since=100.0, cost_set=True)
    assert plan_scale(1, 2, [a, b], {"b": 0}, now=130.0, drain_timeout_s=300).replicas == 1
    # Replicas lowered, pod not yet deleted: it is leaving, nothing is undone.
    assert plan_scale(1, 1, [a, b], {}, now=131.0, drain_timeout_s=300) == pd(1)


def pd(replicas: int, **kw: Any) -> Any:
    from polyserve.operator.plan import ScalePlan

    return ScalePlan(replicas=replicas, **kw)


def test_scale_up_takes_drained_pods_back_first() -> None:
    a, b = pod("a"), pod("b", draining_since=50.0, cost_set=True)
    assert plan_scale(2, 2, [a, b], {}, now=60.0, drain_timeout_s=300) == pd(2, unmark=("b",))


def test_drain_prefers_the_autoscalers_candidate_then_not_ready_pods() -> None:
    a, b, c = pod("a"), pod("b", ready=False), pod("c", "2026-02-01T00:00:00Z")
    assert plan_scale(2, 3, [a, b, c], {}, 0.0, 300).mark == ("b",)
    assert plan_scale(2, 3, [a, b, c], {}, 0.0, 300, prefer=("a",)).mark == ("a",)


def test_first_apply_and_no_deployment() -> None:
    assert plan_scale(3, None, [], {}, 0.0, 300) == pd(3)


def test_attainability_uses_the_profile_step_model() -> None:
    prof = load_profile("llama-3.1-8b-h100")
    assert check_attainable(spec(), prof) is None
    problem = check_attainable(spec(tpotMs=2), prof)
    assert problem is not None and problem.reason is Reason.TPOT_UNATTAINABLE
    assert "idle llama-3.1-8b-h100" in problem.message


def test_profile_resolution() -> None:
    def no_cm(ns: str, name: str) -> None:
        return None

    got = resolve_profile(ProfileRef(name="nope"), "ns", no_cm)
    assert not hasattr(got, "iteration") and got.reason is Reason.PROFILE_NOT_FOUND  # type: ignore[union-attr]
    cm = {"data": {"p.yaml": "name: x\n"}}
    bad = resolve_profile(
        ProfileRef.model_validate({"configMapKeyRef": {"name": "p", "key": "p.yaml"}}),
        "ns",
        lambda ns, name: cm,
    )
    assert bad.reason is Reason.PROFILE_INVALID  # type: ignore[union-attr]


def test_conditions_keep_their_transition_time() -> None:
    first = build_status(
        StatusInput(generation=1, selector="s", desired=2, ready=2, replicas=2), "T1"
    )
    again = build_status(
        StatusInput(
            generation=1, selector="s", desired=2, ready=2, replicas=2, conditions=first.conditions
        ),
        "T2",
    )
    assert first == again
    ready = {c.type: c for c in again.conditions}[ConditionType.READY]
    assert (ready.status, ready.reason, ready.last_transition_time) == (
        "True",
        Reason.ALL_REPLICAS_READY,
        "T1",
    )
    low = build_status(
        StatusInput(generation=1, selector="s", desired=2, ready=2, replicas=2, attainment=0.5),
        "T3",
    )
    degraded = {c.type: c for c in low.conditions}[ConditionType.DEGRADED]
    assert (degraded.status, degraded.reason) == ("True", Reason.ATTAINMENT_BELOW_TARGET)


def test_desired_objects() -> None:
    s = spec(model="meta-llama/Llama-3.1-8B", engine={"preStopSleepSeconds": 3})
    derived = r.tier_engine(s, load_profile("llama-3.1-8b-h100"))
    dep = r.desired_deployment("chat", "ns", "u", s, 2, derived)
    assert dep["spec"]["selector"]["matchLabels"] == r.selector_labels("chat")
    meta = dep["spec"]["template"]["metadata"]
    assert meta["labels"][r.LABEL_MODEL] == "meta-llama.Llama-3.1-8B"
    assert meta["annotations"][r.ANNOTATION_MODEL] == "meta-llama/Llama-3.1-8B"
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == 3
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1", "cpu": "500m"}
    assert r.uses_priority_scheduling(["--scheduling-policy=priority"])
    assert not r.uses_priority_scheduling(["--scheduling-policy", "fcfs"])
    assert r.model_label("-x/" * 40).startswith("x")

"""The pure decisions of an operator pass over one SLOTier (no I/O, no clock of their own).

- :func:`resolve_profile` and :func:`check_attainable`: the tier's profile, or why the spec cannot
  be served;
- :func:`owner_target`: the replica count from its one owner (``replicas.fixed``, or the
  autoscaler's decision);
- :func:`plan_scale`: the next safe step towards that count;
- :func:`build_status`: the status and its conditions.

Safe scale-down (:func:`plan_scale`), one pass at a time:
1. mark the drain candidate(s) ``polyserve.io/draining: "true"`` (the router stops sending);
2. wait until the candidate has no streams (``StreamProbe``), is not Ready, or its
   ``drainTimeoutSeconds`` ran out;
3. set ``controller.kubernetes.io/pod-deletion-cost`` to the lowest value on it;
4. on a later pass (the annotation is then visible to the ReplicaSet controller), lower the
   Deployment's replicas: the controller deletes exactly the drained pod.
A scale-up while pods drain takes the drained pods back first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import yaml

from polyserve.operator.kube import Obj
from polyserve.operator.model import (
    Condition,
    ConditionType,
    ProfileRef,
    Reason,
    ScalingRecord,
    SLOTierSpec,
    SLOTierStatus,
)
from polyserve.operator.views import PodView, ScalingDecision
from polyserve.profile import Profile, ProfileError, available_profiles, load_profile, parse_profile

#: attainment below this marks the tier Degraded (the goodput threshold of the paper)
ATTAINMENT_TARGET = 0.9


@dataclass(frozen=True)
class SpecProblem:
    condition: ConditionType
    reason: Reason
    message: str


def resolve_profile(
    ref: ProfileRef, namespace: str, read_config_map: Callable[[str, str], Obj | None]
) -> Profile | SpecProblem:
    """The tier's profile, or why there is none. Only shipped names and ConfigMaps: a manifest
    never names a file on the operator's disk."""
    if ref.name is not None:
        if ref.name not in available_profiles():
            return SpecProblem(
                ConditionType.PROFILE_MISSING,
                Reason.PROFILE_NOT_FOUND,
                f"no shipped profile {ref.name!r} (shipped: {', '.join(available_profiles())})",
            )
        return load_profile(ref.name)
    assert ref.config_map_key_ref is not None
    cm_ref = ref.config_map_key_ref
    cm = read_config_map(namespace, cm_ref.name)
    where = f"ConfigMap {namespace}/{cm_ref.name} key {cm_ref.key!r}"
    data = (cm or {}).get("data") or {}
    if cm is None or cm_ref.key not in data:
        return SpecProblem(
            ConditionType.PROFILE_MISSING, Reason.PROFILE_NOT_FOUND, f"{where} does not exist"
        )
    try:
        return parse_profile(yaml.safe_load(data[cm_ref.key]), where)
    except (ProfileError, yaml.YAMLError) as exc:
        return SpecProblem(ConditionType.PROFILE_MISSING, Reason.PROFILE_INVALID, str(exc))


def check_attainable(spec: SLOTierSpec, profile: Profile) -> SpecProblem | None:
    """A TPOT or TTFT that even an idle server of this profile cannot meet."""
    one_decode = profile.step_ms(1, 1.0)
    if one_decode > spec.tpot_ms:
        return SpecProblem(
            ConditionType.INVALID_SPEC,
            Reason.TPOT_UNATTAINABLE,
            f"tpotMs {spec.tpot_ms:g} is below one decode step of an idle {profile.name} "
            f"server ({one_decode:.1f} ms)",
        )
    first_token = profile.step_ms(0, 0.0, 1, 1.0)
    if first_token > spec.ttft_ms:
        return SpecProblem(
            ConditionType.INVALID_SPEC,
            Reason.TTFT_UNATTAINABLE,
            f"ttftMs {spec.ttft_ms:g} is below the shortest prefill step of an idle "
            f"{profile.name} server ({first_token:.1f} ms)",
        )
    return None


def clamp(n: int, spec: SLOTierSpec) -> int:
    return max(spec.replicas.min, min(spec.replicas.max, n))


def owner_target(
    spec: SLOTierSpec, previous: int | None, decision: ScalingDecision | None
) -> tuple[int, str, str]:
    """(replicas, reason, message) from the one owner of the count."""
    if not spec.autoscaling.enabled:
        if spec.replicas.fixed is not None:
            return spec.replicas.fixed, "FixedReplicas", "replicas.fixed"
        return spec.replicas.min, "FixedReplicas", "autoscaling off and no replicas.fixed: min"
    if decision is not None:
        return clamp(decision.replicas, spec), decision.reason.camel, decision.message
    if previous is None:
        return spec.replicas.min, "InitialReplicas", "autoscaled tier starts at replicas.min"
    return clamp(previous, spec), "Hold", "no autoscaler decision"


@dataclass(frozen=True)
class ScalePlan:
    #: the Deployment's spec.replicas after this pass
    replicas: int
    mark: tuple[str, ...] = ()
    unmark: tuple[str, ...] = ()
    set_cost: tuple[str, ...] = ()
    #: pods draining after this pass (status.draining)
    draining: tuple[str, ...] = ()


def _newest_first(pods: Sequence[PodView]) -> list[PodView]:
    return sorted(pods, key=lambda p: (p.created, p.name), reverse=True)


def plan_scale(
    target: int,
    current: int | None,
    pods: Sequence[PodView],
    streams: dict[str, int | None],
    now: float,
    drain_timeout_s: float,
    prefer: Sequence[str] = (),
) -> ScalePlan:
    """The next step towards ``target`` replicas from a Deployment at ``current``."""
    if current is None:
        return ScalePlan(replicas=target)
    live = [p for p in pods if not p.deleting]
    # Drained pods whose replica was already released are on their way out: leave them be.
    surplus = max(0, len(live) - current)
    leaving = {p.name for p in live if p.draining_since is not None and p.cost_set}
    leaving = set(sorted(leaving)[:surplus])
    active = [p for p in live if p.name not in leaving]
    draining = sorted(
        (p for p in active if p.draining_since is not None),
        key=lambda p: (p.draining_since or 0.0, p.name),
    )
    if target >= current:  # hold or grow: drained pods serve again first
        return ScalePlan(replicas=target, unmark=tuple(p.name for p in draining))
    need = current - target
    unmark = tuple(p.name for p in draining[need:])
    draining = draining[:need]
    mark: list[str] = []
    if len(draining) < need:
        rest = [p for p in active if p.draining_since is None]
        rank = {name: i for i, name in enumerate(prefer)}
        ordered = sorted(
            _newest_first(rest),
            key=lambda p: (rank.get(p.name, len(rank)), p.ready),
        )
        mark = [p.name for p in ordered[: need - len(draining)]]
    done = [
        p
        for p in draining
        if not p.ready
        or streams.get(p.name) == 0
        or now - (p.draining_since or 0.0) >= drain_timeout_s
    ]
    set_cost = tuple(p.name for p in done if not p.cost_set)
    released = sum(1 for p in done if p.cost_set)
    return ScalePlan(
        replicas=current - released,
        mark=tuple(mark),
        unmark=unmark,
        set_cost=set_cost,
        draining=tuple(sorted([p.name for p in draining] + mark)),
    )


def set_condition(
    old: Sequence[Condition],
    type_: ConditionType,
    status: str,
    reason: Reason,
    message: str,
    generation: int | None,
    now: str,
) -> Condition:
    """A condition that keeps its lastTransitionTime while its status does not change."""
    previous = next((c for c in old if c.type == type_), None)
    since = previous.last_transition_time if previous and previous.status == status else now
    return Condition.model_validate(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }
    )


@dataclass
class StatusInput:
    generation: int | None
    selector: str
    problem: SpecProblem | None = None
    replicas: int = 0
    ready: int = 0
    desired: int | None = None
    deployment_replicas: int | None = None
    draining: tuple[str, ...] = ()
    attainment: float | None = None
    last_scaling: ScalingRecord | None = None
    conditions: list[Condition] = field(default_factory=list)
    engine_args: tuple[str, ...] = ()
    engine_reasons: dict[str, str] = field(default_factory=dict)


def build_status(s: StatusInput, now: str) -> SLOTierStatus:
    """The tier's status from what this pass saw and decided."""
    old = s.conditions

    def cond(t: ConditionType, status: str, reason: Reason, message: str = "") -> Condition:
        return set_condition(old, t, status, reason, message, s.generation, now)

    p = s.problem
    conditions: list[Condition] = []
    if p is not None and p.condition is ConditionType.PROFILE_MISSING:
        conditions.append(cond(ConditionType.PROFILE_MISSING, "True", p.reason, p.message))
        conditions.append(cond(ConditionType.INVALID_SPEC, "Unknown", Reason.SPEC_NOT_RECONCILED))
    else:
        conditions.append(cond(ConditionType.PROFILE_MISSING, "False", Reason.PROFILE_FOUND))
        if p is not None:
            conditions.append(cond(ConditionType.INVALID_SPEC, "True", p.reason, p.message))
        else:
            conditions.append(cond(ConditionType.INVALID_SPEC, "False", Reason.SPEC_VALID))
    if p is not None:
        conditions.append(
            cond(ConditionType.READY, "False", Reason.SPEC_NOT_RECONCILED, "see " + p.condition)
        )
        conditions.append(cond(ConditionType.SCALING, "Unknown", Reason.SPEC_NOT_RECONCILED))
        conditions.append(cond(ConditionType.DEGRADED, "Unknown", Reason.SPEC_NOT_RECONCILED))
    else:
        desired = s.desired or 0
        if desired == 0:
            conditions.append(cond(ConditionType.READY, "False", Reason.NO_REPLICAS, "0 replicas"))
        elif s.ready >= desired:
            conditions.append(
                cond(ConditionType.READY, "True", Reason.ALL_REPLICAS_READY, f"{s.ready} ready")
            )
        else:
            conditions.append(
                cond(
                    ConditionType.READY,
                    "False",
                    Reason.REPLICAS_NOT_READY,
                    f"{s.ready} of {desired} ready",
                )
            )
        if s.draining:
            conditions.append(
                cond(ConditionType.SCALING, "True", Reason.DRAINING, ", ".join(s.draining))
            )
        elif (s.deployment_replicas or 0) > s.replicas or s.ready < desired:
            conditions.append(
                cond(ConditionType.SCALING, "True", Reason.SCALING_UP, f"to {desired}")
            )
        elif s.replicas > desired:
            conditions.append(
                cond(ConditionType.SCALING, "True", Reason.SCALING_DOWN, f"to {desired}")
            )
        else:
            conditions.append(cond(ConditionType.SCALING, "False", Reason.STABLE))
        if s.attainment is None:
            conditions.append(cond(ConditionType.DEGRADED, "Unknown", Reason.NO_SIGNAL))
        elif s.attainment < ATTAINMENT_TARGET:
            conditions.append(
                cond(
                    ConditionType.DEGRADED,
                    "True",
                    Reason.ATTAINMENT_BELOW_TARGET,
                    f"attainment {s.attainment:.3f} < {ATTAINMENT_TARGET}",
                )
            )
        else:
            conditions.append(cond(ConditionType.DEGRADED, "False", Reason.ATTAINMENT_MET))
    return SLOTierStatus(
        replicas=s.replicas,
        ready_replicas=s.ready,
        desired_replicas=s.desired,
        observed_generation=s.generation,
        selector=s.selector,
        conditions=conditions,
        last_scaling=s.last_scaling,
        draining=list(s.draining),
        attainment=s.attainment,
        engine_args=list(s.engine_args),
        engine_reasons=dict(s.engine_reasons),
    )

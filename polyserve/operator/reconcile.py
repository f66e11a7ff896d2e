"""One pass of the operator over one SLOTier: validate, own the replica count, drain, report.

The pass is level-triggered and idempotent: it reads the tier, its Deployment and its pods, works
out what they should be, and writes only what differs (so a restarted operator writes nothing).
The decisions are pure functions (:func:`check_spec`, :func:`owner_target`, :func:`plan_scale`,
:func:`build_status`); :func:`reconcile_tier` is the I/O around them.

Replica ownership: the count comes from exactly one owner, the user's ``replicas.fixed`` when
autoscaling is off, or the autoscaler's decision (kept in ``status.desiredReplicas`` so that a
restart resumes it). The operator applies it to the Deployment with server-side apply; anyone
else's edit of the Deployment's replicas is put back on the next pass (one write, no loop).

Safe scale-down (:func:`plan_scale`), one pass at a time:
1. mark the drain candidate(s) ``polyserve.io/draining: "true"`` (the router stops sending);
2. wait until the candidate has no streams (``StreamProbe``), is not Ready, or its
   ``drainTimeoutSeconds`` ran out;
3. set ``controller.kubernetes.io/pod-deletion-cost`` to the lowest value on it;
4. on a later pass (the annotation is then visible to the ReplicaSet controller), lower the
   Deployment's replicas: the controller deletes exactly the drained pod.
A scale-up while pods drain takes the drained pods back first.

The autoscaler plugs in through :class:`Autoscaler` (``decide(observation) -> ScalingDecision``);
with none, an autoscaled tier holds its replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from polyserve.autoscale.decide import Reason as ScaleReason
from polyserve.operator import resources as r
from polyserve.operator.kube import Kube, Obj
from polyserve.operator.model import (
    Condition,
    ConditionType,
    ProfileRef,
    Reason,
    ScalingRecord,
    SLOTierSpec,
    SLOTierStatus,
)
from polyserve.profile import Profile, ProfileError, available_profiles, load_profile, parse_profile

log = logging.getLogger(__name__)

#: attainment below this marks the tier Degraded (the goodput threshold of the paper)
ATTAINMENT_TARGET = 0.9


# ------------------------------------------------------------------------------------------
# what the autoscaler sees and says (the seam)


@dataclass(frozen=True)
class PodView:
    name: str
    ready: bool
    deleting: bool
    created: str
    draining_since: float | None = None
    cost_set: bool = False
    address: tuple[str, int] | None = None

    @classmethod
    def from_pod(cls, pod: Obj) -> PodView:
        meta = pod.get("metadata") or {}
        ann = meta.get("annotations") or {}
        since: float | None = None
        if r.pod_draining(pod):
            since = _parse_time(ann.get(r.ANNOTATION_DRAINING_SINCE)) or 0.0
        return cls(
            name=meta["name"],
            ready=r.pod_ready(pod),
            deleting=bool(meta.get("deletionTimestamp")),
            created=str(meta.get("creationTimestamp") or ""),
            draining_since=since,
            cost_set=ann.get(r.ANNOTATION_DELETION_COST) == r.DRAINED_DELETION_COST,
            address=r.pod_address(pod),
        )


@dataclass(frozen=True)
class TierObservation:
    """One tier as the operator sees it at the start of a pass."""

    namespace: str
    name: str
    spec: SLOTierSpec
    profile: Profile
    #: the Deployment's spec.replicas (None: not created yet)
    replicas: int | None
    ready_replicas: int
    #: the owner's current count (status.desiredReplicas), before this decision
    desired: int
    pods: tuple[PodView, ...]
    last_scaling: ScalingRecord | None
    now: float


@dataclass(frozen=True)
class ScalingDecision:
    """What the autoscaler asks for one tier (the operator clamps it to replicas.min..max)."""

    replicas: int
    #: why (status.lastScaling and the Event record it CamelCase)
    reason: ScaleReason
    message: str = ""
    #: the tier's attainment as the router sees it (status.attainment; Degraded below 0.9)
    attainment: float | None = None
    #: pods to drain first on a scale-down (the router's drain candidates), best first
    drain_first: tuple[str, ...] = ()


class Autoscaler(Protocol):
    """The autoscaler decision core with its signal source (the router or Prometheus)."""

    async def decide(self, tier: TierObservation) -> ScalingDecision | None:
        """The tier's replica count now, or None to hold. Asked for every tier; for a tier with
        autoscaling off only the attainment is used."""
        ...

    def forget(self, namespace: str, name: str) -> None:
        """The tier is gone (deleted): the other tiers of its model decide without it."""
        ...

    async def close(self) -> None:
        """Release what the signal source holds (HTTP sessions); the operator is stopping."""
        ...


class StreamProbe(Protocol):
    """How many requests a pod still serves (None: unknown; the drain then waits for its
    deadline)."""

    async def active_streams(self, pod: PodView) -> int | None: ...


class EngineMetricsProbe:
    """Reads ``vllm:num_requests_running + vllm:num_requests_waiting`` from the pod's /metrics."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s

    async def active_streams(self, pod: PodView) -> int | None:
        import aiohttp

        if pod.address is None:
            return None
        host, port = pod.address
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"http://{host}:{port}/metrics") as resp,
            ):
                if resp.status != 200:
                    return None
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        return parse_streams(text)


def parse_streams(metrics: str) -> int | None:
    total = 0.0
    seen = False
    for line in metrics.splitlines():
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            seen = True
    return int(total) if seen else None


# ------------------------------------------------------------------------------------------
# pure decisions


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
    )


# ------------------------------------------------------------------------------------------
# the pass (I/O)


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dump(status: SLOTierStatus) -> Obj:
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass
class Reconciler:
    """Runs passes over tiers; one per operator (holds the plug-ins)."""

    kube: Kube
    autoscaler: Autoscaler | None = None
    probe: StreamProbe = field(default_factory=EngineMetricsProbe)
    clock: Callable[[], float] = field(default=lambda: datetime.now(UTC).timestamp())

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def reconcile(self, tier: Obj) -> SLOTierStatus:
        """One pass over ``tier`` (the SLOTier as the API served it); returns the status."""
        meta = tier["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        generation = meta.get("generation")
        now = self.clock()
        stamp = _rfc3339(now)
        raw_status = tier.get("status") or {}
        try:
            old = SLOTierStatus.model_validate(raw_status)
        except ValidationError:
            old = SLOTierStatus()
        base = StatusInput(
            generation=generation,
            selector=r.tier_selector(name),
            conditions=old.conditions,
            desired=old.desired_replicas,
            last_scaling=old.last_scaling,
            attainment=old.attainment,
        )

        problem: SpecProblem | None = None
        spec: SLOTierSpec | None = None
        profile: Profile | None = None
        try:
            spec = SLOTierSpec.model_validate(tier.get("spec") or {})
        except ValidationError as exc:
            msg = "; ".join(
                f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            problem = SpecProblem(ConditionType.INVALID_SPEC, Reason.SPEC_INVALID, msg)
        if spec is not None:
            got = await self._io(resolve_profile, spec.profile, namespace, self.kube.get_config_map)
            if isinstance(got, SpecProblem):
                problem = got
            else:
                profile = got
                problem = check_attainable(spec, profile)

        deployment = await self._io(self.kube.get_deployment, namespace, name)
        dep_status = (deployment or {}).get("status") or {}
        base.replicas = int(dep_status.get("replicas") or 0)
        base.ready = int(dep_status.get("readyReplicas") or 0)
        if problem is not None or spec is None or profile is None:
            base.problem = problem
            status = build_status(base, stamp)
            await self._write_status(tier, old, status, problem)
            return status

        current = (deployment or {}).get("spec", {}).get("replicas") if deployment else None
        pod_list = await self._io(self.kube.list_pods, namespace, r.tier_selector(name))
        pods = tuple(PodView.from_pod(p) for p in pod_list.get("items", []))
        decision: ScalingDecision | None = None
        # Every tier is asked (its attainment goes into the status); only an autoscaled tier's
        # replica count follows the answer (owner_target).
        if self.autoscaler is not None:
            observation = TierObservation(
                namespace=namespace,
                name=name,
                spec=spec,
                profile=profile,
                replicas=current,
                ready_replicas=base.ready,
                desired=old.desired_replicas
                if old.desired_replicas is not None
                else spec.replicas.min,
                pods=pods,
                last_scaling=old.last_scaling,
                now=now,
            )
            try:
                decision = await self.autoscaler.decide(observation)
            except Exception:  # a failing autoscaler holds the tier; it never stops the pass
                log.exception("autoscaler failed for %s/%s; holding", namespace, name)
        target, reason, message = owner_target(spec, old.desired_replicas, decision)

        draining = [p for p in pods if p.draining_since is not None and not p.deleting]
        streams: dict[str, int | None] = {}
        for p in draining:
            streams[p.name] = await self.probe.active_streams(p)
        plan = plan_scale(
            target,
            current,
            pods,
            streams,
            now,
            spec.drain_timeout_seconds,
            decision.drain_first if decision and spec.autoscaling.enabled else (),
        )
        await self._apply(name, namespace, uid, spec, deployment, plan.replicas)
        for pod in plan.mark:
            await self._io(
                self.kube.patch_pod_annotations,
                namespace,
                pod,
                {r.ANNOTATION_DRAINING: "true", r.ANNOTATION_DRAINING_SINCE: stamp},
            )
        for pod in plan.unmark:
            await self._io(
                self.kube.patch_pod_annotations,
                namespace,
                pod,
                {
                    r.ANNOTATION_DRAINING: None,
                    r.ANNOTATION_DRAINING_SINCE: None,
                    r.ANNOTATION_DELETION_COST: None,
                },
            )
        for pod in plan.set_cost:
            await self._io(
                self.kube.patch_pod_annotations,
                namespace,
                pod,
                {r.ANNOTATION_DELETION_COST: r.DRAINED_DELETION_COST},
            )

        if old.desired_replicas is not None and target != old.desired_replicas:
            base.last_scaling = ScalingRecord(
                time=stamp,
                from_replicas=old.desired_replicas,
                to_replicas=target,
                reason=reason,
                message=message,
            )
        base.desired = target
        base.deployment_replicas = plan.replicas
        base.draining = plan.draining
        if decision is not None:
            base.attainment = decision.attainment
        status = build_status(base, stamp)
        await self._write_status(tier, old, status, None)
        return status

    async def _apply(
        self,
        name: str,
        namespace: str,
        uid: str,
        spec: SLOTierSpec,
        deployment: Obj | None,
        replicas: int,
    ) -> None:
        service = r.desired_service(name, namespace, uid, spec)
        svc_digest = r.digest(service)
        existing = await self._io(self.kube.get_service, namespace, name)
        if (existing or {}).get("metadata", {}).get("annotations", {}).get(
            r.ANNOTATION_APPLIED
        ) != svc_digest:
            service["metadata"]["annotations"] = {r.ANNOTATION_APPLIED: svc_digest}
            await self._io(self.kube.apply, service)

        body = r.desired_deployment(name, namespace, uid, spec, replicas)
        without_replicas = r.desired_deployment(name, namespace, uid, spec, 0)
        dep_digest = r.digest(without_replicas)
        current_digest = (
            ((deployment or {}).get("metadata") or {})
            .get("annotations", {})
            .get(r.ANNOTATION_APPLIED)
        )
        current_replicas = ((deployment or {}).get("spec") or {}).get("replicas")
        if deployment is not None and current_digest == dep_digest and current_replicas == replicas:
            return
        body["metadata"]["annotations"] = {r.ANNOTATION_APPLIED: dep_digest}
        await self._io(self.kube.apply, body)

    async def _write_status(
        self, tier: Obj, old: SLOTierStatus, status: SLOTierStatus, problem: SpecProblem | None
    ) -> None:
        meta = tier["metadata"]
        new = _dump(status)
        if new != _dump(old):
            # A merge patch: send null for what the new status no longer has.
            patch: Obj = {k: None for k in _dump(old) if k not in new}
            patch.update(new)
            await self._io(self.kube.patch_tier_status, meta["namespace"], meta["name"], patch)
        for cond in status.conditions:
            before = next((c for c in old.conditions if c.type == cond.type), None)
            if (
                cond.status == "True"
                and (before is None or before.status != "True")
                and cond.type in (ConditionType.INVALID_SPEC, ConditionType.PROFILE_MISSING)
            ):
                await self._event(tier, "Warning", cond.reason, cond.message)
        rec = status.last_scaling
        if rec is not None and rec != old.last_scaling:
            verb = "up" if rec.to_replicas > rec.from_replicas else "down"
            await self._event(
                tier,
                "Normal",
                f"Scaling{verb.capitalize()}",
                f"{rec.from_replicas} -> {rec.to_replicas} replicas: {rec.reason}"
                + (f" ({rec.message})" if rec.message else ""),
            )

    async def _event(self, tier: Obj, type_: str, reason: str, message: str) -> None:
        try:
            await self._io(self.kube.event, tier, type_, reason, message)
        except Exception:  # events are best effort
            log.warning("could not post event %s for %s", reason, tier["metadata"]["name"])

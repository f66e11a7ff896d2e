"""One pass of the operator over one SLOTier: the I/O around the pure plan (``operator.plan``).

The pass is level-triggered and idempotent: it reads the tier, its Deployment and its pods, works
out what they should be (:func:`~polyserve.operator.plan.check_attainable`,
:func:`~polyserve.operator.plan.owner_target`, :func:`~polyserve.operator.plan.plan_scale`,
:func:`~polyserve.operator.plan.build_status`), and writes only what differs (so a restarted
operator writes nothing).

Replica ownership: the count comes from exactly one owner, the user's ``replicas.fixed`` when
autoscaling is off, or the autoscaler's decision (kept in ``status.desiredReplicas`` so that a
restart resumes it). The operator applies it to the Deployment with server-side apply; anyone
else's edit of the Deployment's replicas is put back on the next pass (one write, no loop).
Scale-down is safe: the drain steps are :func:`~polyserve.operator.plan.plan_scale`'s.

The autoscaler plugs in through :class:`~polyserve.operator.views.Autoscaler`
(``decide(observation) -> ScalingDecision``); with none, an autoscaled tier holds its replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from polyserve.operator import resources as r
from polyserve.operator.kube import Kube, Obj
from polyserve.operator.model import (
    ConditionType,
    Reason,
    ScalingRecord,
    SLOTierSpec,
    SLOTierStatus,
)
from polyserve.operator.plan import (
    SpecProblem,
    StatusInput,
    build_status,
    check_attainable,
    owner_target,
    plan_scale,
    resolve_profile,
)
from polyserve.operator.views import (
    Autoscaler,
    PodView,
    ScalingDecision,
    StreamProbe,
    TierObservation,
)
from polyserve.profile import Profile
from polyserve.tier_engine import TierEngine
from polyserve.wire.vllm_metrics import parse_engine_load

log = logging.getLogger(__name__)


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
        load = parse_engine_load(text)
        return load.requests if load is not None else None


# ------------------------------------------------------------------------------------------
# the pass (I/O)


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

        derived = r.tier_engine(spec, profile)
        base.engine_args = tuple(r.engine_args(spec, derived))
        base.engine_reasons = r.derived_reasons(spec, derived)
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
        await self._apply(name, namespace, uid, spec, derived, deployment, plan.replicas)
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
        derived: TierEngine,
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

        body = r.desired_deployment(name, namespace, uid, spec, replicas, derived)
        without_replicas = r.desired_deployment(name, namespace, uid, spec, 0, derived)
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

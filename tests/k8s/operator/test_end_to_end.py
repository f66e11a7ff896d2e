"""The system on the real control plane: an SLOTier -> the operator's Deployment -> a Ready mock
engine pod -> discovered by the router (``--kubernetes``) -> a request served through the router,
and the operator's autoscaler reading the router's state into the tier's status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from polyserve.autoscale.decide import Reason
from polyserve.devcluster import DevCluster
from polyserve.loopthread import LoopThread
from polyserve.operator.autoscaling import RouterAutoscaler, router_sources
from polyserve.operator.handlers import OperatorConfig, operator_in_thread
from polyserve.operator.model import GROUP, PLURAL, VERSION
from polyserve.operator.views import ScalingDecision, TierObservation
from tests.k8s.conftest import discovering_router, wait_for
from tests.mockengine.conftest import raw
from tests.operator.manifests import slotier

pytestmark = pytest.mark.timeout(240)


class RecordingAutoscaler(RouterAutoscaler):
    """The operator's autoscaler, keeping what it decided."""

    def __init__(self, router_url: str) -> None:
        super().__init__(router_sources(router_url), refresh_s=0.5)
        self.decisions: list[ScalingDecision] = []

    async def decide(self, tier: TierObservation) -> ScalingDecision | None:
        d = await super().decide(tier)
        if d is not None:
            self.decisions.append(d)
        return d


def test_tier_served_through_the_router_and_autoscaled(
    devcluster: DevCluster, api: Any, namespace: str, slotier_crd: str
) -> None:
    from kubernetes import client

    loop = LoopThread("router")
    loop.start()

    router = loop.run(discovering_router(api, namespace), timeout=60)
    try:
        config = OperatorConfig(
            interval_s=1.0,
            namespaces=(namespace,),
            kubeconfig=devcluster.kubeconfig,
            autoscaler=(scaler := RecordingAutoscaler(router.url)),
        )
        body = slotier(
            "chat", replicas={"min": 1, "max": 2, "fixed": None}, autoscaling={"enabled": True}
        )
        with operator_in_thread(config):
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body
            )

            def backends() -> list[str]:
                state = json.loads(raw(router.url, "GET", "/polyserve/v1/state")[2])
                return [b["name"] for b in state["backends"] if b["ready"] and b["tier"] == "chat"]

            (pod,) = wait_for(backends, timeout_s=120, what="the tier's pod in the router")
            req = {"model": "llama-3.1-8b", "prompt": "hello cluster", "max_tokens": 4}
            status, headers, data = raw(router.url, "POST", "/v1/completions", req)
            assert status == 200, data
            assert json.loads(data)["usage"]["completion_tokens"] == 4
            assert headers["X-PolyServe-Backend"] == pod and headers["X-PolyServe-Tier"] == "chat"

            # the operator's passes decide from the router's state (not held for stale signals)
            wait_for(
                lambda: [d for d in scaler.decisions if d.reason is Reason.HOLD_STEADY],
                timeout_s=60,
                what="a decision from fresh router signals",
            )
            assert not [d for d in scaler.decisions if d.reason is Reason.HOLD_INVALID_METRICS]
    finally:
        loop.run(router.close())
        loop.stop()

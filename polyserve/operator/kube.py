"""The few API calls the operator and the discovery make, as plain JSON dicts.

A thin synchronous facade over ``kubernetes.client`` (the async callers run it in a thread), so
that the reconcile logic reads and writes the API's own camelCase JSON and never the client's
generated classes.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from polyserve.operator.model import GROUP, KIND, PLURAL, VERSION
from polyserve.operator.resources import FIELD_MANAGER

Obj = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    def __init__(self, api_client: Any, timeout_s: float = 30.0) -> None:
        self.api = api_client
        self.timeout_s = timeout_s

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
    ) -> Obj | None:
        """One REST call; None for 404. Raises ``ApiException`` for other errors."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        request = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self.api.call_api(*request, _request_timeout=self.timeout_s)
            resp.read()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        text = resp.data.decode("utf-8") if resp.data else ""
        if resp.status == 404:
            return None
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(http_resp=resp, body=text, data=None)
        return json.loads(text) if text else {}

    # reads ----------------------------------------------------------------------------------

    def get_tier(self, namespace: str, name: str) -> Obj | None:
        return self._call("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}")

    def get_deployment(self, namespace: str, name: str) -> Obj | None:
        return self._call("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")

    def get_service(self, namespace: str, name: str) -> Obj | None:
        return self._call("GET", f"/api/v1/namespaces/{namespace}/services/{name}")

    def list_pods(self, namespace: str | None, selector: str) -> Obj:
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        return self._call("GET", path, query=[("labelSelector", selector)]) or {"items": []}

    def get_config_map(self, namespace: str, name: str) -> Obj | None:
        return self._call("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        return self._call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")

    # writes ---------------------------------------------------------------------------------

    def apply(self, obj: Obj) -> Obj | None:
        """Server-side apply as the operator's field manager (force: the operator owns them)."""
        meta = obj["metadata"]
        kind = obj["kind"]
        if kind == "Deployment":
            path = f"/apis/apps/v1/namespaces/{meta['namespace']}/deployments/{meta['name']}"
        elif kind == "Service":
            path = f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}"
        else:
            raise ValueError(f"cannot apply a {kind}")
        return self._call(
            "PATCH",
            path,
            body=obj,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )

    def patch_pod_annotations(
        self, namespace: str, name: str, annotations: dict[str, str | None]
    ) -> None:
        """Set (or, with None, remove) annotations of a pod."""
        self._call(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            body={"metadata": {"annotations": annotations}},
            content_type="application/merge-patch+json",
        )

    def patch_tier_status(self, namespace: str, name: str, status: Obj) -> None:
        self._call(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def event(self, tier: Obj, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about an SLOTier (what ``kubectl describe`` shows)."""
        meta = tier["metadata"]
        now = now_rfc3339()
        self._call(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/events",
            body={
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}"},
                "involvedObject": {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "type": type_,
                "reason": reason,
                "message": message[:1024],
                "source": {"component": FIELD_MANAGER},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
                "reportingComponent": FIELD_MANAGER,
            },
            content_type="application/json",
        )

"""Fixtures for the SLOTier tests on the devcluster: the CRD installed once per session."""

from __future__ import annotations

from typing import Any

import pytest

from polyserve.operator.crd import crd_manifest
from polyserve.operator.model import CRD_NAME, GROUP, PLURAL, VERSION
from tests.k8s.conftest import wait_for


def crd_established(api: Any) -> bool:
    from kubernetes import client

    got = client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD_NAME)
    return any(c.type == "Established" and c.status == "True" for c in got.status.conditions or [])


@pytest.fixture(scope="session")
def slotier_crd(api: Any) -> str:
    """The generated SLOTier CRD, applied to the session's API server (left in place)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext: Any = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(crd_manifest())
    except ApiException as exc:
        if exc.status != 409:
            raise
    wait_for(lambda: crd_established(api), timeout_s=30, what="the SLOTier CRD to be Established")
    custom: Any = client.CustomObjectsApi(api)
    # Discovery of the new resource lags Established a little.
    wait_for(
        lambda: _listable(custom),
        timeout_s=30,
        what="the SLOTier resource to be served",
    )
    return CRD_NAME


def _listable(custom: Any) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True

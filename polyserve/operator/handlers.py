"""The kopf side of the operator: one level-triggered loop (a kopf daemon) per SLOTier.

Each loop re-reads its tier and runs :meth:`Reconciler.reconcile` every ``interval_s`` seconds,
and at once when the tier, its Deployment or one of its pods changes (kopf watch events wake it).
Handlers never raise into kopf: a failed pass is logged and retried on the next tick, so a bad
tier costs one pass per interval, never a hot retry loop.

``build_registry`` returns a fresh registry (no module-level state), so tests can run several
operators in one process; :func:`run_operator` runs one until its stop flag is set.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from polyserve.operator import resources as r
from polyserve.operator.kube import Kube
from polyserve.operator.model import GROUP, PLURAL, VERSION, SLOTierStatus
from polyserve.operator.reconcile import EngineMetricsProbe, Reconciler
from polyserve.operator.views import Autoscaler, StreamProbe

log = logging.getLogger(__name__)


@dataclass
class OperatorConfig:
    #: seconds between two passes over a tier when nothing wakes it
    interval_s: float = 10.0
    #: namespaces to watch; empty: the whole cluster
    namespaces: tuple[str, ...] = ()
    #: a kubeconfig file; None: in-cluster service account, else the default kubeconfig
    kubeconfig: Path | None = None
    #: kopf's liveness endpoint, e.g. ``http://0.0.0.0:8080/healthz`` (None: off)
    liveness_endpoint: str | None = None
    autoscaler: Autoscaler | None = None
    probe: StreamProbe = field(default_factory=EngineMetricsProbe)
    #: called after every pass with (namespace, name, status); tests count passes with it
    on_pass: Callable[[str, str, SLOTierStatus], None] | None = None


def api_client(kubeconfig: Path | None) -> Any:
    """A ``kubernetes.client.ApiClient``: from ``kubeconfig``, in-cluster, or the default file."""
    from kubernetes import client, config

    cfg: Any = config  # the module's loaders are untyped
    if kubeconfig is not None:
        return cfg.new_client_from_config(config_file=str(kubeconfig))
    try:
        cfg.load_incluster_config()
    except cfg.ConfigException:
        cfg.load_kube_config()
    return client.ApiClient()


def connection_info(api: Any) -> kopf.ConnectionInfo:
    """kopf's credentials from a configured ``ApiClient`` (certificate or bearer token)."""
    cfg = api.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    scheme, token = None, None
    if header:
        parts = header.split(" ", 1)
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def settings(config: OperatorConfig) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    # Nothing of kopf's bookkeeping in the SLOTier's status (the schema would prune it).
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="operator.polyserve.io")
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="operator.polyserve.io", key="last-handled-configuration"
    )
    s.persistence.finalizer = "operator.polyserve.io/daemon"
    s.posting.level = logging.WARNING
    s.watching.server_timeout = 300
    s.watching.reconnect_backoff = 1.0
    # Watching given namespaces, the operator holds Roles there only (the chart's RBAC): no
    # cluster-wide list of namespaces and CRDs. Without this kopf retries those lists for about
    # a minute, serving nothing, at every start, before it falls back to the same namespaces.
    s.scanning.disabled = bool(config.namespaces)
    return s


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    api = api_client(config.kubeconfig)
    kube = Kube(api)
    reconciler = Reconciler(kube, autoscaler=config.autoscaler, probe=config.probe)
    wakers: dict[tuple[str, str], asyncio.Event] = {}

    def wake(namespace: str | None, name: str | None) -> None:
        event = wakers.get((namespace or "", name or ""))
        if event is not None:
            event.set()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(api)

    # On stop a loop ends its pass and exits (it checks `stopped` twice a second); cancelled
    # only if it did not within the backoff.
    @kopf.daemon(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        cancellation_backoff=2.0,
        cancellation_timeout=5.0,
    )
    async def tier_loop(**kwargs: Any) -> None:
        stopped: kopf.DaemonStopped = kwargs["stopped"]
        name: str = kwargs["name"]
        namespace: str = kwargs["namespace"]
        logger: Any = kwargs["logger"]
        key = (namespace, name)
        event = wakers.setdefault(key, asyncio.Event())
        try:
            while not stopped:
                event.clear()
                try:
                    tier = await asyncio.to_thread(kube.get_tier, namespace, name)
                    if tier is None or tier["metadata"].get("deletionTimestamp"):
                        if config.autoscaler is not None:
                            config.autoscaler.forget(namespace, name)
                        return
                    status = await reconciler.reconcile(tier)
                    if config.on_pass is not None:
                        config.on_pass(namespace, name, status)
                except Exception as exc:  # logged; the next tick retries
                    logger.warning("pass over %s/%s failed: %s", namespace, name, exc)
                    log.debug("pass failed", exc_info=True)
                await _sleep(event, stopped, config.interval_s)
        finally:
            if wakers.get(key) is event:
                del wakers[key]

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def tier_changed(**kwargs: Any) -> None:
        wake(kwargs["namespace"], kwargs["name"])

    managed: dict[str, Any] = {
        r.LABEL_MANAGED_BY: r.MANAGED_BY,
        r.LABEL_TIER: kopf.PRESENT,
    }

    @kopf.on.event("apps", "v1", "deployments", labels=managed, registry=registry)
    def deployment_changed(**kwargs: Any) -> None:
        wake(kwargs["namespace"], kwargs["labels"].get(r.LABEL_TIER))

    @kopf.on.event("", "v1", "pods", labels=managed, registry=registry)
    def pod_changed(**kwargs: Any) -> None:
        wake(kwargs["namespace"], kwargs["labels"].get(r.LABEL_TIER))

    return registry


async def _sleep(event: asyncio.Event, stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Until woken, stopped or ``seconds`` passed; a short debounce merges bursts of events."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not stopped and loop.time() < deadline:
        try:
            await asyncio.wait_for(event.wait(), timeout=min(0.5, deadline - loop.time()))
        except TimeoutError:
            continue
        await asyncio.sleep(0.2)
        return


async def run_operator(
    config: OperatorConfig,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
) -> None:
    """Run the operator until ``stop_flag`` is set (or forever)."""
    try:
        await kopf.operator(
            registry=build_registry(config),
            settings=settings(config),
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            liveness_endpoint=config.liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if config.autoscaler is not None:
            await config.autoscaler.close()


@contextmanager
def operator_in_thread(config: OperatorConfig, ready_timeout_s: float = 30.0) -> Iterator[None]:
    """Run the operator in a background thread (tests, embedding); stops it on exit."""
    stop = threading.Event()
    ready = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(run_operator(config, stop_flag=stop, ready_flag=ready))
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="polyserve-operator", daemon=True)
    thread.start()
    if not ready.wait(ready_timeout_s):
        stop.set()
        raise TimeoutError("the operator did not start")
    if errors:
        raise RuntimeError("the operator failed to start") from errors[0]
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        if errors:
            raise RuntimeError("the operator failed") from errors[0]

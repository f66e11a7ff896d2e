"""Kubernetes discovery for the router: SLOTiers and their Ready pods as ``FleetSpec`` snapshots.

:func:`fleet_from_objects` is the pure part: one ``TierSpec`` per valid SLOTier, one
``BackendSpec`` per Ready engine pod of a known tier (selected by ``polyserve.io/tier`` and
``app.kubernetes.io/component=engine``). A backend's URL is the pod IP and engine port, or the
devcluster's ``polyserve.io/local-host``/``local-port`` annotations when present (pod IPs there are
fake); ``draining`` comes from ``polyserve.io/draining: "true"`` or a pending deletion (the pod
finishes its streams in its grace period); ``priority`` from ``--scheduling-policy priority`` in the
engine's arguments; ``api_key`` from the tier's ``engine.apiKeySecretRef`` (a tier whose key
cannot be read keeps its ``TierSpec`` but none of its backends: they would answer 401).

:func:`kubernetes_fleet` lists and watches both kinds in one namespace and yields a snapshot after
the first list and after every change that alters it. Profiles in ConfigMaps and keys in Secrets
are read (``get``) for every snapshot; each watch ends and re-lists every ``watch_timeout_s``, so a
rotated key reaches the router within that. The router uses it as its fleet source::

    source = kubernetes_fleet(namespace, api_client(None))
    first = await anext(source)
    router = Router(settings, first, keyring, source=source)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from polyserve.operator import resources as r
from polyserve.operator.kube import Kube, Obj
from polyserve.operator.model import (
    GROUP,
    PLURAL,
    VERSION,
    ProfileRef,
    SecretKeyRef,
    SLOTierSpec,
)
from polyserve.router.spec import BackendSpec, FleetSpec, TierSpec
from polyserve.vllm import ENV_CHUNK_BUDGET_MS, SCHEDULER_CLASSES
from polyserve.wire.vllm_args import flag_value, positive_int_flag

log = logging.getLogger(__name__)

ProfileResolver = Callable[[str, ProfileRef], str | None]
"""(namespace, profile ref) -> what ``TierSpec.profile`` takes (a shipped name or a file path)."""


KeyResolver = Callable[[str, str, SecretKeyRef], SecretStr | None]
"""(namespace, tier, ``engine.apiKeySecretRef``) -> the engines' key; None: it cannot be used."""


def shipped_only(namespace: str, ref: ProfileRef) -> str | None:
    return ref.name


def no_keys(namespace: str, tier: str, ref: SecretKeyRef) -> SecretStr | None:
    return None


def secret_api_key(secret: Obj | None, ref: SecretKeyRef) -> SecretStr:
    """The engine key a Secret object (API JSON) holds under ``ref.key``; ValueError says why it
    cannot be used."""
    if secret is None:
        raise ValueError(f"Secret {ref.name} does not exist")
    data = secret.get("data") or {}
    if ref.key not in data:
        raise ValueError(f"Secret {ref.name} has no key {ref.key!r}")
    try:
        value = base64.b64decode(data[ref.key], validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(f"Secret {ref.name} key {ref.key!r} is not ASCII text") from None
    # vLLM compares the header with its key verbatim; HTTP trims a header value's surrounding
    # whitespace and cannot carry control characters, so such a key could never match.
    if not value or value != value.strip() or not all(" " <= c <= "~" for c in value):
        raise ValueError(
            f"Secret {ref.name} key {ref.key!r} is empty or has surrounding whitespace or a "
            "control character (a trailing newline?): store the key alone, e.g. "
            "kubectl create secret generic NAME --from-literal=KEY=VALUE"
        )
    return SecretStr(value)


def _engine_words(pod: Obj) -> list[str]:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == r.ENGINE_CONTAINER:
            return [str(w) for w in (c.get("command") or []) + (c.get("args") or [])]
    return []


def _engine_env(pod: Obj) -> dict[str, str]:
    """The engine container's plain env values (valueFrom ones are not the discovery's to read)."""
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == r.ENGINE_CONTAINER:
            return {e["name"]: str(e["value"]) for e in c.get("env") or [] if "value" in e}
    return {}


def chunk_budget_ms(words: list[str], env: dict[str, str]) -> float:
    """The step budget the pod's engine cuts prefill chunks to: PolyServe's vLLM scheduler plugin
    (``--scheduler-cls`` and its env) or the mock engine's ``--chunk-budget-ms``; 0: stock."""
    if flag_value(words, "--scheduler-cls") in SCHEDULER_CLASSES:
        raw = env.get(ENV_CHUNK_BUDGET_MS)
    else:
        raw = flag_value(words, "--chunk-budget-ms")
    try:
        value = float(raw) if raw is not None else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def backend_of(
    pod: Obj, tier: TierSpec, port: int, api_key: SecretStr | None = None
) -> BackendSpec | None:
    """The backend a pod is, or None when it does not serve (not Ready, no address, stale model)."""
    meta = pod.get("metadata") or {}
    ann = meta.get("annotations") or {}
    if not r.pod_ready(pod):
        return None
    if ann.get(r.ANNOTATION_MODEL, tier.model) != tier.model:
        return None  # an old pod of a tier whose model changed: it serves another name
    address = r.pod_address(pod, port)
    if address is None:
        return None
    host, port_ = address
    words = _engine_words(pod)
    return BackendSpec(
        name=meta["name"],
        url=f"http://{host}:{port_}",
        model=tier.model,
        tier=tier.name,
        priority=r.uses_priority_scheduling(words),
        max_num_batched_tokens=positive_int_flag(words, "--max-num-batched-tokens"),
        max_num_seqs=positive_int_flag(words, "--max-num-seqs"),
        chunk_budget_ms=chunk_budget_ms(words, _engine_env(pod)),
        draining=r.pod_draining(pod) or bool(meta.get("deletionTimestamp")),
        api_key=api_key,
    )


def fleet_from_objects(
    tiers: list[Obj],
    pods: list[Obj],
    resolve: ProfileResolver = shipped_only,
    keys: KeyResolver = no_keys,
) -> FleetSpec:
    """The fleet that SLOTier objects and pod objects (API JSON) describe."""
    specs: list[TierSpec] = []
    ports: dict[str, int] = {}
    api_keys: dict[str, SecretStr] = {}
    keyless: set[str] = set()  # keyed tiers whose key cannot be read: no backends
    for obj in sorted(tiers, key=lambda o: o["metadata"]["name"]):
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        try:
            spec = SLOTierSpec.model_validate(obj.get("spec") or {})
            profile = resolve(meta.get("namespace", ""), spec.profile)
            if profile is None:
                raise ValueError("its profile cannot be read")
            specs.append(
                TierSpec(
                    name=meta["name"],
                    model=spec.model,
                    tpot_ms=spec.tpot_ms,
                    ttft_ms=spec.ttft_ms,
                    profile=profile,
                    on_deadline_miss=spec.on_deadline_miss,
                )
            )
            ports[meta["name"]] = spec.engine.port
            ref = spec.engine.api_key_secret_ref
            if ref is not None:
                key = keys(meta.get("namespace", ""), meta["name"], ref)
                if key is None:
                    keyless.add(meta["name"])
                else:
                    api_keys[meta["name"]] = key
        except (ValidationError, ValueError) as exc:
            log.warning("skipping SLOTier %s: %s", meta.get("name"), exc)
    by_name = {t.name: t for t in specs}
    backends: list[BackendSpec] = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        labels = pod["metadata"].get("labels") or {}
        tier = by_name.get(labels.get(r.LABEL_TIER, ""))
        if tier is None or labels.get(r.LABEL_COMPONENT) != r.COMPONENT_ENGINE:
            continue
        if tier.name in keyless:
            continue
        backend = backend_of(pod, tier, ports[tier.name], api_keys.get(tier.name))
        if backend is not None:
            backends.append(backend)
    return FleetSpec(tiers=specs, backends=backends)


class ConfigMapProfiles:
    """Resolves profiles: shipped names as they are, ConfigMap profiles to files in a cache
    directory (named by content hash, so a changed ConfigMap is a new file)."""

    def __init__(self, kube: Kube, directory: Path | None = None) -> None:
        self.kube = kube
        self.directory = directory or Path(tempfile.mkdtemp(prefix="polyserve-profiles-"))

    def __call__(self, namespace: str, ref: ProfileRef) -> str | None:
        if ref.name is not None:
            return ref.name
        assert ref.config_map_key_ref is not None
        cm = self.kube.get_config_map(namespace, ref.config_map_key_ref.name)
        text = ((cm or {}).get("data") or {}).get(ref.config_map_key_ref.key)
        if text is None:
            return None
        path = self.directory / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
        if not path.exists():
            path.write_text(text)
        return str(path)


class SecretKeys:
    """Reads each keyed tier's Secret (``get``, for every snapshot) and logs a tier's problem once
    per change, not once per snapshot. A failed read other than 404/403 keeps the last good key:
    an API hiccup should not take a tier's engines away."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._said: dict[tuple[str, str], str] = {}  # (namespace, tier) -> last problem ("": none)
        self._good: dict[tuple[str, str, str], SecretStr] = {}

    def __call__(self, namespace: str, tier: str, ref: SecretKeyRef) -> SecretStr | None:
        from kubernetes.client.exceptions import ApiException

        where = (namespace, ref.name, ref.key)
        key: SecretStr | None = None
        try:
            key = secret_api_key(self.kube.get_secret(namespace, ref.name), ref)
            problem = ""
        except ValueError as exc:
            problem = str(exc)
        except ApiException as exc:
            if exc.status in (401, 403):
                problem = (
                    f"the router may not read Secret {ref.name} (the chart's "
                    "router.backendKeySecrets must list it)"
                )
            else:
                key = self._good.get(where)
                problem = f"reading Secret {ref.name} failed (HTTP {exc.status})"
        except Exception as exc:  # connection errors: the watchers retry, so do we next time
            key = self._good.get(where)
            problem = f"reading Secret {ref.name} failed ({exc})"
        if not problem:
            assert key is not None
            self._good[where] = key
        elif key is None:
            self._good.pop(where, None)  # gone or forbidden: no stale key on a later hiccup
        said = self._said.get((namespace, tier), "")
        if problem != said:
            self._said[(namespace, tier)] = problem
            if not problem:
                log.info("SLOTier %s/%s: engine key read from Secret %s", namespace, tier, ref.name)
            elif key is None:
                log.warning("SLOTier %s/%s: its engines are left out: %s", namespace, tier, problem)
            else:
                log.warning("SLOTier %s/%s: %s; keeping the last key", namespace, tier, problem)
        return key


class _Watcher(threading.Thread):
    """List, then watch, one kind of object; re-list after any error or expiry."""

    def __init__(
        self,
        kind: str,
        list_fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        push: Callable[[str, str, Obj | list[Obj]], None],
        stop: threading.Event,
        timeout_s: int,
    ) -> None:
        super().__init__(name=f"polyserve-discovery-{kind}", daemon=True)
        self.kind, self.list_fn, self.args, self.kwargs = kind, list_fn, args, kwargs
        self.push, self.stop, self.timeout_s = push, stop, timeout_s

    def run(self) -> None:
        from kubernetes import watch

        watch_module: Any = watch

        while not self.stop.is_set():
            try:
                listed = self.list_fn(*self.args, **self.kwargs, _preload_content=False)
                body = json.loads(listed.data)
                self.push("RESET", self.kind, body.get("items") or [])
                version = body["metadata"]["resourceVersion"]
                w: Any = watch_module.Watch()
                for event in w.stream(
                    self.list_fn,
                    *self.args,
                    **self.kwargs,
                    resource_version=version,
                    timeout_seconds=self.timeout_s,
                    allow_watch_bookmarks=True,
                ):
                    if self.stop.is_set():
                        w.stop()
                        return
                    kind = event.get("type")
                    obj = event.get("raw_object") or {}
                    if kind == "ERROR":
                        break  # e.g. 410 Gone: list again
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self.push(kind, self.kind, obj)
            except Exception as exc:
                log.warning("watching %s failed (%s); listing again", self.kind, exc)
                self.stop.wait(1.0)


async def kubernetes_fleet(
    namespace: str,
    api: Any,
    *,
    resolve: ProfileResolver | None = None,
    keys: KeyResolver | None = None,
    watch_timeout_s: int = 60,
    debounce_s: float = 0.1,
) -> AsyncIterator[FleetSpec]:
    """Snapshots of the fleet in ``namespace``: the first after listing, then one per change."""
    from kubernetes import client

    kube = Kube(api)
    resolve = resolve or ConfigMapProfiles(kube)
    keys = keys or SecretKeys(kube)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def push(event: str, kind: str, obj: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (event, kind, obj))

    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    watchers = [
        _Watcher(
            "slotiers",
            custom.list_namespaced_custom_object,
            (GROUP, VERSION, namespace, PLURAL),
            {},
            push,
            stop,
            watch_timeout_s,
        ),
        _Watcher(
            "pods",
            core.list_namespaced_pod,
            (namespace,),
            {"label_selector": r.ENGINE_PODS_SELECTOR},
            push,
            stop,
            watch_timeout_s,
        ),
    ]
    state: dict[str, dict[str, Obj]] = {"slotiers": {}, "pods": {}}
    listed: set[str] = set()
    last: FleetSpec | None = None
    for w in watchers:
        w.start()
    try:
        while True:
            event, kind, obj = await queue.get()
            while True:  # take the whole burst before building a snapshot
                _apply(state, listed, event, kind, obj)
                try:
                    event, kind, obj = await asyncio.wait_for(queue.get(), debounce_s)
                except TimeoutError:
                    break
            if listed != {"slotiers", "pods"}:
                continue
            fleet = await asyncio.to_thread(
                fleet_from_objects,
                list(state["slotiers"].values()),
                list(state["pods"].values()),
                resolve,
                keys,
            )
            if fleet != last:
                last = fleet
                yield fleet
    finally:
        stop.set()


def _apply(
    state: dict[str, dict[str, Obj]], listed: set[str], event: str, kind: str, obj: Any
) -> None:
    if event == "RESET":
        state[kind] = {o["metadata"]["name"]: o for o in obj}
        listed.add(kind)
    elif event == "DELETED":
        state[kind].pop(obj["metadata"]["name"], None)
    else:
        state[kind][obj["metadata"]["name"]] = obj

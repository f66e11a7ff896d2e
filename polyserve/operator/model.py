"""The SLOTier custom resource (``polyserve.io/v1alpha1``) as pydantic models.

These models are the single source of the CRD's schema: ``polyserve.operator.crd`` generates
``crds/slotiers.polyserve.io.yaml`` from them (adding the CEL rules, subresources and printer
columns that JSON Schema cannot say) and a test keeps the committed file equal to the generated
one. Field names are camelCase in the API (``alias_generator=to_camel``) and snake_case in Python;
unknown fields are refused, as the API server's structural schema prunes them.

An SLOTier is one SLO class of one model: a TPOT/TTFT target, the engine that serves it (a
Deployment of vLLM pods), the replica bounds and who owns the replica count (the autoscaler, or
the user's fixed ``replicas.fixed`` when autoscaling is off).
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from polyserve.autoscale.settings import AutoscaleSettings

GROUP = "polyserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SLOTier"
PLURAL = "slotiers"
SINGULAR = "slotier"
SHORT_NAMES = ("slot", "tier")
CRD_NAME = f"{PLURAL}.{GROUP}"

#: A Kubernetes resource quantity ("1", "500m", "16Gi", "1e3"), as the API server parses them.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
#: The tier's Deployment and Service take the SLOTier's name: a DNS-1035 label.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 63
#: A Secret's name: a DNS-1123 subdomain.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

MAX_REPLICAS = 1000


class _Api(BaseModel):
    """camelCase in the API, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
    )


Quantity = int | Annotated[str, Field(pattern=QUANTITY_PATTERN)]
Replicas = Annotated[int, Field(ge=0, le=MAX_REPLICAS)]


# ------------------------------------------------------------------------------------------
# spec


class ReplicaBounds(_Api):
    """Replica bounds, and the fixed count when autoscaling is off (``kubectl scale`` sets it)."""

    min: Replicas = 1
    max: Annotated[int, Field(ge=1, le=MAX_REPLICAS)] = 1
    fixed: Replicas | None = None
    """The replica count when autoscaling is off; the scale subresource reads and writes it."""

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaBounds:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must be <= replicas.max ({self.max})")
        if self.fixed is not None and not self.min <= self.fixed <= self.max:
            raise ValueError(
                f"replicas.fixed ({self.fixed}) must lie within replicas.min..max "
                f"({self.min}..{self.max})"
            )
        return self


class SecretKeySelector(_Api):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    key: Annotated[str, Field(min_length=1, max_length=253)]
    optional: bool | None = None


class ConfigMapKeySelector(_Api):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    key: Annotated[str, Field(min_length=1, max_length=253)]
    optional: bool | None = None


class FieldSelector(_Api):
    field_path: Annotated[str, Field(min_length=1)]


class EnvVarSource(_Api):
    secret_key_ref: SecretKeySelector | None = None
    config_map_key_ref: ConfigMapKeySelector | None = None
    field_ref: FieldSelector | None = None


class EnvVar(_Api):
    name: Annotated[str, Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    value: str | None = None
    value_from: EnvVarSource | None = None


class SecretKeyRef(_Api):
    """One key of a Secret in the SLOTier's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
    """The Secret's name."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    """The key in the Secret's ``data``."""


class Resources(_Api):
    """Container resources; GPUs as ``nvidia.com/gpu`` in ``limits``."""

    limits: dict[str, Quantity] = Field(default_factory=dict)
    requests: dict[str, Quantity] = Field(default_factory=dict)


class Toleration(_Api):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class DynamicChunking(_Api):
    """PolyServe's dynamic chunking in the engine: while decodes run, each step's prefill is cut so that the step's predicted time (the profile's model) stays within a budget. The operator adds ``--scheduler-cls polyserve.vllm.scheduler.DynamicChunkScheduler`` to the engine args (unless ``engine.args`` sets ``--scheduler-cls``) and the ``POLYSERVE_PROFILE`` (or ``POLYSERVE_PROFILE_YAML``) and ``POLYSERVE_CHUNK_BUDGET_MS`` variables (unless ``engine.env`` names them). The engine image must have polyserve installed (``pip install 'polyserve[vllm]'``); the mock engine accepts the same flag and variables."""

    enabled: bool = False
    budget_ms: Annotated[float, Field(gt=0.0, le=60_000.0, allow_inf_nan=False)] | None = None
    """The step time budget in ms; unset: the tier's TPOT less the simulator's headroom (``polyserve.policy.checks.step_budget_ms``)."""


class EngineSpec(_Api):
    """The vLLM (or mock) engine container of every replica."""

    image: Annotated[str, Field(min_length=1, max_length=1024)]
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[str] = Field(default_factory=list)
    """The container's entrypoint; empty: the image's (vllm/vllm-openai: the API server)."""
    args: list[str] = Field(default_factory=list)
    """Engine arguments. The operator appends the flags it derives for the tier from the profile, TPOT and TTFT (``--max-num-batched-tokens``, ``--max-num-seqs``, ``--max-model-len``, ``--enable-chunked-prefill``, ``--long-prefill-token-threshold``, ``--scheduling-policy``: ``status.engineArgs`` shows them, ``status.engineReasons`` why), then ``--port`` and ``--served-model-name``. The user's flags win, flag by flag: a flag set here (``--flag value``, ``--flag=value``, ``--flag_name``, or ``--no-flag`` for a boolean) is not appended."""
    env: list[EnvVar] = Field(default_factory=list)
    api_key_secret_ref: SecretKeyRef | None = None
    """The engine's API key, a key of a Secret in the SLOTier's namespace. The operator sets the engine container's ``VLLM_API_KEY`` from it (``valueFrom.secretKeyRef``), so that vLLM answers ``/v1/*`` with 401 without the key; the router's discovery reads the same Secret and sends the key to the tier's engines as ``Authorization: Bearer``. The router's service account needs ``get`` on the Secret (chart value ``router.backendKeySecrets``); while the Secret or its key is missing, or its value has surrounding whitespace or a line break, the router uses none of the tier's engines. A changed key reaches the router at its next re-list (at most a minute); engines read it only at start (restart them, e.g. ``kubectl rollout restart``). vLLM takes ``--api-key`` before ``VLLM_API_KEY``: if ``engine.args`` carry ``--api-key`` or ``engine.env`` sets ``VLLM_API_KEY``, the engine uses that and the Secret is only the router's (they must agree)."""
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    termination_grace_period_seconds: Annotated[int, Field(ge=0, le=3600)] = 120
    """How long a deleted pod may take to finish its streams (the preStop sleep comes first)."""
    pre_stop_sleep_seconds: Annotated[int, Field(ge=0, le=600)] = 5
    """The pod keeps serving this long after deletion, while endpoints and the router catch up."""
    dynamic_chunking: DynamicChunking = Field(default_factory=DynamicChunking)

    @model_validator(mode="after")
    def _grace_covers_pre_stop(self) -> EngineSpec:
        if self.pre_stop_sleep_seconds > self.termination_grace_period_seconds:
            raise ValueError(
                "engine.preStopSleepSeconds must be <= engine.terminationGracePeriodSeconds"
            )
        return self


class ProfileRef(_Api):
    """The iteration-time profile: a shipped profile by name, or a profile YAML in a ConfigMap."""

    name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """A shipped profile (``polyserve profile list``)."""
    config_map_key_ref: ConfigMapKeySelector | None = None
    """A profile file stored in a ConfigMap of the SLOTier's namespace."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ProfileRef:
        if (self.name is None) == (self.config_map_key_ref is None):
            raise ValueError("profile needs exactly one of name or configMapKeyRef")
        return self


class SLOTierSpec(_Api):
    model: Annotated[str, Field(min_length=1, max_length=253)]
    """The served model name clients ask for (``--served-model-name`` of the engines)."""
    tpot_ms: Annotated[float, Field(ge=1.0, le=10_000.0, allow_inf_nan=False)]
    """The per-token latency target (deadline SLO: token i by arrival + TTFT + i * TPOT)."""
    ttft_ms: Annotated[float, Field(ge=1.0, le=600_000.0, allow_inf_nan=False)]
    """The first-token target, queueing at the router included."""
    replicas: ReplicaBounds = Field(default_factory=ReplicaBounds)
    autoscaling: AutoscaleSettings = Field(default_factory=AutoscaleSettings)
    engine: EngineSpec
    profile: ProfileRef
    on_deadline_miss: Literal["degrade", "reject"] = "reject"
    """A request that can no longer meet its TTFT even on an idle server: shed (429) or degrade."""
    drain_timeout_seconds: Annotated[int, Field(ge=0, le=86_400)] = 300
    """The longest a drain candidate may take to finish its streams before it is removed anyway."""

    @model_validator(mode="after")
    def _one_replica_owner(self) -> SLOTierSpec:
        if self.autoscaling.enabled and self.replicas.fixed is not None:
            raise ValueError(
                "replicas.fixed may be set only with autoscaling.enabled: false "
                "(the autoscaler owns the replica count otherwise)"
            )
        return self


# ------------------------------------------------------------------------------------------
# status


class ConditionType(enum.StrEnum):
    READY = "Ready"
    SCALING = "Scaling"
    DEGRADED = "Degraded"
    PROFILE_MISSING = "ProfileMissing"
    INVALID_SPEC = "InvalidSpec"


class Reason(enum.StrEnum):
    """Every condition reason the operator writes (CamelCase, as the API conventions ask)."""

    # Ready
    ALL_REPLICAS_READY = "AllReplicasReady"
    REPLICAS_NOT_READY = "ReplicasNotReady"
    NO_REPLICAS = "NoReplicas"
    # Scaling
    STABLE = "Stable"
    SCALING_UP = "ScalingUp"
    DRAINING = "Draining"
    SCALING_DOWN = "ScalingDown"
    # Degraded
    ATTAINMENT_MET = "AttainmentMet"
    ATTAINMENT_BELOW_TARGET = "AttainmentBelowTarget"
    NO_SIGNAL = "NoSignal"
    # ProfileMissing
    PROFILE_FOUND = "ProfileFound"
    PROFILE_NOT_FOUND = "ProfileNotFound"
    PROFILE_INVALID = "ProfileInvalid"
    # InvalidSpec
    SPEC_VALID = "SpecValid"
    SPEC_INVALID = "SpecInvalid"
    TPOT_UNATTAINABLE = "TPOTUnattainable"
    TTFT_UNATTAINABLE = "TTFTUnattainable"
    # any condition the operator could not evaluate (its dependency failed)
    SPEC_NOT_RECONCILED = "SpecNotReconciled"


class Condition(_Api):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: Reason
    message: Annotated[str, Field(max_length=32_768)] = ""
    last_transition_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    """RFC 3339, changes only when ``status`` changes."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None


class ScalingRecord(_Api):
    """The last replica change the operator decided (or carried out for the user)."""

    time: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    from_replicas: Replicas
    to_replicas: Replicas
    reason: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z][A-Za-z0-9]*$")]
    """Machine-readable (CamelCase), e.g. the autoscaler's decision reason or ``FixedReplicas``."""
    message: Annotated[str, Field(max_length=4096)] = ""


class SLOTierStatus(_Api):
    replicas: Replicas = 0
    """Pods of the tier's Deployment (the scale subresource's status.replicas)."""
    ready_replicas: Replicas = 0
    desired_replicas: Replicas | None = None
    """The replica count the owner (autoscaler or replicas.fixed) asks for."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    selector: str = ""
    """The label selector of the tier's pods, for the scale subresource (HPA)."""
    conditions: list[Condition] = Field(default_factory=list)
    last_scaling: ScalingRecord | None = None
    draining: list[str] = Field(default_factory=list)
    """Pods being drained for a scale-down."""
    attainment: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    """The fraction of the tier's recent requests that met their SLO, as the router sees it."""
    engine_args: list[str] = Field(default_factory=list)
    """The engine container's arguments as the operator renders them: ``engine.args``, then the derived flags the user did not set, then ``--port`` and ``--served-model-name`` if absent."""
    engine_reasons: dict[str, str] = Field(default_factory=dict)
    """Why each derived flag the operator appended has its value (flag -> one line)."""


class SLOTier(_Api):
    """A whole SLOTier object (metadata kept as the API serves it)."""

    api_version: Literal["polyserve.io/v1alpha1"] = "polyserve.io/v1alpha1"
    kind: Literal["SLOTier"] = "SLOTier"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: SLOTierSpec
    status: SLOTierStatus | None = None


def valid_tier_name(name: str) -> bool:
    return len(name) <= NAME_MAX and re.match(NAME_PATTERN, name) is not None

"""Every tunable of one tier's autoscaler, typed, bounded and validated in one settings object.

The SLOTier CRD embeds this model under ``spec.autoscaling`` (its schema is generated from the
model), so the fields are plain numbers and booleans with bounds, camelCase in manifests and
snake_case in Python. The tier's replica range is not here: it is the SLOTier's
``replicas: {min, max}``, given to the decision core next to these settings.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class AutoscaleSettings(BaseModel):
    """How one tier grows and shrinks. The defaults suit vLLM pods that start in about a minute."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )

    enabled: bool = Field(
        default=True,
        description="Scale this tier automatically; false leaves its replica count to people.",
    )
    decision_interval_s: float = Field(
        default=10.0,
        gt=0.0,
        le=600.0,
        allow_inf_nan=False,
        description="Seconds between two decisions for the tier.",
    )
    startup_s: float = Field(
        default=60.0,
        ge=0.0,
        le=3600.0,
        allow_inf_nan=False,
        description="Seconds a new engine takes from start request to serving (its readiness).",
    )
    scale_up_wait_s: float = Field(
        default=0.0,
        ge=0.0,
        le=600.0,
        allow_inf_nan=False,
        description="Scale up on pending requests only once the oldest has waited this long.",
    )
    shed_tolerance: float = Field(
        default=0.005,
        ge=0.0,
        le=0.5,
        allow_inf_nan=False,
        description="Requests shed for their deadline count as waiting (grow the tier, block a "
        "release) only above this fraction of the tier's arrivals over the trend window.",
    )
    scale_up_cooldown_s: float = Field(
        default=0.0,
        ge=0.0,
        le=3600.0,
        allow_inf_nan=False,
        description="Seconds after a scale-up before the tier may grow again on pending requests "
        "beyond what is already starting.",
    )
    scale_down_cooldown_s: float = Field(
        default=60.0,
        ge=0.0,
        le=3600.0,
        allow_inf_nan=False,
        description="Seconds after any change of the tier before it may shrink.",
    )
    drain_after_s: float = Field(
        default=60.0,
        ge=0.0,
        le=86400.0,
        allow_inf_nan=False,
        description="A server that has held none of the tier's requests this long may be released.",
    )
    consolidate_busy: bool = Field(
        default=True,
        description="When no server is idle but the others can carry the demand, drain the "
        "least loaded one (it takes no new requests and is released once empty).",
    )
    max_scale_up_step: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Most replicas one decision may add to the tier.",
    )
    max_scale_down_step: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Most replicas one decision may release from the tier.",
    )
    scale_ahead: bool = Field(
        default=True,
        description="Start engines ahead of need from the tier's arrival-rate trend and the "
        "profile's per-server capacity, looking one start-up time ahead.",
    )
    headroom: float = Field(
        default=1.2,
        ge=1.0,
        le=4.0,
        allow_inf_nan=False,
        description="Predicted demand is multiplied by this factor before it is turned into "
        "servers (1.0: exactly the fluid capacity).",
    )
    trend_window_s: float = Field(
        default=120.0,
        gt=0.0,
        le=3600.0,
        allow_inf_nan=False,
        description="Seconds of arrivals over which the rate and its trend are estimated.",
    )
    consolidation_utilization: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="A server is released only if the rest would run at or below this fraction "
        "of their capacity at the tier's TPOT.",
    )
    stale_after_s: float = Field(
        default=30.0,
        gt=0.0,
        le=3600.0,
        allow_inf_nan=False,
        description="Signals older than this are stale: the tier holds its replicas.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> AutoscaleSettings:
        if self.stale_after_s < self.decision_interval_s:
            raise ValueError(
                f"staleAfterS ({self.stale_after_s:g}) must be at least decisionIntervalS "
                f"({self.decision_interval_s:g}): signals read once per decision would look stale"
            )
        if self.scale_down_cooldown_s < self.scale_up_cooldown_s:
            raise ValueError(
                f"scaleDownCooldownS ({self.scale_down_cooldown_s:g}) must be at least "
                f"scaleUpCooldownS ({self.scale_up_cooldown_s:g}): shrink more slowly than you grow"
            )
        if self.trend_window_s < 2 * self.decision_interval_s:
            raise ValueError(
                f"trendWindowS ({self.trend_window_s:g}) must cover at least two decision "
                f"intervals ({2 * self.decision_interval_s:g} s) to show a trend"
            )
        return self

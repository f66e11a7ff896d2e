"""The local fleet behind ``polyserve up``: a small config file with defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from polyserve.policy.dispatch import DeadlineMiss
from polyserve.router.settings import read_model_file
from polyserve.router.spec import TierSpec

LOCAL_PROFILE = "llama-3.1-8b-a100"


class LocalTier(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    tpot_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    ttft_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    on_deadline_miss: DeadlineMiss = "reject"
    replicas: Annotated[int, Field(ge=0, le=64)] = 1  # engines at start
    min: Annotated[int, Field(ge=0, le=64)] = 0
    max: Annotated[int, Field(ge=1, le=64)] = 4

    @model_validator(mode="after")
    def _range(self) -> LocalTier:
        if not self.min <= self.replicas <= self.max:
            raise ValueError(
                f"tier {self.name!r}: need min <= replicas <= max, got {self.min}/{self.replicas}/{self.max}"
            )
        return self


class LocalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A100 engines: they fill up at request rates a 2-core laptop can drive, so the local fleet
    #: shows queueing, promotion and scaling without saturating the machine first.
    profile: str = LOCAL_PROFILE
    model: str | None = None  # default: the profile's model
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    policy: str = "polyserve"
    #: stock: the engines run stock vLLM's flags, derived per tier as the operator derives them;
    #: polyserve: plus PolyServe's dynamic chunking to the tier's step budget (an engine extension)
    engine: Literal["stock", "polyserve"] = "stock"
    autoscale: bool = True
    tiers: Annotated[list[LocalTier], Field(min_length=1)] = [
        LocalTier(name="t20", tpot_ms=20, ttft_ms=500, replicas=1, min=1, max=3),
        LocalTier(name="t50", tpot_ms=50, ttft_ms=1000, replicas=1, min=1, max=3),
        LocalTier(name="t100", tpot_ms=100, ttft_ms=2000, replicas=1, min=0, max=3),
    ]

    def tier_specs(self, model: str) -> list[TierSpec]:
        return [
            TierSpec(
                name=t.name,
                model=model,
                tpot_ms=t.tpot_ms,
                ttft_ms=t.ttft_ms,
                profile=self.profile,
                on_deadline_miss=t.on_deadline_miss,
            )
            for t in self.tiers
        ]


def load_local_config(path: Path | None) -> LocalConfig:
    return LocalConfig() if path is None else read_model_file(path, LocalConfig, "local fleet file")

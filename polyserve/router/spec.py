"""What the router is told about its tiers and backends, by a file, flags or Kubernetes discovery.

A *tier* is one SLO class of one model (an SLOTier in Kubernetes); a *backend* is one engine
server (a Ready pod of a tier's Deployment, or a URL from the static list). Discovery sources
produce whole snapshots (``FleetSpec``); the router reconciles its live state to each snapshot,
keeping the accounting of backends that stay.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from polyserve.policy.dispatch import DeadlineMiss
from polyserve.profile import DEFAULT_PROFILE

Ms = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # a DNS-1123 label, like Kubernetes names


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierSpec(_Spec):
    # the pattern is checked by _dns_label (with a readable message) and stated in the schema
    name: Annotated[
        str, Field(min_length=1, max_length=63, json_schema_extra={"pattern": NAME.pattern})
    ]
    model: Annotated[str, Field(min_length=1)]
    tpot_ms: Ms
    ttft_ms: Ms
    profile: str = DEFAULT_PROFILE  # a shipped profile name or a profile file path
    on_deadline_miss: DeadlineMiss = "reject"

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be lowercase letters, digits and '-' (a DNS-1123 label)")
        return v


class BackendSpec(_Spec):
    name: Annotated[str, Field(min_length=1)]
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]  # scheme://host:port, no path
    model: Annotated[str, Field(min_length=1)]
    #: the tier whose deployment runs it; None: a pool server any tier may claim while it is idle
    tier: str | None = None
    #: the engine runs ``--scheduling-policy priority``: the router forwards the tier as priority
    priority: bool = False
    #: the engine's ``--max-num-batched-tokens`` (None: the profile's); the admission checks
    #: predict its prefill chunks with it
    max_num_batched_tokens: Annotated[int, Field(gt=0)] | None = None
    #: the engine's ``--max-num-seqs`` (None: the profile's): no more requests run at once
    max_num_seqs: Annotated[int, Field(gt=0)] | None = None
    #: marked for removal: it gets no new requests and finishes what it has
    draining: bool = False
    #: the engine runs PolyServe's dynamic chunking with this step budget (0: stock vLLM's static
    #: token budget); the admission checks predict its prefill chunks with it
    chunk_budget_ms: Annotated[float, Field(ge=0.0, le=60_000.0, allow_inf_nan=False)] = 0.0
    #: the engine's ``--api-key`` (vLLM's ``VLLM_API_KEY``): sent as ``Authorization: Bearer`` on
    #: the requests the router forwards to it; a secret (masked in every dump and log)
    api_key: SecretStr | None = None


class FleetSpec(_Spec):
    tiers: list[TierSpec]
    backends: list[BackendSpec] = []

    @model_validator(mode="after")
    def _consistent(self) -> FleetSpec:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        by_name = {t.name: t for t in self.tiers}
        seen: set[str] = set()
        for b in self.backends:
            if b.name in seen:
                raise ValueError(f"backend name {b.name!r} is used twice")
            seen.add(b.name)
            if b.tier is not None:
                tier = by_name.get(b.tier)
                if tier is None:
                    raise ValueError(f"backend {b.name!r} names unknown tier {b.tier!r}")
                if tier.model != b.model:
                    raise ValueError(
                        f"backend {b.name!r} serves {b.model!r} but tier {b.tier!r} serves {tier.model!r}"
                    )
        return self

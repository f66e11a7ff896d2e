"""Every option of a mock engine process, typed and validated in one settings object."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from polyserve.engine import SLACK_SHARE, EngineConfig
from polyserve.profile import DEFAULT_PROFILE, Profile
from polyserve.vllm import SCHEDULER_CLASSES

PosInt = Annotated[int, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class MockEngineSettings(BaseModel):
    """Options of ``polyserve mock-engine`` (vLLM's names where vLLM has the option)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000  # 0: each engine picks a free port
    replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    #: vLLM's ``--data-parallel-size``: N engines behind one server (one port), each with its
    #: own KV cache and step loop, exported as ``engine="0"``..``"N-1"``
    data_parallel_size: Annotated[int, Field(ge=1, le=64)] = 1
    #: vLLM's ``--enable-request-id-headers``: answer ``X-Request-Id`` (off by default, as there)
    enable_request_id_headers: bool = False
    profile: str = DEFAULT_PROFILE
    #: vLLM's ``--model``: the mock has no weights (its timing is ``profile``); it names the
    #: served model when ``served_model_name`` is absent, as in vLLM
    model: str | None = None
    served_model_name: str | None = None
    max_model_len: PosInt | None = None
    max_num_seqs: PosInt | None = None
    max_num_batched_tokens: PosInt | None = None
    long_prefill_token_threshold: Annotated[int, Field(ge=0)] | None = None
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    kv_cache_tokens: PosInt | None = None
    #: vLLM V1 always chunks prefills, and so does the engine model: only ``True`` is accepted
    enable_chunked_prefill: bool = True
    #: PolyServe's dynamic chunking (an engine extension; 0: stock vLLM's static token budget):
    #: prefill chunks are cut so that a step with decodes stays within this many ms
    chunk_budget_ms: NonNegFloat = 0.0
    #: vLLM's ``--scheduler-cls``: only PolyServe's plugin (``polyserve.vllm.SCHEDULER_CLASSES``)
    #: is modelled; the CLI then takes ``chunk_budget_ms``/``slack_share`` from its variables
    scheduler_cls: str | None = None
    slack_share: Annotated[float, Field(ge=0.0, lt=1.0)] = SLACK_SHARE
    #: vLLM's ``--api-key`` (or ``VLLM_API_KEY``): ``/v1/*`` answers 401 without
    #: ``Authorization: Bearer <key>``; ``/health`` and ``/metrics`` stay open, as in vLLM
    api_key: SecretStr | None = None
    # fault knobs (off by default)
    startup_delay: NonNegFloat = 0.0
    crash_after_requests: Annotated[int, Field(ge=0)] | None = None
    crash_at: NonNegFloat | None = None
    slowdown: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    refuse_connections: bool = False
    #: ``/metrics`` answers 200 with bytes that are no Prometheus page
    metrics_garbage: bool = False
    #: ``/metrics`` sends its headers and part of the page, then never finishes
    metrics_hang: bool = False

    @model_validator(mode="before")
    @classmethod
    def _model_names_the_served_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("served_model_name") is None and data.get("model"):
            return {**data, "served_model_name": data["model"]}
        return data

    @model_validator(mode="after")
    def _chunked_prefill(self) -> MockEngineSettings:
        if not self.enable_chunked_prefill:
            raise ValueError(
                "--no-enable-chunked-prefill is not modelled: the engine model always chunks "
                "prefills (vLLM V1's default), so the mock would not time what it claims"
            )
        return self

    @model_validator(mode="after")
    def _scheduler_modelled(self) -> MockEngineSettings:
        if self.scheduler_cls is not None and self.scheduler_cls not in SCHEDULER_CLASSES:
            raise ValueError(
                f"--scheduler-cls {self.scheduler_cls} is not modelled: the mock engine runs "
                f"vLLM's scheduler, or PolyServe's plugin ({', '.join(SCHEDULER_CLASSES)})"
            )
        if self.scheduler_cls is not None and not self.chunk_budget_ms:
            raise ValueError("PolyServe's scheduler plugin needs a chunk budget > 0")
        return self

    @model_validator(mode="after")
    def _ports_fit(self) -> MockEngineSettings:
        if self.port and self.port + self.replicas - 1 > 65535:
            raise ValueError(
                f"ports {self.port}..{self.port + self.replicas - 1} do not fit below 65536"
            )
        return self

    def port_of(self, index: int) -> int:
        return self.port + index if self.port else 0

    def engine_config(self, profile: Profile) -> EngineConfig:
        """The engine's start-up arguments: the profile's, with this process's overrides.

        Raises ValueError (EngineError) for a configuration vLLM refuses to start with.
        """
        cfg = EngineConfig.from_profile(
            profile,
            kv_cache_tokens=self.kv_cache_tokens,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            long_prefill_token_threshold=self.long_prefill_token_threshold,
            scheduling_policy=self.scheduling_policy,
            chunk_budget_ms=self.chunk_budget_ms,
            slack_share=self.slack_share,
        )
        if cfg.max_model_len > cfg.num_blocks * cfg.block_size:
            raise ValueError(
                f"max_model_len ({cfg.max_model_len}) is larger than the KV cache "
                f"({cfg.num_blocks * cfg.block_size} tokens): vLLM refuses to start such an engine"
            )
        return cfg

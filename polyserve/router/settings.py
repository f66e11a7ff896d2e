"""Every option of the router, typed and validated in one settings object."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from polyserve.policy import check_policy_name
from polyserve.router.spec import FleetSpec

M = TypeVar("M", bound=BaseModel)
Seconds = Annotated[float, Field(gt=0.0, le=3600.0, allow_inf_nan=False)]


class RouterSettings(BaseModel):
    """Options of ``polyserve router``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    policy: str = "polyserve"
    #: refuse requests without a valid API key (off: every request may use every tier)
    auth: bool = True
    keys_file: Path | None = None
    #: bearer token for the fleet-changing admin API; None: the admin API is off
    admin_token: Annotated[str, Field(min_length=16)] | None = None
    #: requests queued in the router, all tiers together; beyond it new requests get 429
    queue_limit: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    #: largest request body accepted (413 beyond)
    max_body_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 8 * 1024 * 1024
    #: tries per request over different backends when one fails before its first byte
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    #: longest a request waits in the router's queue for a backend (then 503), whatever its tier's
    #: deadline rule: room for a scale-up, and a bound where no server can ever take it
    queue_timeout_s: Seconds = 300.0
    #: Retry-After of a 429
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 1
    connect_timeout_s: Seconds = 3.0
    #: longest silence from a backend (before the first byte, or between two stream chunks)
    read_timeout_s: Seconds = 300.0
    health_interval_s: Seconds = 2.0
    health_timeout_s: Seconds = 2.0
    scrape_interval_s: Seconds = 1.0
    #: a backend's metrics older than this no longer correct the accounting
    scrape_stale_s: Seconds = 10.0
    #: mean output length assumed per tier until requests have been seen
    output_prior: Annotated[float, Field(gt=0, le=1_000_000)] = 256.0
    log_prompts: bool = False

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        return check_policy_name(v)


class ConfigError(ValueError):
    """A router configuration file that cannot be used; the message names the file and field."""


def read_model_file(
    path: Path, model: type[M], what: str, prepare: Callable[[Any], Any] | None = None
) -> M:
    """A YAML or JSON file validated as ``model`` (after ``prepare``, which may raise
    ConfigError); errors name the file and each field."""
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: the {what} is not valid YAML/JSON: {e}") from None
    if prepare is not None:
        raw = prepare(raw)
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def load_fleet(path: Path, environ: Mapping[str, str] = os.environ) -> FleetSpec:
    """A fleet file: ``tiers:`` and optional static ``backends:``. A backend of an engine started
    with ``--api-key`` names where its key is, never the key itself: ``api_key_env: VAR`` (an
    environment variable) or ``api_key_file: PATH`` (relative to the fleet file; its text, without
    surrounding whitespace)."""

    def keys(raw: Any) -> Any:
        backends = raw.get("backends") if isinstance(raw, dict) else None
        if not isinstance(backends, list):
            return raw
        out = []
        for i, b in enumerate(backends):
            if isinstance(b, dict) and ("api_key_env" in b or "api_key_file" in b):
                b = {k: v for k, v in b.items() if k not in ("api_key_env", "api_key_file")}
                b["api_key"] = _backend_key(path, i, raw["backends"][i], environ)
            out.append(b)
        return {**raw, "backends": out}

    return read_model_file(path, FleetSpec, "fleet file", keys)


def _backend_key(path: Path, i: int, entry: dict[str, Any], environ: Mapping[str, str]) -> str:
    where = f"{path}: backends.{i}"
    if "api_key" in entry or ("api_key_env" in entry and "api_key_file" in entry):
        raise ConfigError(f"{where}: give one of api_key_env and api_key_file")
    if "api_key_env" in entry:
        key = environ.get(str(entry["api_key_env"]), "").strip()
        if not key:
            raise ConfigError(f"{where}.api_key_env: {entry['api_key_env']} is not set")
        return key
    return read_key_file(path.parent / str(entry["api_key_file"]), f"{where}.api_key_file")


def read_key_file(file: Path, where: str) -> str:
    """A backend key from a file: its text without surrounding whitespace, never empty."""
    try:
        key = file.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {file}: {e.strerror or e}") from None
    if not key:
        raise ConfigError(f"{where}: {file} is empty")
    return key

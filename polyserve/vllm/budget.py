"""The scheduler plugin's pure part: its settings (from the environment) and each step's token
budget from vLLM's running requests. No vLLM import: the requests are read by attribute, with the
names of vLLM 0.33.0's ``vllm.v1.request.Request``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import yaml

from polyserve.chunking import most_urgent_slack_ms, slack_aware_budget_ms, step_token_budget
from polyserve.engine import SLACK_SHARE
from polyserve.profile import Profile, ProfileError, load_profile, parse_profile
from polyserve.vllm import (
    ENV_CHUNK_BUDGET_MS,
    ENV_PROFILE,
    ENV_PROFILE_YAML,
    ENV_SLACK_SHARE,
    ENV_TPOT_MS,
    ENV_TTFT_MS,
)


class PluginConfigError(ValueError):
    """The plugin's environment is missing a setting or has a bad one."""


@dataclass(frozen=True, slots=True)
class PluginSettings:
    profile: Profile
    budget_ms: float
    slack_share: float = SLACK_SHARE
    #: the deadline SLO (both set, or neither: then no decode has a known deadline, as in the
    #: engine model, and the budget is ``budget_ms``)
    ttft_ms: float | None = None
    tpot_ms: float | None = None


def _number(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise PluginConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise PluginConfigError(f"{name}={raw!r} must be finite")
    return value


def _profile(env: Mapping[str, str]) -> Profile:
    name, text = env.get(ENV_PROFILE, "").strip(), env.get(ENV_PROFILE_YAML, "")
    if bool(name) == bool(text.strip()):
        raise PluginConfigError(
            f"set exactly one of {ENV_PROFILE} (a shipped profile name or a profile file) and "
            f"{ENV_PROFILE_YAML} (the profile's YAML): the budget is cut with its step-time model"
        )
    try:
        if name:
            return load_profile(name)
        return parse_profile(yaml.safe_load(text), ENV_PROFILE_YAML)
    except yaml.YAMLError as err:
        raise PluginConfigError(f"{ENV_PROFILE_YAML}: not valid YAML: {err}") from None
    except ProfileError as err:
        raise PluginConfigError(str(err)) from None


def chunk_settings_from_env(env: Mapping[str, str]) -> tuple[float, float]:
    """The step time budget (ms) and the slack share; the mock engine reads these alone."""
    budget = _number(env, ENV_CHUNK_BUDGET_MS)
    if budget is None or budget <= 0:
        raise PluginConfigError(
            f"{ENV_CHUNK_BUDGET_MS} must be a step time budget in ms > 0 "
            f"(got {env.get(ENV_CHUNK_BUDGET_MS)!r}); without the plugin vLLM runs its static budget"
        )
    share = _number(env, ENV_SLACK_SHARE)
    share = SLACK_SHARE if share is None else share
    if not 0 <= share < 1:
        raise PluginConfigError(f"{ENV_SLACK_SHARE} must be in [0, 1), got {share:g}")
    return budget, share


def settings_from_env(env: Mapping[str, str]) -> PluginSettings:
    """The plugin's settings (read once, when vLLM builds the scheduler); raises
    :class:`PluginConfigError` naming the variable at fault."""
    budget, share = chunk_settings_from_env(env)
    ttft, tpot = _number(env, ENV_TTFT_MS), _number(env, ENV_TPOT_MS)
    if (ttft is None) != (tpot is None):
        raise PluginConfigError(f"set both {ENV_TTFT_MS} and {ENV_TPOT_MS}, or neither")
    if ttft is not None and tpot is not None and (ttft < 0 or tpot <= 0):
        raise PluginConfigError(f"{ENV_TTFT_MS} must be >= 0 and {ENV_TPOT_MS} > 0")
    return PluginSettings(_profile(env), budget, share, ttft, tpot)


class RunningRequest(Protocol):
    """What the budget reads of a running ``vllm.v1.request.Request``."""

    @property
    def num_computed_tokens(self) -> int: ...
    @property
    def num_tokens_with_spec(self) -> int: ...
    @property
    def num_output_placeholders(self) -> int: ...  # async scheduling: outputs in flight
    @property
    def num_output_tokens(self) -> int: ...
    @property
    def spec_token_ids(self) -> list[int]: ...
    @property
    def arrival_time(self) -> float: ...  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class StepLoad:
    """The running requests as the budget rule sees them."""

    decode_tokens: int  # one per decode (plus its draft tokens with speculative decoding)
    decode_ctx: int  # context tokens the decodes attend to in this step
    prefill_past: int  # tokens already computed of the first running partial prefill (0: none)
    decodes: tuple[tuple[float, int], ...]  # (arrival, index of the token this step emits)


def step_load(running: Iterable[RunningRequest]) -> StepLoad:
    """Split vLLM's running requests into decodes and partial prefills. A request's tokens to
    schedule are vLLM's own count (``num_tokens_with_spec + num_output_placeholders -
    num_computed_tokens``, ``Scheduler.schedule``); one token (plus drafts) is a decode."""
    tokens = ctx = 0
    past: int | None = None
    decodes: list[tuple[float, int]] = []
    for r in running:
        pending = r.num_tokens_with_spec + r.num_output_placeholders - r.num_computed_tokens
        if pending <= 0:
            continue  # nothing to schedule this step (async: its last token is in flight)
        if pending <= 1 + len(r.spec_token_ids):
            tokens += pending
            ctx += r.num_computed_tokens + pending
            decodes.append((r.arrival_time, r.num_output_tokens + r.num_output_placeholders))
        elif past is None:
            past = r.num_computed_tokens
    return StepLoad(tokens, ctx, past or 0, tuple(decodes))


def plugin_step_budget(
    settings: PluginSettings,
    running: Iterable[RunningRequest],
    max_tokens: int,
    block_size: int,
    now: float,
) -> int:
    """This step's ``max_num_scheduled_tokens``: the decodes' tokens plus the prefill that keeps
    the step within the (slack-aware) time budget, never above ``max_tokens`` (the configured
    budget, which sizes vLLM's buffers and CUDA graphs) and never below one block of prefill."""
    load = step_load(running)
    slack = 0.0  # no known deadline: nothing to bank, as in the engine model
    if settings.ttft_ms is not None and settings.tpot_ms is not None and load.decodes:
        slack = most_urgent_slack_ms(now, load.decodes, settings.ttft_ms, settings.tpot_ms)
    budget_ms = slack_aware_budget_ms(settings.budget_ms, settings.slack_share, slack)
    return step_token_budget(
        settings.profile,
        budget_ms,
        load.decode_tokens,
        load.decode_ctx,
        load.prefill_past,
        max_tokens,
        block_size,
    )

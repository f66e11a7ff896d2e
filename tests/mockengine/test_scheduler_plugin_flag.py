"""The mock engine takes vLLM's --scheduler-cls with PolyServe's plugin (and its variables), and
then runs dynamic chunking, so that a Deployment's args run on the mock as on vLLM."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from polyserve.engine import Engine, Request
from polyserve.mockengine.cli import parse_args
from polyserve.profile import load_profile
from polyserve.vllm import SCHEDULER_CLS, SYNC_SCHEDULER_CLS
from polyserve.vllm.budget import PluginConfigError

PROFILE = load_profile("llama-3.1-8b-h100")
ENV = {"POLYSERVE_PROFILE": "llama-3.1-8b-h100", "POLYSERVE_CHUNK_BUDGET_MS": "15"}


@pytest.mark.parametrize("cls", [SCHEDULER_CLS, SYNC_SCHEDULER_CLS])
def test_the_plugin_flag_turns_on_dynamic_chunking_from_its_variables(cls: str) -> None:
    s = parse_args(["--scheduler-cls", cls], ENV | {"POLYSERVE_SLACK_SHARE": "0.25"})
    cfg = s.engine_config(PROFILE)
    assert (s.scheduler_cls, cfg.chunk_budget_ms, cfg.slack_share) == (cls, 15.0, 0.25)
    # and the engine then cuts: a long prompt next to a decode gets a chunk within 15 ms
    eng = Engine(PROFILE, cfg)
    eng.add(Request("a", 40, 50))
    eng.step()
    eng.add(Request("b", 8000, 5))
    res = eng.step()
    assert res.n_decode == 1 and 0 < res.prefill_tokens < cfg.max_num_batched_tokens - 1
    assert res.duration_ms <= 15.0
    assert parse_args([]).engine_config(PROFILE).chunk_budget_ms == 0.0  # stock without it


def test_another_scheduler_class_is_refused() -> None:
    with pytest.raises(ValidationError, match="not modelled"):
        parse_args(["--scheduler-cls", "my.Scheduler"], ENV)


@pytest.mark.parametrize(
    ("args", "env", "match"),
    [
        (["--scheduler-cls", SCHEDULER_CLS], {}, "POLYSERVE_CHUNK_BUDGET_MS"),
        (["--scheduler-cls", SCHEDULER_CLS], ENV | {"POLYSERVE_SLACK_SHARE": "2"}, r"\[0, 1\)"),
        (["--scheduler-cls", SCHEDULER_CLS, "--chunk-budget-ms", "9"], ENV, "give one"),
    ],
)
def test_bad_plugin_settings_are_refused(args: list[str], env: dict[str, str], match: str) -> None:
    with pytest.raises(PluginConfigError, match=match):
        parse_args(args, env)


def test_the_profile_variable_is_the_mocks_profile_unless_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLYSERVE_PROFILE", "some-profile")
    assert parse_args([]).profile == "some-profile"
    assert parse_args(["--profile", "llama-3.1-8b-h100"]).profile == "llama-3.1-8b-h100"

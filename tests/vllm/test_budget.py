"""The scheduler plugin's pure part (polyserve.vllm.budget): runs without vLLM."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from polyserve.chunking import step_token_budget
from polyserve.profile import PROFILE_DIR, load_profile
from polyserve.vllm.budget import (
    PluginConfigError,
    PluginSettings,
    plugin_step_budget,
    settings_from_env,
    step_load,
)

PROFILE = load_profile("llama-3.1-8b-h100")
BS = 16


@dataclass
class FakeRequest:
    """The attributes of vllm.v1.request.Request the budget reads."""

    num_prompt_tokens: int
    num_computed_tokens: int
    num_output_tokens: int = 0
    num_output_placeholders: int = 0
    spec_token_ids: list[int] = field(default_factory=list)
    arrival_time: float = 0.0

    @property
    def num_tokens_with_spec(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens + len(self.spec_token_ids)


def decode(
    prompt: int, out: int = 3, in_flight: int = 0, drafts: int = 0, arrival: float = 0.0
) -> FakeRequest:
    """A decoding request as vLLM holds it: every token but the last sampled one computed (and,
    with async scheduling, ``in_flight`` more scheduled whose outputs are not back yet)."""
    return FakeRequest(prompt, prompt + out + in_flight - 1, out, in_flight, [-1] * drafts, arrival)


def test_the_package_imports_without_vllm_and_only_the_scheduler_needs_it() -> None:
    code = (
        "import sys; sys.modules['vllm'] = None\n"  # vLLM absent, whether installed or not
        "import polyserve.vllm, polyserve.vllm.budget, polyserve.operator.resources\n"
        "import polyserve.mockengine.cli\n"
        "try:\n    import polyserve.vllm.scheduler\nexcept ImportError:\n    print('needs vllm')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "needs vllm"


def test_settings_from_env() -> None:
    env = {"POLYSERVE_PROFILE": "llama-3.1-8b-h100", "POLYSERVE_CHUNK_BUDGET_MS": "42.5"}
    s = settings_from_env(env)
    assert (s.profile, s.budget_ms, s.slack_share, s.ttft_ms, s.tpot_ms) == (
        PROFILE,
        42.5,
        0.5,
        None,
        None,
    )
    s = settings_from_env(
        env | {"POLYSERVE_SLACK_SHARE": "0", "POLYSERVE_TTFT_MS": "500", "POLYSERVE_TPOT_MS": "50"}
    )
    assert (s.slack_share, s.ttft_ms, s.tpot_ms) == (0.0, 500.0, 50.0)
    path = PROFILE_DIR / "llama-3.1-8b-h100.yaml"
    assert settings_from_env({**env, "POLYSERVE_PROFILE": str(path)}).profile == PROFILE
    yaml_env = {"POLYSERVE_PROFILE_YAML": path.read_text(), "POLYSERVE_CHUNK_BUDGET_MS": "9"}
    assert settings_from_env(yaml_env).profile == PROFILE


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"POLYSERVE_CHUNK_BUDGET_MS": "10"}, "POLYSERVE_PROFILE"),
        ({"POLYSERVE_PROFILE": "nope", "POLYSERVE_CHUNK_BUDGET_MS": "10"}, "no profile 'nope'"),
        ({"POLYSERVE_PROFILE_YAML": "a: [", "POLYSERVE_CHUNK_BUDGET_MS": "10"}, "not valid YAML"),
        (
            {"POLYSERVE_PROFILE_YAML": "name: x", "POLYSERVE_CHUNK_BUDGET_MS": "10"},
            "invalid profile",
        ),
        ({"POLYSERVE_PROFILE": "llama-3.1-8b-h100"}, "POLYSERVE_CHUNK_BUDGET_MS"),
        ({"POLYSERVE_PROFILE": "llama-3.1-8b-h100", "POLYSERVE_CHUNK_BUDGET_MS": "0"}, "> 0"),
        (
            {"POLYSERVE_PROFILE": "llama-3.1-8b-h100", "POLYSERVE_CHUNK_BUDGET_MS": "ten"},
            "not a number",
        ),
        ({"POLYSERVE_PROFILE": "llama-3.1-8b-h100", "POLYSERVE_CHUNK_BUDGET_MS": "inf"}, "finite"),
        (
            {
                "POLYSERVE_PROFILE": "llama-3.1-8b-h100",
                "POLYSERVE_CHUNK_BUDGET_MS": "5",
                "POLYSERVE_SLACK_SHARE": "1",
            },
            "[0, 1)",
        ),
        (
            {
                "POLYSERVE_PROFILE": "llama-3.1-8b-h100",
                "POLYSERVE_CHUNK_BUDGET_MS": "5",
                "POLYSERVE_TPOT_MS": "50",
            },
            "both",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(PluginConfigError, match=None) as err:
        settings_from_env(env)
    assert names in str(err.value)


def test_both_profile_variables_are_refused() -> None:
    env = {
        "POLYSERVE_PROFILE": "llama-3.1-8b-h100",
        "POLYSERVE_PROFILE_YAML": "x: 1",
        "POLYSERVE_CHUNK_BUDGET_MS": "5",
    }
    with pytest.raises(PluginConfigError, match="exactly one"):
        settings_from_env(env)


def test_step_load_splits_decodes_from_prefills_as_vllm_counts_tokens() -> None:
    running = [
        decode(999, out=3),  # computed 1001: 1 token over 1002 of context
        FakeRequest(3000, 1024),  # partial prefill: the first one's past is 1024
        decode(500, out=2, in_flight=1),  # async: 1 output in flight, still 1 token to schedule
        FakeRequest(200, 200, 0, 1),  # its prefill is done and its first token in flight
        FakeRequest(50, 10),  # a second partial prefill: not the first
        decode(800, out=5, drafts=2),  # speculative: 1 + 2 draft tokens
        FakeRequest(100, 105, 3, 2),  # all scheduled, outputs in flight: nothing to schedule
    ]
    load = step_load(running)
    assert load.decode_tokens == 1 + 1 + 1 + 3
    assert load.decode_ctx == 1002 + 503 + 201 + (804 + 3)
    assert load.prefill_past == 1024
    # (arrival, the index of the token this step emits: after those already out or in flight)
    assert load.decodes == ((0.0, 3), (0.0, 3), (0.0, 1), (0.0, 5))


def test_the_step_budget_is_the_one_rule_capped_by_the_configured_budget() -> None:
    s = PluginSettings(PROFILE, 20.0)
    running = [decode(1997) for _ in range(16)] + [FakeRequest(5000, 512)]
    got = plugin_step_budget(s, running, 8192, BS, now=0.0)
    assert got == step_token_budget(PROFILE, 20.0, 16, 16 * 2000, 512, 8192, BS)
    assert 16 + BS <= got < 8192  # cut, but a block of prefill remains
    assert PROFILE.step_ms(16, 16 * 2000, got - 16, (got - 16) * (512 + got - 16)) <= 20.0
    # no decodes: the configured budget (nobody's TPOT to protect)
    assert plugin_step_budget(s, [FakeRequest(5000, 0)], 2048, BS, 0.0) == 2048
    # a budget that fits everything stays the configured one, never above
    assert plugin_step_budget(PluginSettings(PROFILE, 10_000.0), running, 1024, BS, 0.0) == 1024


def test_banked_slack_raises_the_budget_only_with_the_deadline_slo() -> None:
    running = [decode(1997, out=3, arrival=100.0) for _ in range(16)] + [FakeRequest(5000, 0)]
    plain = PluginSettings(PROFILE, 20.0)
    slo = PluginSettings(PROFILE, 20.0, 0.5, ttft_ms=1000.0, tpot_ms=50.0)
    # token 3 is due at 100 + 1.15 s; at 100.2 s the slack is 950 ms, half of it usable
    now = 100.2
    base = plugin_step_budget(plain, running, 8192, BS, now)
    raised = plugin_step_budget(slo, running, 8192, BS, now)
    assert raised == step_token_budget(PROFILE, 475.0, 16, 32000, 0, 8192, BS) > base
    late = plugin_step_budget(slo, running, 8192, BS, now=102.0)
    assert late == base  # past the deadline: the plain budget, never less

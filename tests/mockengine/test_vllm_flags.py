"""The mock engine takes the flags a vLLM Deployment carries, and they time it as in vLLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from polyserve.mockengine.cli import parse_args
from polyserve.operator import resources as r
from polyserve.operator.model import SLOTier
from polyserve.profile import load_profile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "slotiers.yaml"


def _with_profile(args: list[str], profile: str) -> list[str]:
    """The Deployment's args with ``--model M`` replaced by ``--profile`` (no weights)."""
    i = args.index("--model")
    return [*args[:i], "--profile", profile, *args[i + 2 :]]


@pytest.mark.parametrize("doc", [d for d in yaml.safe_load_all(EXAMPLES.read_text()) if d])
def test_an_example_deployments_args_run_the_mock_with_the_derived_engine(
    doc: dict[str, object],
) -> None:
    tier = SLOTier.model_validate(doc)
    name = tier.spec.profile.name
    assert name is not None
    profile = load_profile(name)
    derived = r.tier_engine(tier.spec, profile)
    dep = r.desired_deployment("t", "ns", "u", tier.spec, 1, derived)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert set(derived.vllm_args()) <= set(args)  # the examples leave every derived flag to us

    settings = parse_args(_with_profile(args, name))
    assert settings.engine_config(profile) == derived.engine_config(profile)
    assert settings.served_model_name == tier.spec.model
    assert settings.port == tier.spec.engine.port
    assert settings.chunk_budget_ms == 0.0  # stock vLLM unless asked


def test_model_names_the_served_model_unless_a_served_name_is_given() -> None:
    assert parse_args(["--model", "org/m"]).served_model_name == "org/m"
    assert parse_args(["--model", "org/m", "--served-model-name", "m"]).served_model_name == "m"
    assert parse_args([]).served_model_name is None  # the server falls back to the profile's


def test_timing_flags_change_the_engine_config() -> None:
    profile = load_profile("llama-3.1-8b-h100")
    stock = parse_args([]).engine_config(profile)
    cfg = parse_args(
        [
            "--max-num-batched-tokens=512",
            "--max-num-seqs",
            "64",
            "--max-model-len",
            "4096",
            "--long-prefill-token-threshold",
            "256",
            "--scheduling-policy",
            "priority",
            "--enable-chunked-prefill",
        ]
    ).engine_config(profile)
    assert (cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.max_model_len) == (512, 64, 4096)
    assert (cfg.long_prefill_token_threshold, cfg.scheduling_policy) == (256, "priority")
    assert stock.max_num_batched_tokens == profile.max_num_batched_tokens


def test_no_chunked_prefill_is_refused_not_ignored() -> None:
    with pytest.raises(ValidationError, match="no-enable-chunked-prefill"):
        parse_args(["--no-enable-chunked-prefill"])


def test_an_unknown_flag_is_refused() -> None:
    with pytest.raises(Exception, match="No such option: --no-such-flag"):  # click's UsageError
        parse_args(["--no-such-flag", "1"])

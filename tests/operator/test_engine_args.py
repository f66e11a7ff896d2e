"""The engine flags the operator derives for a tier, and the user's flags winning over them."""

from __future__ import annotations

from typing import Any

from polyserve.operator import resources as r
from polyserve.operator.model import SLOTierSpec
from polyserve.operator.plan import StatusInput, build_status
from polyserve.profile import load_profile
from polyserve.tier_engine import derive_tier_engine
from tests.operator.manifests import slotier

PROFILE = load_profile("llama-3.1-8b-h100")


def spec(args: list[str], **over: Any) -> SLOTierSpec:
    return SLOTierSpec.model_validate(slotier(engine={"args": args}, **over)["spec"])


def test_the_derived_flags_follow_the_users_and_precede_port_and_name() -> None:
    s = spec(["--model", "m"], tpotMs=30, ttftMs=800)
    derived = r.tier_engine(s, PROFILE)
    assert derived == derive_tier_engine(PROFILE, 30, 800, shared=r.SHARED_SERVERS)
    args = r.engine_args(s, derived)
    assert args == [
        "--model",
        "m",
        *derived.vllm_args(),
        "--port",
        str(s.engine.port),
        "--served-model-name",
        s.model,
    ]
    assert r.uses_priority_scheduling(args)  # every tier's servers may take promoted requests
    # every flag appended says why; a flag left off (not in the args) is not listed
    assert r.derived_reasons(s, derived) == {
        f: why for f, why in derived.reasons.items() if f in derived.vllm_args()
    }


def test_a_flag_the_user_set_is_not_added() -> None:
    user = ["--max-num-seqs=8", "--max-num-batched-tokens", "1024", "--scheduling-policy", "fcfs"]
    s = spec(user)
    derived = r.tier_engine(s, PROFILE)
    args = r.engine_args(s, derived)
    assert args[: len(user)] == user
    rest = args[len(user) :]
    for flag in ("--max-num-seqs", "--max-num-batched-tokens", "--scheduling-policy"):
        assert flag not in rest
    assert "--max-model-len" in rest and "--enable-chunked-prefill" in rest
    assert not r.uses_priority_scheduling(args)
    reasons = r.derived_reasons(s, derived)
    assert "--max-num-seqs" not in reasons and "--max-model-len" in reasons


def test_the_status_shows_the_engine_args_and_why() -> None:
    s = spec([])
    derived = r.tier_engine(s, PROFILE)
    dep = r.desired_deployment("chat", "ns", "u", s, 1, derived)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    status = build_status(
        StatusInput(
            generation=1,
            selector="s",
            engine_args=tuple(r.engine_args(s, derived)),
            engine_reasons=r.derived_reasons(s, derived),
        ),
        "T",
    )
    dumped = status.model_dump(by_alias=True, mode="json")
    assert dumped["engineArgs"] == args
    assert set(dumped["engineReasons"]) == {a for a in derived.vllm_args() if a.startswith("--")}

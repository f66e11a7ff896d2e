from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyserve.engine import Engine, EngineConfig, EngineError, Phase, Request
from polyserve.profile import Profile
from tests.conftest import make_profile


def run_to_completion(engine: Engine, max_steps: int = 200_000) -> list[Request]:
    finished: list[Request] = []
    now = 0.0
    for _ in range(max_steps):
        if not engine.has_work:
            return finished
        res = engine.step(now)
        finished.extend(res.finished)
        now = res.end
    raise AssertionError("engine did not drain")


def test_single_request_hand_computed(flat_profile: Profile) -> None:
    eng = Engine(flat_profile)
    req = Request("a", prompt_tokens=32, output_tokens=4)
    eng.add(req)
    done = run_to_completion(eng)
    assert done == [req]
    # prefill in step 0 emits token 0 at 10 ms; three decode steps follow
    assert eng.token_times(req) == pytest.approx([0.010, 0.020, 0.030, 0.040])
    assert req.phase is Phase.FINISHED and req.finish_step == 3
    assert eng.free_blocks == eng.config.num_blocks
    assert eng.prompt_tokens_total == 32 and eng.generation_tokens_total == 4


def test_chunked_prefill_respects_budget(flat_profile: Profile) -> None:
    cfg = EngineConfig.from_profile(flat_profile, max_num_batched_tokens=256, max_num_seqs=16)
    eng = Engine(flat_profile, cfg)
    eng.add(Request("long", prompt_tokens=600, output_tokens=2))
    steps = []
    while eng.has_work:
        steps.append(eng.step(len(steps) * 0.01))
    assert [s.prefill_tokens for s in steps] == [256, 256, 88, 0]
    assert [s.n_decode for s in steps] == [0, 0, 0, 1]
    assert [len(s.first_tokens) for s in steps] == [0, 0, 1, 0]


def test_step_time_matches_profile(profile: Profile) -> None:
    eng = Engine(profile)
    eng.add(Request("a", prompt_tokens=100, output_tokens=3))
    eng.add(Request("b", prompt_tokens=50, output_tokens=3))
    first = eng.step(0.0)
    assert first.prefill_tokens == 150
    assert first.duration_ms == pytest.approx(profile.step_ms(0, 0, 150, 100 * 100 + 50 * 50))
    second = eng.step(first.end)
    # both decode: contexts 101 and 51 (prompt + the token being computed)
    assert second.n_decode == 2 and second.decode_ctx == 101 + 51
    assert second.duration_ms == pytest.approx(profile.step_ms(2, 152))


def test_preemption_recomputes_and_still_delivers_every_token() -> None:
    prof = make_profile(kv_cache_tokens=64, block_size=16, max_model_len=64)
    eng = Engine(prof)
    a, b = Request("a", 20, 30), Request("b", 20, 30)
    eng.add(a)
    eng.add(b)
    done = run_to_completion(eng)
    assert {r.rid for r in done} == {"a", "b"}
    assert eng.preemptions_total >= 1
    assert b.preemptions >= 1 and a.preemptions == 0  # fcfs preempts the last admitted
    for r in (a, b):
        assert len(eng.token_times(r)) == 30
    assert eng.free_blocks == eng.config.num_blocks


def test_abort_frees_kv(profile: Profile) -> None:
    eng = Engine(profile)
    eng.add(Request("a", 100, 50))
    eng.add(Request("b", 100, 50))
    now = 0.0
    for _ in range(5):
        now = eng.step(now).end
    before = eng.used_blocks
    aborted = eng.abort("a")
    assert aborted is not None and aborted.phase is Phase.ABORTED
    assert eng.used_blocks < before
    assert eng.abort("a") is None
    run_to_completion(eng)
    assert eng.used_blocks == 0


def test_refusals_match_vllm(profile: Profile) -> None:
    eng = Engine(profile)
    with pytest.raises(EngineError, match="maximum context length"):
        eng.add(Request("x", profile.max_model_len, 10))
    with pytest.raises(EngineError, match="priority scheduling is not enabled"):
        eng.add(Request("y", 10, 10, priority=1))
    eng.add(Request("z", 10, 10))
    with pytest.raises(EngineError, match="duplicate"):
        eng.add(Request("z", 10, 10))


def test_priority_policy_serves_lower_priority_value_first(flat_profile: Profile) -> None:
    cfg = EngineConfig.from_profile(flat_profile, max_num_seqs=1, scheduling_policy="priority")
    eng = Engine(flat_profile, cfg)
    eng.add(Request("late", 10, 1, priority=5))
    eng.add(Request("urgent", 10, 1, priority=0))
    order = [r.rid for r in run_to_completion(eng)]
    assert order == ["urgent", "late"]


def test_max_num_seqs_caps_running(flat_profile: Profile) -> None:
    cfg = EngineConfig.from_profile(flat_profile, max_num_seqs=3)
    eng = Engine(flat_profile, cfg)
    for i in range(10):
        eng.add(Request(i, 8, 5))
    res = eng.step(0.0)
    assert eng.num_running == 3 and eng.num_waiting == 7
    assert res.prefill_tokens == 24


def test_engine_config_refuses_budget_below_seqs(profile: Profile) -> None:
    with pytest.raises(EngineError, match="max_num_batched_tokens"):
        EngineConfig.from_profile(profile, max_num_batched_tokens=100, max_num_seqs=200)


# ------------------------------------------------------------------------------- properties

request_st = st.tuples(
    st.integers(1, 300),  # prompt
    st.integers(1, 120),  # output
    st.integers(0, 6),  # arrival step
    st.integers(0, 3),  # priority
)


@settings(max_examples=150, deadline=None)
@given(
    reqs=st.lists(request_st, min_size=1, max_size=25),
    kv_blocks=st.integers(26, 120),
    block_size=st.sampled_from([1, 4, 16]),
    budget=st.integers(16, 512),
    max_seqs=st.integers(1, 16),
    threshold=st.sampled_from([0, 0, 32, 100]),
    policy=st.sampled_from(["fcfs", "priority"]),
    chunk_budget=st.sampled_from([0.0, 0.0, 9.0, 12.0, 30.0]),
    abort_at=st.one_of(st.none(), st.tuples(st.integers(0, 24), st.integers(0, 40))),
)
def test_engine_invariants(
    reqs: list[tuple[int, int, int, int]],
    kv_blocks: int,
    block_size: int,
    budget: int,
    max_seqs: int,
    threshold: int,
    policy: str,
    chunk_budget: float,
    abort_at: tuple[int, int] | None,
) -> None:
    kv = kv_blocks * block_size
    max_len = min(kv, 420)
    prof = make_profile(kv_cache_tokens=kv, block_size=block_size, max_model_len=max_len)
    cfg = EngineConfig.from_profile(
        prof,
        max_num_batched_tokens=max(budget, max_seqs),
        max_num_seqs=max_seqs,
        long_prefill_token_threshold=threshold,
        scheduling_policy=policy,  # type: ignore[arg-type]
        chunk_budget_ms=chunk_budget,
    )
    eng = Engine(prof, cfg)
    by_step: dict[int, list[Request]] = {}
    for i, (p0, o0, at, pr) in enumerate(reqs):
        p = min(p0, max_len - 1)
        o = min(o0, max_len - p)
        by_step.setdefault(at, []).append(
            Request(i, p, o, priority=pr if policy == "priority" else 0)
        )
    added: list[Request] = []
    emitted: dict[int, int] = {}
    finished: list[Request] = []
    aborted: set[int] = set()
    now, last_duration_per_step = 0.0, []
    for step in range(20_000):
        for r in by_step.pop(step, []):
            eng.add(r)
            added.append(r)
        if abort_at is not None and step == abort_at[1] and abort_at[0] < len(added):
            victim = added[abort_at[0]]
            if eng.abort(victim.rid) is not None:
                aborted.add(int(victim.rid))  # type: ignore[call-overload]
        if not eng.has_work and not by_step:
            break
        res = eng.step(now, collect_emitted=True)
        # the token budget is never exceeded, KV never over capacity
        assert res.tokens <= cfg.max_num_batched_tokens
        assert 0 <= eng.free_blocks <= cfg.num_blocks
        assert eng.num_running <= cfg.max_num_seqs
        # per-request block accounting adds up to what the engine says is used
        held = sum(-(-eng.context_tokens(r) // block_size) for r in eng.running.values())
        assert held == eng.used_blocks
        assert res.emitted is not None
        ids = [r.rid for r in res.emitted]
        assert len(ids) == len(set(ids))  # at most one token per request per step
        for r in res.emitted:
            emitted[int(r.rid)] = emitted.get(int(r.rid), 0) + 1  # type: ignore[call-overload]
        finished.extend(res.finished)
        last_duration_per_step.append(res.duration_ms)
        now = res.end if res.duration_ms else now + 0.001
    else:
        raise AssertionError("did not drain")
    fin_ids = [int(r.rid) for r in finished]  # type: ignore[call-overload]
    assert len(fin_ids) == len(set(fin_ids)), "a request finished twice"
    assert set(fin_ids) | aborted == set(range(len(reqs))), "a request was lost"
    assert not (set(fin_ids) & aborted)
    for r in finished:
        assert emitted[int(r.rid)] == r.output_tokens  # type: ignore[call-overload]
        times = eng.token_times(r)
        assert len(times) == r.output_tokens
        assert times == sorted(times)
    assert eng.used_blocks == 0


@settings(max_examples=300, deadline=None)
@given(
    coef=st.tuples(
        *[st.floats(0, 20)] * 3, st.floats(0, 0.2), st.floats(0, 1e-3), st.floats(0, 1e-5)
    ),
    n=st.integers(0, 500),
    ctx=st.integers(0, 2_000_000),
    new_ctx=st.integers(1, 100_000),
    prefill=st.integers(0, 4096),
)
def test_step_time_never_decreases_when_a_decode_is_added(
    coef: tuple[float, ...], n: int, ctx: int, new_ctx: int, prefill: int
) -> None:
    prof = make_profile(
        overhead_ms=coef[0],
        linear_floor_ms=coef[1],
        linear_base_ms=coef[2],
        linear_per_token_ms=coef[3],
        decode_attn_per_ctx_token_ms=coef[4],
        prefill_attn_per_pair_ms=coef[5],
    )
    pairs = prefill * prefill
    assert prof.step_ms(n + 1, ctx + new_ctx, prefill, pairs) >= prof.step_ms(
        n, ctx, prefill, pairs
    )


def test_runs_are_deterministic(profile: Profile) -> None:
    def trace() -> list[tuple[int, float, int]]:
        eng = Engine(make_profile(kv_cache_tokens=2000, max_model_len=1000))
        for i in range(40):
            eng.add(Request(i, 50 + 7 * i % 300, 20 + 13 * i % 90))
        out, now = [], 0.0
        while eng.has_work:
            r = eng.step(now)
            out.append((r.tokens, r.duration_ms, len(r.preempted)))
            now = r.end
        return out

    assert trace() == trace()


def test_dynamic_chunk_keeps_steps_within_budget_while_decodes_run(profile: Profile) -> None:
    cfg = EngineConfig.from_profile(profile, chunk_budget_ms=14.0)
    eng = Engine(profile, cfg)
    for i in range(8):
        eng.add(Request(f"d{i}", 64, 200))
    now = eng.step(0.0).end  # all eight prefill together: no decodes yet, nothing to protect
    eng.add(Request("long", 2000, 5))
    steps = []
    while eng.requests.get("long") is not None and eng.requests["long"].first_token_step < 0:
        res = eng.step(now)
        steps.append(res)
        now = res.end
    assert len(steps) > 1  # the long prompt was cut into several chunks
    for res in steps:
        assert res.n_decode == 8
        # within budget, unless the chunk was already down to one block
        assert res.duration_ms <= 14.0 or res.prefill_tokens <= profile.block_size


def _slack_run(profile: Profile, first_deadline: float) -> tuple[list[float], list[Request]]:
    """Eight decodes with deadlines, then a long prompt: the step times and the decodes."""
    cfg = EngineConfig.from_profile(profile, chunk_budget_ms=14.0)
    eng = Engine(profile, cfg)
    decodes = [
        Request(f"d{i}", 64, 200, first_deadline=first_deadline, tpot_ms=20.0) for i in range(8)
    ]
    for r in decodes:
        eng.add(r)
    now = eng.step(0.0).end
    eng.add(Request("long", 2000, 5))
    durations = []
    while eng.requests.get("long") is not None and eng.requests["long"].first_token_step < 0:
        res = eng.step(now)
        durations.append(res.duration_ms)
        now = res.end
    run_to_completion(eng)
    return durations, decodes


def test_slack_aware_chunking_spends_banked_slack_but_meets_every_deadline(
    profile: Profile,
) -> None:
    tight, _ = _slack_run(profile, first_deadline=0.05)  # little slack: the 14 ms budget holds
    loose, _ = _slack_run(profile, first_deadline=1.0)  # ~1 s banked: bigger chunks
    assert max(tight) <= 20.0
    assert len(loose) < len(tight)  # the long prompt is prefilled in fewer, bigger steps
    assert max(loose) > 14.0
    # a step with decodes never runs past the most urgent decode's deadline
    cfg = EngineConfig.from_profile(profile, chunk_budget_ms=14.0)
    eng = Engine(profile, cfg)
    for i in range(8):
        eng.add(Request(f"d{i}", 64, 200, first_deadline=1.0, tpot_ms=20.0))
    now = eng.step(0.0).end
    eng.add(Request("long", 4000, 5))
    while eng.has_work:
        slack = eng.decode_slack_ms(now)
        res = eng.step(now)
        if res.n_decode:
            assert res.duration_ms <= max(slack, 14.0 + 1e-9)
        now = res.end


def test_decodes_without_deadlines_are_never_outrun(profile: Profile) -> None:
    cfg = EngineConfig.from_profile(profile, chunk_budget_ms=14.0)
    eng = Engine(profile, cfg)
    eng.add(Request("known", 64, 200, first_deadline=10.0, tpot_ms=20.0))
    eng.add(Request("unknown", 64, 200))
    now = eng.step(0.0).end
    assert eng.decode_slack_ms(now) == 0.0
    eng.add(Request("long", 2000, 5))
    while eng.requests["long"].first_token_step < 0:
        res = eng.step(now)
        assert res.duration_ms <= 14.0 or res.prefill_tokens <= profile.block_size
        now = res.end

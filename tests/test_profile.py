from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from polyserve.profile import (
    ProfileError,
    StepSample,
    fit_iteration_model,
    load_profile,
    predict,
    read_step_csv,
)
from tests.conftest import make_profile


def write(tmp_path: Path, data: object, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def valid_data() -> dict[str, object]:
    return make_profile().model_dump(mode="json")


def test_roundtrip_and_lookup(tmp_path: Path) -> None:
    path = write(tmp_path, valid_data())
    assert load_profile(path) == make_profile()
    with pytest.raises(ProfileError, match="not a shipped profile"):
        load_profile("no-such-profile")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("kv_cache_tokens"), "kv_cache_tokens: Field required"),
        (lambda d: d.update(max_num_seqs=-3), "max_num_seqs: Input should be greater than 0"),
        (lambda d: d["iteration"].update(linear_floor_ms="fast"), "iteration.linear_floor_ms"),
        (
            lambda d: d["iteration"].update(decode_attn_per_ctx_token_ms=-1.0),
            "decode_attn_per_ctx_token_ms",
        ),
        (lambda d: d.update(colour="blue"), "colour: Extra inputs are not permitted"),
        (lambda d: d.update(max_model_len=10**9), "exceeds the KV cache"),
    ],
)
def test_bad_files_name_the_file_and_field(tmp_path: Path, mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    data = valid_data()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_unreadable_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(path)
    path.write_text("- a list\n")
    with pytest.raises(ProfileError, match="must be a mapping"):
        load_profile(path)


def test_capacity_helpers() -> None:
    p = make_profile(max_num_seqs=256, kv_cache_tokens=1_000_000)
    b = p.max_decode_batch(30.0, 1000)
    assert 0 < b < 256
    assert p.step_ms(b, b * 1000) <= 30.0 < p.step_ms(b + 1, (b + 1) * 1000)
    assert p.max_decode_batch(1.0, 1000) == 0  # even one request is too slow
    assert p.max_decode_batch(10_000.0, 1000) == 256  # max_num_seqs-bound
    assert p.max_decode_batch(10_000.0, 10_000) == 100  # KV-bound: 1M tokens / 10k
    c = p.max_prefill_chunk(40.0, n_decode=10, decode_ctx=10_000, past_tokens=0, limit=2048)
    assert p.step_ms(10, 10_000, c, c * c) <= 40.0 < p.step_ms(10, 10_000, c + 1, (c + 1) ** 2)


def test_fit_recovers_a_known_model(tmp_path: Path) -> None:
    truth = make_profile().iteration
    samples = []
    for n in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        for ctx in (0, 500, 2000):
            for pre in (0, 128, 512, 1024):
                if n + pre == 0:
                    continue
                ms = truth.step_ms(n, n * ctx, pre, pre * pre)
                samples.append(StepSample(n, n * ctx, pre, pre * pre, ms))
    model, err = fit_iteration_model(samples)
    assert err.max_pct < 1.0
    assert model.linear_per_token_ms == pytest.approx(truth.linear_per_token_ms, rel=0.02)
    assert model.decode_attn_per_ctx_token_ms == pytest.approx(
        truth.decode_attn_per_ctx_token_ms, rel=0.05
    )
    # the CSV route gives the same fit
    csv = tmp_path / "m.csv"
    csv.write_text(
        "decode_batch,decode_context_tokens,prefill_tokens,step_ms\n"
        + "".join(f"{s.n_decode},{s.decode_ctx},{s.prefill_tokens},{s.ms}\n" for s in samples)
    )
    again, _ = fit_iteration_model(read_step_csv(csv))
    assert predict(again, samples[:5]) == pytest.approx(predict(model, samples[:5]), rel=1e-6)


def test_step_csv_errors(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("decode_batch,step_ms\n1,2\n")
    with pytest.raises(ProfileError, match="missing column"):
        read_step_csv(csv)
    csv.write_text("decode_batch,decode_context_tokens,prefill_tokens,step_ms\n1,2,3,abc\n")
    with pytest.raises(ProfileError, match=r"m.csv:2: bad number"):
        read_step_csv(csv)

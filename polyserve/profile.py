"""Iteration-time profiles: one file per (model, GPU, tensor-parallel degree).

A profile holds an engine's static limits (KV-cache capacity, block size, max_num_seqs,
max_num_batched_tokens, max_model_len) and an iteration-time model of one engine step::

    t = overhead
        + max(linear_floor, linear_base + linear_per_token * batched_tokens)   # non-attention layers
        + decode_attn_per_ctx_token * sum(decode context tokens)              # KV reads of decodes
        + prefill_attn_per_pair * sum(chunk * (past + chunk))                 # prefill attention

``batched_tokens`` is every token in the step (one per decode plus the prefill chunks). The floor is
the small-batch regime where the weights are read once per step whatever the batch; past the knee the
linear layers are compute bound. A prefill chunk of ``chunk`` tokens whose request already has
``past`` tokens in the KV cache attends over ``chunk * (past + chunk)`` token pairs (``chunk**2`` for
a first chunk; the causal half is folded into the coefficient).

Profiles are YAML, validated with pydantic (unknown fields are refused). ``load_profile`` takes a
shipped profile name or a path; a bad file raises :class:`ProfileError` naming the file and field.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILE_DIR = Path(__file__).parent / "data" / "profiles"
#: The shipped profile a tier or an engine uses when none is named.
DEFAULT_PROFILE = "llama-3.1-8b-h100"
#: Where the measured source data of the shipped profiles lives (a checkout, not an installed wheel).
MEASURED_DIR = Path(__file__).resolve().parent.parent / "profiles" / "measured"

NonNeg = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
PosInt = Annotated[int, Field(gt=0)]


class ProfileError(ValueError):
    """A profile that cannot be found, read or validated."""


class IterationModel(BaseModel):
    """Coefficients of the step-time model, all in milliseconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    overhead_ms: NonNeg = 0.0
    linear_floor_ms: NonNeg
    linear_base_ms: NonNeg
    linear_per_token_ms: NonNeg
    decode_attn_per_ctx_token_ms: NonNeg
    prefill_attn_per_pair_ms: NonNeg

    def linear_ms(self, batched_tokens: float) -> float:
        """The non-attention layers for a step of ``batched_tokens`` tokens."""
        return max(
            self.linear_floor_ms, self.linear_base_ms + self.linear_per_token_ms * batched_tokens
        )

    def step_ms(
        self, n_decode: int, decode_ctx: float, prefill_tokens: int = 0, prefill_pairs: float = 0.0
    ) -> float:
        """Predicted duration of one step; 0 for an empty step."""
        tokens = n_decode + prefill_tokens
        if tokens <= 0:
            return 0.0
        return (
            self.overhead_ms
            + self.linear_ms(tokens)
            + self.decode_attn_per_ctx_token_ms * decode_ctx
            + self.prefill_attn_per_pair_ms * prefill_pairs
        )


class ValidationSource(BaseModel):
    """Measured points a profile's linear-layer term is checked against.

    The source is a Vidur per-layer profile (one row per token count and TP degree, per-op times in
    ms for ONE layer). The reference time at ``n`` tokens is
    ``scale * layers * sum(median of ops)``; ``scale`` carries a documented transfer (another GPU
    or model) and is 1.0 for a direct measurement.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    tensor_parallel: PosInt = 1
    layers: PosInt
    scale: Annotated[float, Field(gt=0.0)] = 1.0
    extra_ms: NonNeg = 0.0
    max_tokens: PosInt = 8192
    stated_median_error_pct: NonNeg
    stated_max_error_pct: NonNeg


class Profile(BaseModel):
    """An engine's limits and iteration-time model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    gpu: str = Field(min_length=1)
    tensor_parallel: PosInt = 1
    kv_cache_tokens: PosInt
    block_size: PosInt = 16
    max_num_seqs: PosInt
    max_num_batched_tokens: PosInt
    max_model_len: PosInt
    iteration: IterationModel
    validation: list[ValidationSource] = Field(default_factory=list)
    provenance: str = ""

    @model_validator(mode="after")
    def _limits_consistent(self) -> Profile:
        if self.kv_cache_tokens < self.block_size:
            raise ValueError("kv_cache_tokens must hold at least one block")
        if self.max_model_len > self.kv_cache_tokens:
            raise ValueError(
                f"max_model_len ({self.max_model_len}) exceeds the KV cache ({self.kv_cache_tokens} tokens):"
                " vLLM refuses to start such an engine"
            )
        return self

    @property
    def gpus(self) -> int:
        """GPUs per instance (cost weight of one instance-second)."""
        return self.tensor_parallel

    @cached_property
    def kv_blocks(self) -> int:
        return self.kv_cache_tokens // self.block_size

    def step_ms(
        self, n_decode: int, decode_ctx: float, prefill_tokens: int = 0, prefill_pairs: float = 0.0
    ) -> float:
        return self.iteration.step_ms(n_decode, decode_ctx, prefill_tokens, prefill_pairs)

    def max_decode_batch(self, tpot_ms: float, context_tokens: float) -> int:
        """Largest decode batch whose step stays within ``tpot_ms`` at ``context_tokens`` each.

        Bounded by max_num_seqs and the KV cache; 0 when even one request is too slow.
        """
        kv_cap = int(self.kv_cache_tokens // max(context_tokens, 1.0))
        hi = min(self.max_num_seqs, kv_cap)
        if hi < 1 or self.step_ms(1, context_tokens) > tpot_ms:
            return 0
        lo = 1  # feasible; the step time is monotone in the batch
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.step_ms(mid, mid * context_tokens) <= tpot_ms:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def max_prefill_chunk(
        self,
        budget_ms: float,
        n_decode: int,
        decode_ctx: float,
        past_tokens: int,
        limit: int,
        prefill_tokens: int = 0,
        prefill_pairs: float = 0.0,
    ) -> int:
        """Largest chunk (<= ``limit``) of one prefill that keeps the step within ``budget_ms``.

        ``prefill_tokens``/``prefill_pairs`` are other chunks already in the same step.
        """
        if limit <= 0:
            return 0

        def fits(c: int) -> bool:
            return (
                self.step_ms(
                    n_decode, decode_ctx, prefill_tokens + c, prefill_pairs + c * (past_tokens + c)
                )
                <= budget_ms
            )

        if not fits(1):
            return 0
        lo, hi = 1, limit
        if fits(hi):
            return hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def prefill_ms(
        self, prompt_tokens: int, chunk: int, n_decode: int = 0, decode_ctx: float = 0.0
    ) -> float:
        """Time to prefill ``prompt_tokens`` in chunks of ``chunk`` tokens, each step also running
        ``n_decode`` decodes over ``decode_ctx`` tokens of context (0: the prompt alone).

        Closed form (the step time is linear in attention pairs): ``full`` whole chunks, chunk k
        attending to ``chunk * (k + 1) * chunk`` pairs, then the remainder.
        """
        chunk = max(1, min(chunk, self.max_num_batched_tokens))
        full, rest = divmod(max(0, prompt_tokens), chunk)
        total = full * self.step_ms(n_decode, decode_ctx, chunk, 0.0)
        total += self.iteration.prefill_attn_per_pair_ms * chunk * chunk * full * (full + 1) / 2
        if rest:
            total += self.step_ms(n_decode, decode_ctx, rest, rest * (full * chunk + rest))
        return total


# --------------------------------------------------------------------------------------------
# Loading


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid profile"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def available_profiles() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def parse_profile(data: object, source: str) -> Profile:
    """Validate already-parsed profile data; ``source`` names it in errors."""
    if not isinstance(data, dict):
        raise ProfileError(
            f"{source}: a profile must be a mapping of fields, got {type(data).__name__}"
        )
    try:
        return Profile.model_validate(data)
    except ValidationError as err:
        raise ProfileError(_format_validation_error(source, err)) from None


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a shipped profile by name, or any profile file by path."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = PROFILE_DIR / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise ProfileError(
                f"no profile {str(name_or_path)!r}: not a file, and not a shipped profile "
                f"(shipped: {', '.join(available_profiles()) or 'none'})"
            )
        path = shipped
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ProfileError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from None
    return parse_profile(data, str(path))


# --------------------------------------------------------------------------------------------
# Measured points and fitting


@dataclass(frozen=True, slots=True)
class StepSample:
    """One measured engine step."""

    n_decode: int
    decode_ctx: float
    prefill_tokens: int
    prefill_pairs: float
    ms: float

    @property
    def tokens(self) -> int:
        return self.n_decode + self.prefill_tokens


@dataclass(frozen=True, slots=True)
class FitError:
    """How far a model's predictions are from measured steps (percent of the measured time)."""

    n: int
    median_pct: float
    p90_pct: float
    max_pct: float
    rmse_ms: float

    def __str__(self) -> str:
        return (
            f"{self.n} points: median {self.median_pct:.1f}%, p90 {self.p90_pct:.1f}%, "
            f"max {self.max_pct:.1f}%, RMSE {self.rmse_ms:.3f} ms"
        )


def prediction_error(predicted: Sequence[float], measured: Sequence[float]) -> FitError:
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if p.size == 0:
        raise ProfileError("no measured points to compare with")
    rel = np.abs(p - m) / np.maximum(m, 1e-9) * 100.0
    return FitError(
        n=int(p.size),
        median_pct=float(np.median(rel)),
        p90_pct=float(np.percentile(rel, 90)),
        max_pct=float(rel.max()),
        rmse_ms=float(np.sqrt(np.mean((p - m) ** 2))),
    )


REQUIRED_COLUMNS = ("decode_batch", "decode_context_tokens", "prefill_tokens", "step_ms")


def read_step_csv(path: str | Path) -> list[StepSample]:
    """Read measured steps. Columns: decode_batch, decode_context_tokens, prefill_tokens, step_ms,
    and optionally prefill_pairs (sum of chunk*(past+chunk); prefill_tokens**2 when absent, which
    is exact for a single first chunk)."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ProfileError(
                    f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(header)})"
                )
            rows = list(reader)
    except OSError as err:
        raise ProfileError(f"{path}: cannot read: {err.strerror}") from None
    samples: list[StepSample] = []
    for lineno, row in enumerate(rows, start=2):
        try:
            n_dec = int(row["decode_batch"])
            ctx = float(row["decode_context_tokens"])
            pre = int(row["prefill_tokens"])
            pairs_raw = row.get("prefill_pairs")
            pairs = float(pairs_raw) if pairs_raw not in (None, "") else float(pre) ** 2
            ms = float(row["step_ms"])
        except (TypeError, ValueError) as err:
            raise ProfileError(f"{path}:{lineno}: bad number: {err}") from None
        values = (n_dec, ctx, pre, pairs, ms)
        if any(not math.isfinite(v) or v < 0 for v in values) or ms <= 0 or n_dec + pre <= 0:
            raise ProfileError(
                f"{path}:{lineno}: counts must be >= 0 with at least one token, step_ms > 0; got {row}"
            )
        samples.append(StepSample(n_dec, ctx, pre, pairs, ms))
    if len(samples) < 4:
        raise ProfileError(f"{path}: need at least 4 measured steps to fit, got {len(samples)}")
    return samples


def predict(model: IterationModel, samples: Iterable[StepSample]) -> list[float]:
    return [
        model.step_ms(s.n_decode, s.decode_ctx, s.prefill_tokens, s.prefill_pairs) for s in samples
    ]


def _nonneg_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients (drop negative columns and refit; tiny NNLS)."""
    active = np.ones(x.shape[1], dtype=bool)
    coef = np.zeros(x.shape[1])
    for _ in range(x.shape[1]):
        sol, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        coef[:] = 0.0
        coef[active] = sol
        if (sol >= 0).all():
            break
        active[np.flatnonzero(active)[sol < 0]] = False
    return coef


def fit_iteration_model(samples: Sequence[StepSample]) -> tuple[IterationModel, FitError]:
    """Fit the step-time model by least squares.

    The floor/linear knee is found by trying each distinct token count as the knee and keeping the
    least-squares best; the fixed overhead is folded into the floor and the base (they are not
    separately identifiable from step times alone).
    """
    if len(samples) < 4:
        raise ProfileError(f"need at least 4 measured steps to fit, got {len(samples)}")
    tokens = np.array([s.tokens for s in samples], dtype=np.float64)
    ctx = np.array([s.decode_ctx for s in samples], dtype=np.float64)
    pairs = np.array([s.prefill_pairs for s in samples], dtype=np.float64)
    y = np.array([s.ms for s in samples], dtype=np.float64)
    knees = np.unique(tokens)
    candidates = np.concatenate(([knees[0] - 1], knees[:-1]))
    best: tuple[float, np.ndarray, float] | None = None
    for knee in candidates:
        low = tokens <= knee
        x = np.column_stack([low, ~low, np.where(low, 0.0, tokens), ctx, pairs]).astype(np.float64)
        coef = _nonneg_lstsq(x, y)
        sse = float(np.sum((x @ coef - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, coef, float(knee))
    assert best is not None
    _, coef, knee = best
    floor, base, per_tok, c_ctx, c_pairs = (float(v) for v in coef)
    if not (tokens <= knee).any():
        floor = 0.0
    model = IterationModel(
        linear_floor_ms=floor,
        linear_base_ms=base,
        linear_per_token_ms=per_tok,
        decode_attn_per_ctx_token_ms=c_ctx,
        prefill_attn_per_pair_ms=c_pairs,
    )
    return model, prediction_error(predict(model, samples), y.tolist())


# --------------------------------------------------------------------------------------------
# Vidur per-layer measurements (the source of the shipped profiles' linear-layer terms)

VIDUR_OPS = (
    "emb",
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)


def read_vidur_layer_ms(path: str | Path, tensor_parallel: int = 1) -> dict[int, float]:
    """Median time of one layer's non-attention ops (ms) by token count, from a Vidur mlp.csv.

    Where a token count appears in several rows, their medians are averaged.
    """
    path = Path(path)
    sums: dict[int, list[float]] = {}
    try:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if int(row["num_tensor_parallel_workers"]) != tensor_parallel:
                    continue
                total = sum(float(row[f"time_stats.{op}.median"] or 0.0) for op in VIDUR_OPS)
                sums.setdefault(int(row["num_tokens"]), []).append(total)
    except (OSError, KeyError, ValueError) as err:
        raise ProfileError(f"{path}: not a Vidur mlp profile: {err}") from None
    if not sums:
        raise ProfileError(f"{path}: no rows for tensor_parallel={tensor_parallel}")
    return {n: float(np.mean(v)) for n, v in sorted(sums.items())}


def check_against_source(
    profile: Profile, source: ValidationSource, root: Path = MEASURED_DIR
) -> FitError:
    """Compare the profile's linear-layer term with the measured points it was derived from."""
    measured = read_vidur_layer_ms(root / source.file, source.tensor_parallel)
    points = [(n, ms) for n, ms in measured.items() if n <= source.max_tokens]
    ref = [source.scale * source.layers * ms + source.extra_ms for _, ms in points]
    pred = [profile.iteration.linear_ms(n) for n, _ in points]
    return prediction_error(pred, ref)


# ------------------------------------------------------------------ fluid capacity


def tier_capacity(
    profile: Profile, tpot_ms: float, prompts: np.ndarray, outputs: np.ndarray
) -> float:
    """Requests/s one server sustains with every step within ``tpot_ms``: the fluid capacity.

    ``prompts`` and ``outputs`` are the tier's request lengths. For each step time up to the TPOT
    the largest rate whose step (by Little's law: decodes, prefill tokens and context per step)
    and KV fit is found by bisection; the best over the step times is returned.
    ``polyserve.sim.optimal`` derives the fluid bound from it, the autoscaler its per-server
    capacity.
    """
    return max(
        _capacity_at(profile, tau_ms, prompts, outputs)
        for tau_ms in np.linspace(tpot_ms / 20, tpot_ms, 40)
    )


def _capacity_at(
    profile: Profile, tau_ms: float, prompts: np.ndarray, outputs: np.ndarray
) -> float:
    tau = tau_ms / 1000.0
    e_out = float(outputs.mean())
    e_prompt = float(prompts.mean())
    ctx_per_decode = float(((prompts + outputs / 2.0) * outputs).mean()) / e_out
    e_p2_half = float((prompts.astype(np.float64) ** 2).mean()) / 2.0
    kv_per_rate = tau * float(((prompts + outputs) * outputs).mean())

    def fits(lam: float) -> bool:
        n = lam * e_out * tau
        if n > profile.max_num_seqs or lam * kv_per_rate > profile.kv_cache_tokens:
            return False
        p = lam * e_prompt * tau
        step = profile.step_ms(
            int(np.ceil(n)) if n > 0 else 0,
            n * ctx_per_decode,
            int(np.ceil(p)),
            lam * tau * e_p2_half,
        )
        return step <= tau_ms

    lo, hi = 0.0, 1.0
    if not fits(1e-6):
        return 0.0
    while fits(hi):
        lo, hi = hi, hi * 2.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo

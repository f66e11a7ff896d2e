"""Derive the shipped iteration-time profiles from measured per-layer data.

Run from the repository root::

    .venv/bin/python profiles/derive.py          # rewrite polyserve/data/profiles/*.yaml
    .venv/bin/python profiles/derive.py --check  # write nothing; exit 1 if a file is stale

Sources: Vidur's measured per-layer times of the non-attention ops (profiles/measured/, see
/work/shared/data/PROVENANCE.md) for Llama-3-8B on A100 and Llama-2-7B on A100 and H100. Everything
not measured there (attention, LM head, all-reduce, KV capacity) is a roofline from the model shape
and spec-sheet numbers, with the efficiencies stated below. profiles/README.md explains each step.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from polyserve.profile import (  # noqa: E402
    MEASURED_DIR,
    PROFILE_DIR,
    VIDUR_OPS,
    FitError,
    Profile,
    check_against_source,
    parse_profile,
    prediction_error,
    read_vidur_layer_ms,
)

GIB = 1024**3
MIB = 1024**2

# ---------------------------------------------------------------------------------------------
# Spec sheets and efficiencies


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: float  # total device memory as nvidia-smi reports it
    hbm_bytes_per_s: float  # spec-sheet HBM bandwidth
    bf16_flops: float  # spec-sheet dense BF16 tensor-core FLOP/s
    nvlink_bytes_per_s: (
        float  # NVLink bandwidth per GPU and direction (half the bidirectional figure)
    )


A100 = Gpu("A100-SXM4-80GB", 81920 * MIB, 2.039e12, 312e12, 300e9)  # NVLink3: 600 GB/s bidir
H100 = Gpu("H100-SXM5-80GB", 81559 * MIB, 3.35e12, 989e12, 450e9)  # NVLink4: 900 GB/s bidir
H200 = Gpu("H200-SXM-141GB", 143771 * MIB, 4.8e12, 989e12, 450e9)  # NVLink4: 900 GB/s bidir

#: Fraction of spec HBM bandwidth that memory-bound kernels reach. The Vidur points themselves say
#: 0.70: one Llama-3-8B layer (436 MB of bf16 weights) takes 0.306 ms at 1 token on A100
#: (1.43 TB/s), one Llama-2-7B layer (405 MB) 0.177 ms on H100 (2.29 TB/s). Used for decode
#: attention (paged KV reads) and the LM head.
HBM_EFF = 0.70
#: Fraction of spec BF16 FLOP/s that prefill attention reaches. FlashAttention-2/-3 report 60-75% of
#: peak in their own forward benchmarks; vLLM's varlen, paged, chunked prefill reaches less.
ATTN_FLOP_EFF = 0.50
#: Per-step CPU cost outside the GPU kernels Vidur timed: scheduler, input preparation, sampling,
#: kernel-launch gaps. Calibrated (one value for every profile) so that the small-batch decode step
#: lands inside the published ranges (H100 10-15 ms, A100 15-25 ms for an 8B model).
OVERHEAD_MS = 6.0
#: One NVLink all-reduce: a fixed latency plus a ring transfer of 2(p-1)/p of the message at this
#: fraction of the per-direction NVLink bandwidth.
ALLREDUCE_LATENCY_MS = 0.010
ALLREDUCE_BW_EFF = 0.80
#: vLLM's default --gpu-memory-utilization and the memory outside PyTorch's allocator that its
#: profiling run charges (cuBLAS workspaces; NCCL and custom all-reduce buffers at TP > 1).
GPU_MEMORY_UTILIZATION = 0.90
NON_TORCH_GIB_TP1 = 1.0
NON_TORCH_GIB_TPN = 1.5
BLOCK_SIZE = 16
LLAMA31_MAX_MODEL_LEN = 131072

# ---------------------------------------------------------------------------------------------
# Model shapes


@dataclass(frozen=True)
class Model:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    def op_shapes(self, tp: int) -> dict[str, tuple[float, float]]:
        """Per-GPU (in, out) dimensions of one decoder layer's GEMMs, by Vidur op name."""
        q = self.heads * self.head_dim
        qkv = (self.heads + 2 * self.kv_heads) * self.head_dim
        return {
            "attn_pre_proj": (self.hidden, qkv / tp),
            "attn_post_proj": (q / tp, self.hidden),
            "mlp_up_proj": (self.hidden, 2 * self.intermediate / tp),  # gate and up, fused
            "mlp_down_proj": (self.intermediate / tp, self.hidden),
        }

    def op_params(self, tp: int) -> dict[str, float]:
        """Per-GPU weights of one decoder layer's GEMMs, by Vidur op name."""
        return {op: k * n for op, (k, n) in self.op_shapes(tp).items()}

    def layer_params(self, tp: int) -> float:
        return sum(self.op_params(tp).values())

    def total_params(self) -> float:
        norms = (2 * self.layers + 1) * self.hidden
        return self.layers * self.layer_params(1) + 2 * self.vocab * self.hidden + norms

    def op_ratio(self, other: Model, tp: int, other_tp: int) -> dict[str, float]:
        """Per-op work of this model's layer shard relative to ``other``'s (per-op transfer)."""
        mine, theirs = self.op_params(tp), other.op_params(other_tp)
        ratio = {op: mine[op] / theirs[op] for op in mine}
        hidden = self.hidden / other.hidden  # unsharded elementwise ops over the hidden state
        for op in ("emb", "input_layernorm", "post_attention_layernorm", "add"):
            ratio[op] = hidden
        ratio["mlp_act"] = (self.intermediate / tp) / (other.intermediate / other_tp)
        ratio["attn_rope"] = ((self.heads + self.kv_heads) / tp) / (
            (other.heads + other.kv_heads) / other_tp
        )
        return ratio

    def kv_bytes_per_token(self, tp: int) -> float:
        """bf16 K and V of one token, all layers, on one GPU."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2 / tp

    def attn_flops_per_pair(self, tp: int) -> float:
        """QK^T and PV over one (query, key) pair, all layers, on one GPU, halved for causality."""
        return 4 * self.layers * self.heads * self.head_dim / 2 / tp


LLAMA31_8B = Model("meta-llama/Llama-3.1-8B-Instruct", 32, 4096, 32, 8, 128, 14336, 128256)
LLAMA2_7B = Model("meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 128, 11008, 32000)
LLAMA31_70B = Model("meta-llama/Llama-3.1-70B-Instruct", 80, 8192, 64, 8, 128, 28672, 128256)

SRC_A100_L3 = "vidur_a100_Meta-Llama-3-8B_mlp.csv"
SRC_A100_L2 = "vidur_a100_Llama-2-7b-hf_mlp.csv"
SRC_H100_L2 = "vidur_h100_Llama-2-7b-hf_mlp.csv"


def layer_ms(file: str, tp: int) -> dict[int, float]:
    return read_vidur_layer_ms(MEASURED_DIR / file, tp)


def layer_ops_ms(file: str, tp: int) -> dict[int, dict[str, float]]:
    """Median time of each op by token count (rows of one token count averaged)."""
    acc: dict[int, list[dict[str, float]]] = {}
    with (MEASURED_DIR / file).open(newline="") as fh:
        for row in csv.DictReader(fh):
            if int(row["num_tensor_parallel_workers"]) != tp:
                continue
            ops = {op: float(row[f"time_stats.{op}.median"] or 0.0) for op in VIDUR_OPS}
            acc.setdefault(int(row["num_tokens"]), []).append(ops)
    return {
        n: {op: float(np.mean([r[op] for r in rows])) for op in VIDUR_OPS}
        for n, rows in sorted(acc.items())
    }


# ---------------------------------------------------------------------------------------------
# Roofline pieces


def lm_head_ms(model: Model, gpu: Gpu, tp: int) -> float:
    """The vocab x hidden LM-head GEMM at small batch: a read of its bf16 weight shard.

    Its compute (2 * vocab * hidden FLOPs per sampled token, ~1 us per token on H100) is left out:
    it runs for sampled tokens only (not for prefill chunks) and stays under 2% of a decode step.
    The embedding lookup is a gather of n rows (Vidur's per-layer ``emb`` column already covers it).
    """
    return 2.0 * model.vocab * model.hidden / tp / (gpu.hbm_bytes_per_s * HBM_EFF) * 1e3


def allreduce_ms(model: Model, gpu: Gpu, tp: int, tokens: float) -> float:
    """One all-reduce of a bf16 hidden-state tensor of ``tokens`` rows (0 at TP1)."""
    if tp == 1:
        return 0.0
    moved = 2 * (tp - 1) / tp * tokens * model.hidden * 2
    return ALLREDUCE_LATENCY_MS + moved / (gpu.nvlink_bytes_per_s * ALLREDUCE_BW_EFF) * 1e3


def decode_attn_ms_per_ctx_token(model: Model, gpu: Gpu, tp: int) -> float:
    return model.kv_bytes_per_token(tp) / (gpu.hbm_bytes_per_s * HBM_EFF) * 1e3


def prefill_attn_ms_per_pair(model: Model, gpu: Gpu, tp: int) -> float:
    return model.attn_flops_per_pair(tp) / (gpu.bf16_flops * ATTN_FLOP_EFF) * 1e3


def roofline_layer_s(model: Model, gpu: Gpu, tp: int, tokens: float) -> float:
    """Additive roofline of one layer's GEMMs: bytes / bandwidth + FLOPs / peak.

    Additive rather than max(): real kernels do not overlap the two perfectly, and the additive
    form predicts the measured H100/A100 ratio of Llama-2-7B much better through the memory- to
    compute-bound transition (see the transfer checks).
    """
    params = model.layer_params(tp)
    act_bytes = sum(tokens * (k + n) * 2 for k, n in model.op_shapes(tp).values())
    mem = (2 * params + act_bytes) / gpu.hbm_bytes_per_s
    comp = 2 * tokens * params / gpu.bf16_flops
    return mem + comp


def max_roofline_layer_s(model: Model, gpu: Gpu, tp: int, tokens: float) -> float:
    """The textbook max(bytes / bandwidth, FLOPs / peak), for comparison."""
    params = model.layer_params(tp)
    act_bytes = sum(tokens * (k + n) * 2 for k, n in model.op_shapes(tp).values())
    return max((2 * params + act_bytes) / gpu.hbm_bytes_per_s, 2 * tokens * params / gpu.bf16_flops)


# ---------------------------------------------------------------------------------------------
# KV capacity (vLLM's memory profiling rule)


@dataclass(frozen=True)
class KvBudget:
    total_gib: float
    requested_gib: float
    weights_gib: float
    activation_gib: float
    non_torch_gib: float
    kv_gib: float
    kv_tokens: int


def kv_budget(model: Model, gpu: Gpu, tp: int, max_num_seqs: int, max_batched: int) -> KvBudget:
    """KV tokens = (total * 0.9 - weights - peak activation - non-torch) / KV bytes per token.

    The activation peak is vLLM's profiling run: a forward pass of ``max_batched`` tokens (hidden
    states, qkv, gate/up and activation outputs) or the sampler's fp32 logits and probabilities for
    ``max_num_seqs`` requests, whichever is larger. CUDA graphs are captured after the KV cache is
    allocated (vLLM V1) and live in the 10% left outside gpu_memory_utilization.
    """
    total = gpu.memory_bytes
    requested = total * GPU_MEMORY_UTILIZATION
    weights = model.total_params() * 2 / tp
    qkv_out = (model.heads + 2 * model.kv_heads) * model.head_dim / tp
    fwd = max_batched * 2 * (4 * model.hidden + qkv_out + 3 * model.intermediate / tp)
    sampler = max_num_seqs * model.vocab * 4 * 2
    activation = max(fwd, sampler)
    non_torch = (NON_TORCH_GIB_TP1 if tp == 1 else NON_TORCH_GIB_TPN) * GIB
    kv = requested - weights - activation - non_torch
    per_block = BLOCK_SIZE * model.kv_bytes_per_token(tp)
    tokens = int(kv // per_block) * BLOCK_SIZE
    return KvBudget(
        total / GIB,
        requested / GIB,
        weights / GIB,
        activation / GIB,
        non_torch / GIB,
        kv / GIB,
        tokens,
    )


def vllm_defaults(gpu: Gpu) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens): 1024/8192 on >= 70 GiB GPUs that are not A100."""
    if gpu.memory_bytes >= 70 * GIB and "A100" not in gpu.name:
        return 1024, 8192
    return 256, 2048


# ---------------------------------------------------------------------------------------------
# Fitting max(floor, base + slope * n) to points, minimising squared relative error


@dataclass(frozen=True)
class LinearFit:
    floor_ms: float
    base_ms: float
    per_token_ms: float

    def __call__(self, n: float) -> float:
        return max(self.floor_ms, self.base_ms + self.per_token_ms * n)


def fit_linear(points: Sequence[tuple[int, float]], slope: float | None = None) -> LinearFit:
    """Try every measured token count as the knee; floor and line by weighted least squares.

    With ``slope`` given, only the floor and the base are fitted (the H200 keeps the H100's
    compute-bound slope: same tensor-core peak).
    """
    n = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    w = 1.0 / y
    best: tuple[float, LinearFit] | None = None
    for knee in np.concatenate(([0.0], n[:-2])):
        low, high = n <= knee, n > knee
        floor = float(np.sum(w[low]) / np.sum(w[low] ** 2)) if low.any() else 0.0
        if slope is None:
            x = np.column_stack([np.ones(high.sum()), n[high]]) * w[high, None]
            (base, per_token), *_ = np.linalg.lstsq(x, y[high] * w[high], rcond=None)
        else:
            rest = y[high] - slope * n[high]
            base, per_token = float(np.sum(rest * w[high] ** 2) / np.sum(w[high] ** 2)), slope
        if base < 0 or per_token < 0:
            continue
        fit = LinearFit(floor, float(base), float(per_token))
        pred = np.array([fit(v) for v in n])
        score = float(np.mean(((pred - y) / y) ** 2))
        if best is None or score < best[0]:
            best = (score, fit)
    assert best is not None
    return best[1]


def sig(x: float, digits: int = 5) -> float:
    """Round to ``digits`` significant digits (for readable YAML)."""
    if x == 0:
        return 0.0
    return float(f"{x:.{digits}g}")


def stated(pct: float) -> float:
    """A stated error bound: the computed error rounded up to 0.1 %, plus 0.1 %."""
    return round(math.ceil(pct * 10 - 1e-9) / 10 + 0.1, 1)


# ---------------------------------------------------------------------------------------------
# Transfer checks: the same transfer applied where both ends are measured


def transfer_error(
    measured: dict[int, float],
    source: dict[int, float],
    factor: Callable[[int], float],
    max_tokens: int,
) -> FitError:
    common = [n for n in measured if n in source and n <= max_tokens]
    return prediction_error([source[n] * factor(n) for n in common], [measured[n] for n in common])


def per_op_transfer(
    ops: dict[int, dict[str, float]], ratio: dict[str, float], max_tokens: int
) -> dict[int, float]:
    return {
        n: sum(v[op] * ratio[op] for op in VIDUR_OPS) for n, v in ops.items() if n <= max_tokens
    }


@dataclass
class Checks:
    lines: list[str]

    def add(self, label: str, err: FitError) -> FitError:
        self.lines.append(f"  {label:<74} {err}")
        return err


def run_transfer_checks() -> tuple[Checks, dict[str, FitError]]:
    c = Checks(["Transfer checks (a transfer applied where both ends are measured):"])
    out: dict[str, FitError] = {}
    a_l3 = layer_ms(SRC_A100_L3, 1)
    a_l2 = layer_ms(SRC_A100_L2, 1)
    h_l2 = layer_ms(SRC_H100_L2, 1)
    model_ratio = LLAMA31_8B.layer_params(1) / LLAMA2_7B.layer_params(1)
    out["model_uniform"] = c.add(
        f"A100 Llama-3-8B TP1 = {model_ratio:.4f} x A100 Llama-2-7B TP1 (n<=4096)",
        transfer_error(a_l3, a_l2, lambda _: model_ratio, 4096),
    )
    ratio_ops = LLAMA31_8B.op_ratio(LLAMA2_7B, 1, 1)
    a_l3_ops = per_op_transfer(layer_ops_ms(SRC_A100_L2, 1), ratio_ops, 4096)
    out["model_per_op"] = c.add(
        "A100 Llama-3-8B TP1 = A100 Llama-2-7B TP1, each op by its own shape ratio",
        transfer_error(a_l3, a_l3_ops, lambda _: 1.0, 4096),
    )
    # The GPU-ratio route: H100/A100 measured on Llama-2-7B at TP1, carried to other GEMM shapes
    # (Llama-2-7B at TP2/4/8 stands in for "another model").
    for tp in (2, 4):
        a_tp, h_tp = layer_ms(SRC_A100_L2, tp), layer_ms(SRC_H100_L2, tp)
        out[f"gpu_ratio_tp{tp}"] = c.add(
            f"H100 Llama-2-7B TP{tp} = A100 TP{tp} x (H100/A100 of Llama-2-7B TP1 at same n)",
            transfer_error(h_tp, a_tp, lambda n: h_l2[n] / a_l2[n], 4096),
        )
    # The 70B route: a TP4 shard of Llama-3.1-70B holds about as many weights as a TP1 Llama-2-7B
    # layer; scaling a TP4 measurement up by ~4x instead is checked here on A100.
    shard = LLAMA31_8B.layer_params(1) / LLAMA2_7B.layer_params(4)
    out["scale_up_from_tp4"] = c.add(
        f"A100 Llama-3-8B TP1 = {shard:.3f} x A100 Llama-2-7B TP4 (4x work scale-up)",
        transfer_error(a_l3, layer_ms(SRC_A100_L2, 4), lambda _: shard, 4096),
    )
    shard8 = LLAMA31_8B.layer_params(2) / LLAMA2_7B.layer_params(8)
    out["scale_up_tp2_from_tp8"] = c.add(
        f"A100 Llama-3-8B TP2 = {shard8:.3f} x A100 Llama-2-7B TP8 (4x work scale-up)",
        transfer_error(layer_ms(SRC_A100_L3, 2), layer_ms(SRC_A100_L2, 8), lambda _: shard8, 4096),
    )
    # The GPU transfer of the H200 profile (roofline ratio), checked H100 <- A100 on Llama-2-7B.
    for label, roof in (("additive", roofline_layer_s), ("max()", max_roofline_layer_s)):
        for tp in (1, 2):
            a_tp, h_tp = layer_ms(SRC_A100_L2, tp), layer_ms(SRC_H100_L2, tp)

            def r(n: int, roof: Callable[..., float] = roof, tp: int = tp) -> float:
                return float(roof(LLAMA2_7B, H100, tp, n) / roof(LLAMA2_7B, A100, tp, n))

            out[f"roofline_{label}_tp{tp}"] = c.add(
                f"H100 Llama-2-7B TP{tp} = A100 TP{tp} x {label} roofline ratio H100/A100",
                transfer_error(h_tp, a_tp, r, 4096),
            )
    # The 70B shard's ops do not all scale like its weights (norms and adds run over hidden 8192
    # unsharded): the uniform ratio against a per-op ratio, on the H100 points.
    ratio70 = LLAMA31_70B.layer_params(4) / LLAMA2_7B.layer_params(1)
    ops70 = per_op_transfer(
        layer_ops_ms(SRC_H100_L2, 1), LLAMA31_70B.op_ratio(LLAMA2_7B, 4, 1), 4096
    )
    out["70b_uniform_vs_per_op"] = c.add(
        f"H100 70B TP4 shard: {ratio70:.4f} x H100 Llama-2-7B TP1 vs the per-op transfer",
        transfer_error(ops70, h_l2, lambda _: ratio70, 4096),
    )
    # Linear extrapolation past the last measured token count (H100 data stops at 4096, the
    # H100 profiles run to 8192): fit A100 Llama-3-8B up to 4096, predict 4096 < n <= 8192.
    a_pts = [(n, v) for n, v in a_l3.items() if n <= 4096]
    a_fit = fit_linear(a_pts)
    far = [(n, v) for n, v in a_l3.items() if 4096 < n <= 8192]
    out["extrapolation"] = c.add(
        "A100 Llama-3-8B TP1: fit n <= 4096, predict 4096 < n <= 8192",
        prediction_error([a_fit(n) for n, _ in far], [v for _, v in far]),
    )
    # The fit quoted in the vLLM interface notes, for comparison with ours.
    ref = [(n, 32 * v) for n, v in a_l3.items() if n <= 2048]
    out["reference_fit"] = c.add(
        "A100 Llama-3-8B TP1 x 32 vs max(9.7, 8.1 + 0.066 n) (reference doc), n <= 2048",
        prediction_error([max(9.7, 8.1 + 0.066 * n) for n, _ in ref], [v for _, v in ref]),
    )
    return c, out


# ---------------------------------------------------------------------------------------------
# The profiles


@dataclass(frozen=True)
class Spec:
    name: str
    model: Model
    gpu: Gpu
    tp: int
    #: how the linear-layer points are obtained: "a100-direct" (Vidur Llama-3-8B on A100),
    #: "h100-shard" (Vidur Llama-2-7B TP1 on H100 x per-GPU layer weight ratio, + all-reduce at
    #: TP > 1), "h200-roofline" (the h100-shard points x the H200/H100 roofline ratio)
    route: str


SPECS = (
    Spec("llama-3.1-8b-a100", LLAMA31_8B, A100, 1, "a100-direct"),
    Spec("llama-3.1-8b-h100", LLAMA31_8B, H100, 1, "h100-shard"),
    Spec("llama-3.1-8b-h200", LLAMA31_8B, H200, 1, "h200-roofline"),
    Spec("llama-3.1-70b-h100-tp4", LLAMA31_70B, H100, 4, "h100-shard"),
)


@dataclass
class Derived:
    profile: Profile
    fit_points: list[tuple[int, float]]
    fit_error: FitError
    checks: list[tuple[str, FitError]]
    kv: KvBudget


def fit_points_for(spec: Spec) -> tuple[list[tuple[int, float]], list[dict[str, object]], str]:
    """The (tokens, linear-layer ms) points a profile is fitted to, its validation sources (with
    stated errors still to fill in; ``note`` says what each comparison means) and a description
    of the transfer."""
    m, g, tp = spec.model, spec.gpu, spec.tp
    _, max_batched = vllm_defaults(g)
    lm = lm_head_ms(m, g, tp)
    if spec.route == "a100-direct":
        assert m is LLAMA31_8B and g is A100 and tp == 1
        src = layer_ms(SRC_A100_L3, 1)
        pts = [(n, m.layers * v + lm) for n, v in src.items() if n <= max_batched]
        val = [
            dict(
                file=SRC_A100_L3,
                layers=m.layers,
                scale=1.0,
                extra_ms=lm,
                max_tokens=2048,
                note="direct measurement; the error is the fit's",
            )
        ]
        how = (
            f"linear(n) = {m.layers} x vidur_a100_Llama-3-8B(TP1, n) + LM head {lm:.3f} ms; "
            "direct measurement, n <= 2048"
        )
        return pts, val, how
    ratio = m.layer_params(tp) / LLAMA2_7B.layer_params(1)
    h_l2 = layer_ms(SRC_H100_L2, 1)
    # The same kind of transfer (layer-weight ratio, same GPU) where both ends are measured.
    l3_over_l2 = LLAMA31_8B.layer_params(1) / LLAMA2_7B.layer_params(1)
    same_kind = transfer_error(
        layer_ms(SRC_A100_L3, 1), layer_ms(SRC_A100_L2, 1), lambda _: l3_over_l2, 4096
    )
    transfer_note = (
        f"the transfer's own error comes on top: on A100, {l3_over_l2:.4f} x Llama-2-7B vs "
        f"Llama-3-8B is off by median {same_kind.median_pct:.1f}%, max {same_kind.max_pct:.1f}%"
    )
    if spec.route == "h100-shard" and tp == 1:
        assert g is H100
        pts = [(n, ratio * m.layers * v + lm) for n, v in h_l2.items() if n <= max_batched]
        val = [
            dict(
                file=SRC_H100_L2,
                layers=m.layers,
                scale=ratio,
                extra_ms=lm,
                max_tokens=4096,
                note=transfer_note,
            )
        ]
        how = (
            f"linear(n) = {ratio:.4f} x {m.layers} x vidur_h100_Llama-2-7b(TP1, n) + LM head "
            f"{lm:.3f} ms; {ratio:.4f} = Llama-3.1-8B / Llama-2-7B layer weights (= FLOP ratio); "
            "measured up to n = 4096, extrapolated linearly to 8192"
        )
        return pts, val, how
    if spec.route == "h200-roofline":
        assert tp == 1
        pts = []
        for n, v in h_l2.items():
            if n > max_batched:
                continue
            r = roofline_layer_s(m, g, tp, n) / roofline_layer_s(m, H100, tp, n)
            pts.append((n, ratio * m.layers * v * r + lm))
        r1 = roofline_layer_s(m, g, tp, 1) / roofline_layer_s(m, H100, tp, 1)
        val = [
            dict(
                file=SRC_H100_L2,
                layers=m.layers,
                scale=ratio * r1,
                extra_ms=lm,
                max_tokens=32,
                note=f"memory-bound points x R(1) = {r1:.3f}",
            ),
            dict(
                file=SRC_H100_L2,
                layers=m.layers,
                scale=ratio,
                extra_ms=lm,
                max_tokens=4096,
                note="the H100 reference itself: up to ~30% at small n is the H200's bandwidth "
                "advantage, by design; at large n the two agree",
            ),
        ]
        how = (
            f"linear(n) = {ratio:.4f} x {m.layers} x vidur_h100_Llama-2-7b(TP1, n) x R(n) + LM "
            f"head {lm:.3f} ms; R(n) = roofline_H200(n) / roofline_H100(n) with the additive "
            "roofline bytes / HBM + FLOPs / peak of the layer's GEMMs: "
            + ", ".join(
                f"R({n}) = {roofline_layer_s(m, g, tp, n) / roofline_layer_s(m, H100, tp, n):.3f}"
                for n in (1, 128, 512, 4096)
            )
            + " (HBM 3.35 -> 4.8 TB/s, same 989 TFLOP/s); slope fixed to the H100 profile's"
        )
        return pts, val, how
    if spec.route == "h100-shard":
        assert g is H100
        ar_lat = 2 * m.layers * ALLREDUCE_LATENCY_MS
        extra = lm + ar_lat
        pts = []
        for n, v in h_l2.items():
            if n > max_batched:
                continue
            ar_bw = 2 * m.layers * (allreduce_ms(m, g, tp, n) - ALLREDUCE_LATENCY_MS)
            pts.append((n, ratio * m.layers * v + extra + ar_bw))
        per_tok = 2 * m.layers * (allreduce_ms(m, g, tp, 1.0) - ALLREDUCE_LATENCY_MS)
        ar_share = 100 * per_tok * 4096 / (ratio * m.layers * h_l2[4096] + extra)
        val = [
            dict(
                file=SRC_H100_L2,
                layers=m.layers,
                scale=ratio,
                extra_ms=extra,
                max_tokens=64,
                note=f"small n, where the all-reduce bandwidth term is under 1 ms; {transfer_note}",
            ),
            dict(
                file=SRC_H100_L2,
                layers=m.layers,
                scale=ratio,
                extra_ms=extra,
                max_tokens=4096,
                note="the reference has no all-reduce bandwidth term (it grows with n), so the "
                f"error grows with n to {ar_share:.0f}% at n = 4096 by design",
            ),
        ]
        how = (
            f"linear(n) = {ratio:.4f} x {m.layers} x vidur_h100_Llama-2-7b(TP1, n) + LM head shard "
            f"{lm:.3f} ms + all-reduce {2 * m.layers} x ({ALLREDUCE_LATENCY_MS * 1e3:.0f} us + "
            f"1.5 x n x {m.hidden} x 2 B / ({ALLREDUCE_BW_EFF} x 450 GB/s)) = {ar_lat:.2f} ms + "
            f"{per_tok:.5f} ms x n; {ratio:.4f} = one TP4 shard of a 70B layer / one Llama-2-7B "
            "layer (weights = FLOPs per token)"
        )
        return pts, val, how
    raise ValueError(f"{spec.name}: unknown route {spec.route!r}")


def derive(spec: Spec) -> Derived:
    m, g, tp = spec.model, spec.gpu, spec.tp
    max_seqs, max_batched = vllm_defaults(g)
    pts, val, how = fit_points_for(spec)
    slope = None
    if spec.gpu is H200:  # the compute-bound slope is the H100's (same 989 TFLOP/s)
        h100 = Spec("", spec.model, H100, spec.tp, "h100-shard")
        slope = sig(fit_linear(fit_points_for(h100)[0]).per_token_ms)
    lin = fit_linear(pts, slope)
    kv = kv_budget(m, g, tp, max_seqs, max_batched)
    dec = decode_attn_ms_per_ctx_token(m, g, tp)
    pre = prefill_attn_ms_per_pair(m, g, tp)
    data: dict[str, object] = {
        "name": spec.name,
        "model": m.name,
        "gpu": g.name,
        "tensor_parallel": tp,
        "kv_cache_tokens": kv.kv_tokens,
        "block_size": BLOCK_SIZE,
        "max_num_seqs": max_seqs,
        "max_num_batched_tokens": max_batched,
        "max_model_len": min(LLAMA31_MAX_MODEL_LEN, kv.kv_tokens),
        "iteration": {
            "overhead_ms": OVERHEAD_MS,
            "linear_floor_ms": sig(lin.floor_ms),
            "linear_base_ms": sig(lin.base_ms),
            "linear_per_token_ms": sig(lin.per_token_ms),
            "decode_attn_per_ctx_token_ms": sig(dec),
            "prefill_attn_per_pair_ms": sig(pre),
        },
    }
    notes = [str(v.pop("note")) for v in val]
    for v in val:
        v["tensor_parallel"] = 1
        v["scale"] = sig(float(v["scale"]))  # type: ignore[arg-type]
        v["extra_ms"] = sig(float(v["extra_ms"]))  # type: ignore[arg-type]
        v["stated_median_error_pct"] = 0.0
        v["stated_max_error_pct"] = 0.0
    data["validation"] = val
    data["provenance"] = ""
    draft = parse_profile(data, spec.name)
    checks: list[tuple[str, FitError]] = []
    for i, source in enumerate(draft.validation):
        err = check_against_source(draft, source)
        val[i]["stated_median_error_pct"] = stated(err.median_pct)
        val[i]["stated_max_error_pct"] = stated(err.max_pct)
        label = f"{source.file} n<={source.max_tokens} scale={source.scale} ({notes[i]})"
        checks.append((label, err))
    fitted = parse_profile(data, spec.name).iteration
    fit_err = prediction_error([fitted.linear_ms(n) for n, _ in pts], [y for _, y in pts])
    data["provenance"] = provenance(spec, lin, how, kv, dec, pre, fit_err, checks)
    return Derived(parse_profile(data, spec.name), pts, fit_err, checks, kv)


def provenance(
    spec: Spec,
    lin: LinearFit,
    how: str,
    kv: KvBudget,
    dec: float,
    pre: float,
    fit_err: FitError,
    checks: list[tuple[str, FitError]],
) -> str:
    m, g, tp = spec.model, spec.gpu, spec.tp
    lines = [
        f"Generated by profiles/derive.py (see profiles/README.md). {m.name} on {g.name}, TP{tp}.",
        f"Linear layers: {how}.",
        f"Fit max(floor, base + slope n) to those points (n <= {vllm_defaults(g)[1]}): {fit_err}.",
        f"Decode attention: KV bytes/token/GPU = 2 x {m.layers} layers x {m.kv_heads} KV heads x "
        f"{m.head_dim} x 2 B / TP{tp} = {m.kv_bytes_per_token(tp):.0f} B over "
        f"{HBM_EFF} x {g.hbm_bytes_per_s / 1e12:.3f} TB/s = {dec:.4g} ms per context token.",
        f"Prefill attention: 4 x {m.layers} x {m.heads} heads x {m.head_dim} / 2 (causal) / TP{tp} "
        f"= {m.attn_flops_per_pair(tp):.0f} FLOPs per pair over {ATTN_FLOP_EFF} x "
        f"{g.bf16_flops / 1e12:.0f} TFLOP/s = {pre:.4g} ms per pair.",
        f"Overhead: {OVERHEAD_MS} ms per step (CPU scheduling, sampling, launches; calibrated to "
        "the published small-batch decode ranges).",
        f"KV cache: ({kv.total_gib:.2f} GiB x {GPU_MEMORY_UTILIZATION} - weights "
        f"{kv.weights_gib:.2f} - activation peak {kv.activation_gib:.2f} - non-torch "
        f"{kv.non_torch_gib:.2f}) = {kv.kv_gib:.2f} GiB per GPU / "
        f"{m.kv_bytes_per_token(tp):.0f} B = {kv.kv_tokens} tokens (whole {BLOCK_SIZE}-token "
        "blocks); max_num_seqs/max_num_batched_tokens are vLLM's defaults for this GPU.",
    ]
    for label, err in checks:
        lines.append(f"Validation {label}: {err}.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Output


class _Dumper(yaml.SafeDumper):
    pass


def _str_rep(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_rep)

HEADER = "# Generated by profiles/derive.py from profiles/measured; do not edit by hand.\n"


def render(profile: Profile) -> str:
    data = profile.model_dump(mode="json")
    return HEADER + yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100)


def summary_rows(p: Profile) -> list[str]:
    small = p.step_ms(1, 1024)
    b8 = p.step_ms(8, 8 * 1024)
    pre_tok = {n: p.prefill_ms(n, p.max_num_batched_tokens) / n for n in (512, 2048, 8192)}
    slope = p.iteration.linear_per_token_ms
    row = (
        f"| {p.name} | {small:.1f} | {b8:.1f} | "
        + " / ".join(f"{pre_tok[n]:.3f}" for n in pre_tok)
        + f" | {slope:.4f} | "
    )
    for ctx in (1024, 4096):
        row += " / ".join(str(p.max_decode_batch(t, ctx)) for t in (20, 30, 50, 100)) + " | "
    row += f"{p.kv_cache_tokens} |"
    return [row]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="write nothing; fail if files are stale")
    args = ap.parse_args(argv)

    checks, _ = run_transfer_checks()
    print("\n".join(checks.lines))
    print()
    stale: list[str] = []
    rows: list[str] = []
    for spec in SPECS:
        d = derive(spec)
        p = d.profile
        it = p.iteration
        print(f"{p.name}: {p.model} on {p.gpu}, TP{p.tensor_parallel}")
        print(
            f"  linear = max({it.linear_floor_ms}, {it.linear_base_ms} + "
            f"{it.linear_per_token_ms} n) ms; fit to {len(d.fit_points)} points: {d.fit_error}"
        )
        for label, err in d.checks:
            print(f"  validation {label}: {err}")
        print(
            f"  overhead {it.overhead_ms} ms, decode attn {it.decode_attn_per_ctx_token_ms} "
            f"ms/ctx token, prefill attn {it.prefill_attn_per_pair_ms} ms/pair"
        )
        print(
            f"  KV: {d.kv.kv_gib:.2f} GiB -> {p.kv_cache_tokens} tokens; max_num_seqs "
            f"{p.max_num_seqs}, max_num_batched_tokens {p.max_num_batched_tokens}, "
            f"max_model_len {p.max_model_len}"
        )
        rows += summary_rows(p)
        text = render(p)
        path = PROFILE_DIR / f"{p.name}.yaml"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    print()
    print(
        "| profile | decode b=1 ctx 1024 (ms) | decode b=8 ctx 1024 (ms) | prefill ms/token at "
        "512 / 2048 / 8192 | marginal ms/token | max decode batch TPOT 20/30/50/100, ctx 1024 | "
        "same, ctx 4096 | KV tokens |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if stale:
        print("stale (rerun profiles/derive.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

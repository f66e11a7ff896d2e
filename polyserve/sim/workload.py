"""Workloads: real traces and synthetic arrivals, with per-request SLOs.

A workload is built in two steps: *lengths and arrival times* (a trace replay rescaled to a target
rate, or ShareGPT lengths with Poisson arrivals, or any CSV/JSONL), then *SLOs* drawn per request as in
the paper (TPOT 20/30/50/100 ms with probability 10/20/30/40 %, TTFT uniform over 300/500/1000 ms),
keeping only SLOs an idle server can attain.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from polyserve.profile import Profile
from polyserve.slo import TierSet

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "traces"
TRACES = {
    "azure-conv": DATA_DIR / "AzureLLMInferenceTrace_conv.csv",
    "azure-code": DATA_DIR / "AzureLLMInferenceTrace_code.csv",
    "sharegpt": DATA_DIR / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
}


class WorkloadError(ValueError):
    """A trace or workload setting that cannot be used."""


@dataclass(frozen=True, slots=True)
class Shape:
    """One request's lengths and arrival time (seconds from the start)."""

    time: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Arrival:
    rid: int
    time: float
    prompt_tokens: int
    output_tokens: int
    tier: int
    ttft_ms: float
    tpot_ms: float


# ------------------------------------------------------------------------------ sources


def _parse_azure_time(text: str) -> float:
    # "2023-11-16 18:17:03.9799600": 7 decimals, more than datetime parses
    head, _, frac = text.strip().partition(".")
    return datetime.fromisoformat(head).timestamp() + (float(f"0.{frac}") if frac else 0.0)


def read_azure(path: str | Path) -> list[Shape]:
    """The Azure LLM inference trace (TIMESTAMP, ContextTokens, GeneratedTokens)."""
    path = Path(path)
    shapes: list[Shape] = []
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise WorkloadError(f"{path}: cannot read: {err.strerror}") from None
    t0: float | None = None
    for i, row in enumerate(rows, start=2):
        try:
            t = _parse_azure_time(row["TIMESTAMP"])
            p, o = int(row["ContextTokens"]), int(row["GeneratedTokens"])
        except (KeyError, ValueError) as err:
            raise WorkloadError(f"{path}:{i}: not an Azure trace row: {err}") from None
        t0 = t if t0 is None else t0
        shapes.append(Shape(t - t0, max(p, 1), max(o, 1)))
    if not shapes:
        raise WorkloadError(f"{path}: no requests")
    shapes.sort(key=lambda s: s.time)
    return shapes


def read_lengths(path: str | Path) -> list[tuple[int, int]]:
    """(prompt, output) pairs from ShareGPT stats (num_prefill_tokens, num_decode_tokens)."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            return [
                (max(int(r["num_prefill_tokens"]), 1), max(int(r["num_decode_tokens"]), 1))
                for r in csv.DictReader(fh)
            ]
    except (OSError, KeyError, ValueError) as err:
        raise WorkloadError(f"{path}: not a lengths file: {err}") from None


_TIME_KEYS = ("arrival", "time", "timestamp", "arrival_time")
_PROMPT_KEYS = ("prompt_tokens", "input_tokens", "prompt_len", "ContextTokens")
_OUTPUT_KEYS = ("output_tokens", "completion_tokens", "output_len", "GeneratedTokens")


def _pick(row: dict[str, object], keys: Sequence[str], what: str, where: str) -> str:
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return str(row[k])
    raise WorkloadError(f"{where}: no {what} column (one of {', '.join(keys)})")


def read_table(path: str | Path) -> list[Shape]:
    """Any CSV or JSONL with an arrival time (seconds), prompt and output token counts."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise WorkloadError(f"{path}: cannot read: {err.strerror}") from None
    if path.suffix in (".jsonl", ".ndjson"):
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise WorkloadError(f"{path}: bad JSON line: {err}") from None
    else:
        rows = list(csv.DictReader(text.splitlines()))
    shapes = []
    for i, row in enumerate(rows, start=1):
        where = f"{path}: record {i}"
        if not isinstance(row, dict):
            raise WorkloadError(f"{where}: not an object")
        try:
            raw_t = _pick(row, _TIME_KEYS, "arrival time", where)
            try:
                t = float(raw_t)
            except ValueError:
                t = _parse_azure_time(raw_t)
            p = int(float(_pick(row, _PROMPT_KEYS, "prompt tokens", where)))
            o = int(float(_pick(row, _OUTPUT_KEYS, "output tokens", where)))
        except ValueError as err:
            raise WorkloadError(f"{where}: {err}") from None
        if p < 1 or o < 1 or not math.isfinite(t):
            raise WorkloadError(f"{where}: need prompt and output tokens >= 1 and a finite time")
        shapes.append(Shape(t, p, o))
    if not shapes:
        raise WorkloadError(f"{path}: no requests")
    shapes.sort(key=lambda s: s.time)
    t0 = shapes[0].time
    return [replace(s, time=s.time - t0) for s in shapes]


def poisson(lengths: Sequence[tuple[int, int]], n: int, rate: float, seed: int) -> list[Shape]:
    """``n`` requests with lengths drawn from ``lengths`` and Poisson arrivals at ``rate``/s."""
    if rate <= 0 or n < 1:
        raise WorkloadError("Poisson arrivals need rate > 0 and n >= 1")
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate)
        p, o = lengths[rng.randrange(len(lengths))]
        out.append(Shape(t, p, o))
    return out


def rescale(shapes: Sequence[Shape], rate: float) -> list[Shape]:
    """Stretch or compress arrival times so the mean rate is ``rate`` requests/s (shape kept)."""
    if rate <= 0:
        raise WorkloadError(f"rate must be > 0, got {rate}")
    if len(shapes) < 2:
        return list(shapes)
    span = shapes[-1].time - shapes[0].time
    if span <= 0:
        raise WorkloadError("cannot rescale a trace whose requests all arrive at once")
    factor = (len(shapes) - 1) / span / rate
    t0 = shapes[0].time
    return [replace(s, time=(s.time - t0) * factor) for s in shapes]


def superpose(shapes: Sequence[Shape], copies: int, jitter_s: float, seed: int) -> list[Shape]:
    """``copies`` overlaid replays of a trace, each request moved by up to ``jitter_s`` seconds.

    Multiplies the load while keeping the trace's own clock: its minute-scale shape (diurnal
    trend, bursts longer than the jitter) and its lengths are unchanged, so start-up delays meet
    the load changes they would meet in production.
    """
    if copies < 1 or jitter_s < 0:
        raise WorkloadError("superpose needs copies >= 1 and jitter_s >= 0")
    if copies == 1:
        return list(shapes)
    rng = random.Random(seed)
    out = [
        replace(s, time=max(0.0, s.time + rng.uniform(-jitter_s, jitter_s)))
        for _ in range(copies)
        for s in shapes
    ]
    out.sort(key=lambda s: s.time)
    return out


def shapes_for(name: str, n: int | None, seed: int, offset: int = 0) -> list[Shape]:
    """A named workload at rate 1 req/s: ``azure-conv``, ``azure-code``, ``sharegpt`` (Poisson), or a
    file path. ``n`` limits the count (a window of the trace starting at ``offset``)."""
    if name == "sharegpt":
        return poisson(read_lengths(TRACES["sharegpt"]), n or 10_000, 1.0, seed)
    shapes = read_azure(TRACES[name]) if name in TRACES else read_table(name)
    if offset or n:
        shapes = shapes[offset : offset + n if n else None]
    if not shapes:
        raise WorkloadError(f"{name}: no requests in the chosen window")
    return rescale(shapes, 1.0)


# ------------------------------------------------------------------------------ SLOs


@dataclass(frozen=True, slots=True)
class SLOMix:
    """Per-tier probabilities (tightest first) and the TTFT menu (ms)."""

    tier_probs: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    ttft_menu_ms: tuple[float, ...] = (300.0, 500.0, 1000.0)
    invert_at: float | None = None  # fraction of the run after which the tier mix is reversed

    def __post_init__(self) -> None:
        if not self.tier_probs or any(p < 0 for p in self.tier_probs) or sum(self.tier_probs) <= 0:
            raise WorkloadError(
                f"tier probabilities must be >= 0 with a positive sum: {self.tier_probs}"
            )
        if not self.ttft_menu_ms or any(not (v > 0) for v in self.ttft_menu_ms):
            raise WorkloadError(f"the TTFT menu needs positive values: {self.ttft_menu_ms}")
        if self.invert_at is not None and not (0 <= self.invert_at <= 1):
            raise WorkloadError("invert_at is a fraction of the run in [0, 1]")


@dataclass
class SLOAssigner:
    """Draws each request's SLO; keeps only what an idle server could attain.

    A TTFT below the prompt's idle prefill time is replaced by the smallest attainable menu value
    (or, past the whole menu, the idle prefill time rounded up to 100 ms); a TPOT below the idle
    single-request step moves to the next looser tier.
    """

    tiers: TierSet
    profile: Profile
    mix: SLOMix = field(default_factory=SLOMix)
    prefill_chunk: int = 0  # chunk used for the idle-prefill estimate (0: the profile's budget)

    def assign(self, shapes: Sequence[Shape], seed: int) -> list[Arrival]:
        if len(self.mix.tier_probs) != len(self.tiers):
            raise WorkloadError(
                f"{len(self.mix.tier_probs)} tier probabilities for {len(self.tiers)} tiers"
            )
        rng = random.Random(seed)
        prof = self.profile
        chunk = self.prefill_chunk or prof.max_num_batched_tokens
        out: list[Arrival] = []
        n = len(shapes)
        probs = list(self.mix.tier_probs)
        for i, s in enumerate(shapes):
            p = min(s.prompt_tokens, prof.max_model_len - 1)
            o = min(s.output_tokens, prof.max_model_len - p)
            weights = (
                probs[::-1]
                if self.mix.invert_at is not None and i >= self.mix.invert_at * n
                else probs
            )
            tier = rng.choices(range(len(self.tiers)), weights=weights)[0]
            while tier < len(self.tiers) - 1 and prof.step_ms(1, p + o) > self.tiers[tier].tpot_ms:
                tier += 1
            ttft = rng.choice(self.mix.ttft_menu_ms)
            idle = prof.prefill_ms(p, chunk) + prof.step_ms(1, p)
            if ttft < idle:
                fits = [v for v in sorted(self.mix.ttft_menu_ms) if v >= idle]
                ttft = fits[0] if fits else math.ceil(idle / 100.0) * 100.0
            out.append(Arrival(i, s.time, p, o, tier, ttft, self.tiers[tier].tpot_ms))
        return out


def at_rate(arrivals: Sequence[Arrival], rate: float) -> list[Arrival]:
    """The same requests (built at 1 req/s) arriving at ``rate`` requests/s."""
    return [replace(a, time=a.time / rate) for a in arrivals]

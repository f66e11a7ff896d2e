"""How much CPU the mock engine needs, and how many streams one core carries.

1. Idle fleet: ``--replicas 20`` in one process, no requests: CPU% over a quiet window.
2. Loaded fleet: the same 20 engines with S closed-loop streams each.
3. One engine, C = 64 .. 768 streams: the mock's CPU%, its step lateness (how late the loop woke
   after each step's deadline, from the mock's own shutdown log) against the mean requested step,
   and the client-observed TPOT against the engine model's replay of the same arrivals. The mock
   is the bottleneck once its process nears 100% of a core and its lateness grows to a sizeable
   share of the step (the loop can no longer finish a step's token writes within the step).

    .venv/bin/python bench/mock_capacity.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_fidelity import MockProcess, closed_loop, compare, replay

from polyserve.profile import load_profile

PROFILE = "llama-3.1-8b-h100"
PROMPTS = (64, 192)
OUTPUTS = (64, 256)


def idle_fleet(replicas: int, window: float) -> None:
    mock = MockProcess(replicas, PROFILE)
    try:
        time.sleep(1.0)
        cpu0, t0 = mock.cpu_seconds(), time.monotonic()
        time.sleep(window)
        cpu = mock.cpu_seconds() - cpu0
        wall = time.monotonic() - t0
    finally:
        mock.stop()
    print(
        f"idle fleet: {replicas} engines, {window:.0f} s: process CPU {cpu / wall * 100:.2f}% "
        f"of one core ({cpu / wall * 100 / replicas:.3f}% per engine)"
    )


def loaded_fleet(replicas: int, streams: int, seconds: float) -> None:
    mock = MockProcess(replicas, PROFILE)
    try:
        asyncio.run(closed_loop(mock.urls, 1, 1, seed=99))
        cpu0 = mock.cpu_seconds()
        c0 = time.process_time()
        samples, wall = asyncio.run(
            closed_loop(mock.urls, streams, 10_000, 3, PROMPTS, OUTPUTS, seconds, ramp=1.0)
        )
        cpu = mock.cpu_seconds() - cpu0
        client_cpu = time.process_time() - c0
    finally:
        mock.stop()
    late = mock.lateness()
    tokens = sum(s.output_tokens for s in samples)
    p50 = max(e["p50_ms"] for e in late)
    p99 = max(e["p99_ms"] for e in late)
    step = sum(e["step_ms"] for e in late) / len(late)
    print(
        f"loaded fleet: {replicas} engines x {streams} streams, {wall:.1f} s, "
        f"{tokens / wall:.0f} tokens/s: mock CPU {cpu / wall * 100:.0f}% "
        f"({cpu / wall * 100 / replicas:.1f}% per engine), client CPU "
        f"{client_cpu / wall * 100:.0f}%; worst engine lateness p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms (mean step {step:.1f} ms)"
    )


def _sample_cpu(
    mock: MockProcess, t0: float, window: tuple[float, float], out: list[tuple[float, float]]
) -> None:
    """(mock CPU seconds, this process's CPU seconds) at t0 + each end of the window."""
    for at in window:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        out.append((mock.cpu_seconds(), time.process_time()))


def one_engine(levels: list[int], seconds: float, *extra: str) -> None:
    """One engine; ``extra`` options (e.g. a larger --max-num-seqs) go to the mock and the model."""
    profile = load_profile(PROFILE)
    overrides = dict(zip(extra[::2], extra[1::2], strict=True))
    if "--max-num-seqs" in overrides or "--kv-cache-tokens" in overrides:
        profile = profile.model_copy(
            update={
                "max_num_seqs": int(overrides.get("--max-num-seqs", profile.max_num_seqs)),
                "kv_cache_tokens": int(overrides.get("--kv-cache-tokens", profile.kv_cache_tokens)),
            }
        )
    print(
        f"{'C':>5} {'tokens/s':>9} {'mock CPU':>8} {'client CPU':>10} {'step ms':>8} "
        f"{'late p50':>8} {'late p99':>8} {'restarts':>8} {'TPOT p50 meas/model':>20} {'err':>6} "
        f"{'CPU/token':>9}"
    )
    per_token: list[float] = []
    for c in levels:
        mock = MockProcess(1, PROFILE, *extra)
        try:
            asyncio.run(closed_loop(mock.urls, 1, 1, seed=99))
            # CPU is read in the steady window (after the 1 s ramp, before new requests stop):
            # the drain of the last requests would dilute the averages.
            window = (2.0, seconds)
            readings: list[tuple[float, float]] = []
            t0 = time.monotonic()
            sampler = threading.Thread(target=_sample_cpu, args=(mock, t0, window, readings))
            sampler.start()
            samples, _ = asyncio.run(
                closed_loop(mock.urls, c, 100_000, 5, PROMPTS, OUTPUTS, seconds, ramp=1.0)
            )
            sampler.join()
        finally:
            mock.stop()
        span = window[1] - window[0]
        cpu = readings[1][0] - readings[0][0]
        client_cpu = readings[1][1] - readings[0][1]
        tokens = sum(window[0] <= t < window[1] for s in samples for t in s.token_times)
        late = mock.lateness()[0]
        r = compare(samples, replay(profile, samples))
        print(
            f"{c:>5} {tokens / span:>9.0f} {cpu / span * 100:>7.0f}% "
            f"{client_cpu / span * 100:>9.0f}% "
            f"{late['step_ms']:>8.1f} {late['p50_ms']:>8.1f} {late['p99_ms']:>8.1f} "
            f"{int(late['restarts']):>8} "
            f"{r['tpot_p50_measured_ms']:>9.2f}/{r['tpot_p50_model_ms']:<7.2f}ms "
            f"{r['tpot_p50_err_pct']:>+5.1f}% {cpu / tokens * 1e6:>7.1f}us",
            flush=True,
        )
        per_token.append(cpu / tokens)
    # Extrapolate: the loop saturates one core when a step's token work fills the step.
    cost = max(per_token)
    ctx = sum(PROMPTS) / 2 + sum(OUTPUTS) / 4
    c = 1
    while c < profile.max_num_seqs and (c + 1) * cost * 1e3 <= profile.step_ms(
        c + 1, (c + 1) * ctx
    ):
        c += 1
    print(
        f"CPU per streamed token (worst level): {cost * 1e6:.1f} us -> one core carries about "
        f"{c} streams on {PROFILE} (where {c} tokens of work fill one {profile.step_ms(c, c * ctx):.1f}"
        f" ms step){'; capped by max_num_seqs' if c >= profile.max_num_seqs else ''}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter windows, fewer levels")
    ap.add_argument("--levels", default="64,128,256,512,768")
    ap.add_argument(
        "--beyond",
        default="1024,2048,3072",
        help="levels past the profile's max_num_seqs (run with --max-num-seqs 4096)",
    )
    args = ap.parse_args()
    seconds = 6.0 if args.quick else 12.0
    idle_fleet(20, 5.0 if args.quick else 10.0)
    loaded_fleet(20, 4, seconds)
    loaded_fleet(20, 8, seconds)
    levels = [int(x) for x in args.levels.split(",")]
    one_engine(levels[:3] if args.quick else levels, seconds)
    if args.beyond and not args.quick:
        print("past the profile's limits: --max-num-seqs 4096 --kv-cache-tokens 2000000")
        big = ("--max-num-seqs", "4096", "--kv-cache-tokens", "2000000")
        one_engine([int(x) for x in args.beyond.split(",")], seconds, *big)


if __name__ == "__main__":
    main()

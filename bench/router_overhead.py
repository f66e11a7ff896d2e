"""What the router costs: added latency per stream, and streamed tokens/s per router core.

The router has one tier, ``bench`` (TPOT 100 ms like t100, TTFT 60 s so that no request of the
ramp is shed), and every engine in its idle pool.

1. Added latency. One mock engine (``--max-num-seqs`` 1024, KV cache 448k tokens: room for 512
   streams of at most 192 + 256 tokens) and C = 1, 64, 512 closed-loop streams (prompts 64-192
   tokens, outputs 64-256 with ``ignore_eos``, streams ramped in over 1 s). Each level runs twice
   against a fresh engine: (a) straight to the engine, (b) through ``polyserve router`` in front of
   it. The client measures TTFT (send to first token event) of the requests sent in the steady
   window, and the inter-token gaps inside it, at p50 and p99; "added" is router minus direct.
2. Throughput. Four engines (``--replicas 4``) behind one router, C = 64 .. 2048 streams through
   the router. Over the steady window: streamed tokens/s, the router process's CPU (from
   /proc/<pid>/stat), its CPU per token, and tokens/s per router core = tokens/s / (router CPU
   fraction). The mock's and the client's CPU and the load average show who is short of a core.

Every process runs on this machine: the client (this process), the router and the engines share
its cores, so read the CPU columns before the latency ones.

    .venv/bin/python bench/router_overhead.py [--quick] [--profile-router FILE]

``--profile-router FILE`` runs the router under cProfile in the throughput part, at the largest
level only, and prints its top functions (the profiler slows the router down: read the shares).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import pstats
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_fidelity import ChildProcess, MockProcess, Sample, closed_loop, pct

from polyserve.mockengine.testing import free_port_run

PROFILE = "llama-3.1-8b-h100"
PROMPTS = (64, 192)
OUTPUTS = (64, 256)
RAMP_S = 1.0
WINDOW_START_S = 2.0  # the steady window starts after the ramp and the first requests' prefill
# One tier with t100's TPOT and a 60 s TTFT: with the default 500 ms the policy rightly sheds part
# of a 512-stream ramp (429), and a shed request is no measure of the proxy's cost.
TIER = "bench:100:60000"


class RouterProcess(ChildProcess):
    """``polyserve router --no-auth`` over ``backends`` (the idle pool) in a child process."""

    def __init__(self, backends: list[str], profile_to: Path | None = None) -> None:
        port = free_port_run(1)
        cmd = [sys.executable]
        if profile_to is not None:  # cProfile writes it when the router exits on SIGTERM
            cmd += ["-m", "cProfile", "-o", str(profile_to)]
        cmd += ["-m", "polyserve", "router", "--no-auth", "--port", str(port)]
        cmd += ["--log-level", "warning", "--profile", PROFILE, "--tier", TIER]
        cmd += [f"--backend={url}" for url in backends]
        super().__init__(cmd, [f"http://127.0.0.1:{port}"], "router")


@dataclass
class Point:
    requests: int  # requests sent in the window (their TTFTs)
    tokens_per_s: float
    ttft_ms: tuple[float, float]  # p50, p99
    itl_ms: tuple[float, float]
    cpu_pct: dict[str, float]  # process name -> % of one core over the window
    load: float  # 1-minute load average at the window's end


def _sample(
    procs: dict[str, ChildProcess],
    t0: float,
    window: tuple[float, float],
    out: list[dict[str, float]],
    stop: threading.Event,
) -> None:
    """CPU seconds of each child and of this process (``client``) at t0 + each window end."""
    for at in window:
        if stop.wait(max(0.0, t0 + at - time.monotonic())):
            return
        reading = {name: p.cpu_seconds() for name, p in procs.items()}
        reading["client"] = time.process_time()
        out.append(reading)


def measure(
    urls: list[str], concurrency: int, seconds: float, procs: dict[str, ChildProcess]
) -> Point:
    """C closed-loop streams per URL for ``seconds``; figures over the steady window."""
    asyncio.run(closed_loop(urls, 1, 1, seed=99))  # warm-up: imports, first connections
    window = (WINDOW_START_S, seconds)
    readings: list[dict[str, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()
    sampler = threading.Thread(target=_sample, args=(procs, t0, window, readings, stop))
    sampler.start()
    try:
        samples, _ = asyncio.run(
            closed_loop(
                urls, concurrency, concurrency * 50, 5, PROMPTS, OUTPUTS, seconds, ramp=RAMP_S
            )
        )
    finally:
        stop.set()
        sampler.join()
    return _figures(samples, window, readings, t0)


def _figures(
    samples: list[Sample], window: tuple[float, float], readings: list[dict[str, float]], t0: float
) -> Point:
    # closed_loop's clock starts a moment after t0 (the sampler's); the gap is well under 1 ms
    lo, hi = window
    span = hi - lo
    ttft = [s.token_times[0] - s.sent for s in samples if lo <= s.sent < hi]
    itl = [
        b - a for s in samples for a, b in itertools.pairwise(s.token_times) if lo <= a and b < hi
    ]
    tokens = sum(lo <= t < hi for s in samples for t in s.token_times)
    cpu = {k: (readings[1][k] - readings[0][k]) / span * 100.0 for k in readings[0]}
    return Point(
        requests=len(ttft),
        tokens_per_s=tokens / span,
        ttft_ms=(pct(ttft, 50) * 1e3, pct(ttft, 99) * 1e3),
        itl_ms=(pct(itl, 50) * 1e3, pct(itl, 99) * 1e3),
        cpu_pct=cpu,
        load=os.getloadavg()[0],
    )


# ------------------------------------------------------------------ 1. added latency


def added_latency(levels: list[int], seconds: float) -> None:
    print(
        f"added latency: one engine ({PROFILE}), closed loop, prompts {PROMPTS[0]}-{PROMPTS[1]}, "
        f"outputs {OUTPUTS[0]}-{OUTPUTS[1]} tokens; window {WINDOW_START_S:.0f}-{seconds:.0f} s"
    )
    print(
        f"{'C':>4} {'path':>6} {'reqs':>5} {'tokens/s':>8} {'TTFT p50':>8} {'p99':>7} "
        f"{'ITL p50':>7} {'p99':>6} {'engine':>6} {'router':>6} {'client':>6} {'load':>5}"
    )
    for c in levels:
        # C = 1 sends a request every ~2 s: a longer window gets it a few more TTFTs
        span = seconds * 2 if c == 1 else seconds
        points: dict[str, Point] = {}
        for path in ("direct", "router"):
            mock = MockProcess(1, PROFILE)
            router: RouterProcess | None = None
            try:
                procs: dict[str, ChildProcess] = {"engine": mock}
                urls = mock.urls
                if path == "router":
                    router = RouterProcess(mock.urls)
                    procs["router"] = router
                    urls = router.urls
                points[path] = p = measure(urls, c, span, procs)
            finally:
                if router is not None:
                    router.stop()
                mock.stop()
            print(
                f"{c:>4} {path:>6} {p.requests:>5} {p.tokens_per_s:>8.0f} {p.ttft_ms[0]:>6.1f}ms "
                f"{p.ttft_ms[1]:>5.1f}ms {p.itl_ms[0]:>5.2f}ms {p.itl_ms[1]:>4.1f}ms "
                f"{p.cpu_pct['engine']:>5.0f}% {p.cpu_pct.get('router', 0.0):>5.0f}% "
                f"{p.cpu_pct['client']:>5.0f}% {p.load:>5.2f}",
                flush=True,
            )
        d, r = points["direct"], points["router"]
        print(
            f"{c:>4} {'added':>6} {'':>5} {'':>8} {r.ttft_ms[0] - d.ttft_ms[0]:>+6.1f}ms "
            f"{r.ttft_ms[1] - d.ttft_ms[1]:>+5.1f}ms {r.itl_ms[0] - d.itl_ms[0]:>+5.2f}ms "
            f"{r.itl_ms[1] - d.itl_ms[1]:>+4.1f}ms",
            flush=True,
        )


# ------------------------------------------------------------------ 2. throughput


def throughput(levels: list[int], engines: int, seconds: float, profile_to: Path | None) -> None:
    print(
        f"throughput: {engines} engines (one process) behind the router; "
        f"window {WINDOW_START_S:.0f}-{seconds:.0f} s"
    )
    print(
        f"{'C':>5} {'tokens/s':>8} {'router':>6} {'us/token':>8} {'tokens/s/core':>13} "
        f"{'engines':>7} {'client':>6} {'TTFT p50':>8} {'ITL p50':>7} {'p99':>6} {'load':>5}"
    )
    for c in levels:
        prof = profile_to if c == levels[-1] else None
        mock = MockProcess(engines, PROFILE)
        router: RouterProcess | None = None
        try:
            router = RouterProcess(mock.urls, prof)
            p = measure(router.urls, c, seconds, {"engine": mock, "router": router})
        finally:
            if router is not None:
                router.stop()
            mock.stop()
        frac = p.cpu_pct["router"] / 100.0
        print(
            f"{c:>5} {p.tokens_per_s:>8.0f} {p.cpu_pct['router']:>5.0f}% "
            f"{frac / p.tokens_per_s * 1e6:>8.1f} {p.tokens_per_s / frac:>13.0f} "
            f"{p.cpu_pct['engine']:>6.0f}% {p.cpu_pct['client']:>5.0f}% "
            f"{p.ttft_ms[0]:>6.1f}ms {p.itl_ms[0]:>5.2f}ms {p.itl_ms[1]:>4.1f}ms {p.load:>5.2f}"
            + ("  (router under cProfile)" if prof is not None else ""),
            flush=True,
        )
    if profile_to is not None:
        print(f"router profile at C = {levels[-1]} ({profile_to}), by own time:")
        pstats.Stats(str(profile_to)).sort_stats("tottime").print_stats(25)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind through the finally blocks that stop the children


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few seconds per point, fewer levels")
    ap.add_argument("--latency-levels", default="1,64,512")
    ap.add_argument("--throughput-levels", default="64,256,512,1024,2048")
    ap.add_argument("--engines", type=int, default=4, help="engines behind the router (part 2)")
    ap.add_argument("--profile-router", type=Path, help="cProfile output file (part 2, top level)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    seconds = 5.0 if args.quick else 12.0
    lat = [int(x) for x in args.latency_levels.split(",")]
    thr = [int(x) for x in args.throughput_levels.split(",")]
    if args.quick:
        thr = [c for c in thr if c <= 512] or thr[:1]
    print(f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f}")
    added_latency(lat, seconds)
    throughput(thr, args.engines, seconds, args.profile_router)


if __name__ == "__main__":
    main()

"""Fidelity of the mock engine's timing: measured TTFT and inter-token latency vs the engine model.

A closed-loop client keeps C streams open against one ``polyserve mock-engine`` process (C = 1, 8,
32, 128), recording when it sent each request and when each token's SSE event arrived. The same
requests, with the same (measured) arrival times, are then run through a fresh
:class:`polyserve.engine.Engine` in virtual time, and the two distributions are compared at the
median and p99. Both sides use the client's clock, so the measured side includes the HTTP and
client overheads that a real client would see.

    .venv/bin/python bench/mock_fidelity.py [--levels 1,8,32,128] [--profile llama-3.1-8b-h100]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from polyserve.devcluster.procs import exit_with_parent  # noqa: E402
from polyserve.engine import Engine, Request  # noqa: E402
from polyserve.mockengine.testing import free_port_run  # noqa: E402
from polyserve.profile import Profile, load_profile  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    prompt_tokens: int
    output_tokens: int
    sent: float  # seconds since the run's t0
    token_times: list[float]


# ------------------------------------------------------------------ the mock process


class ChildProcess:
    """A server in a child process, ready once every URL answers ``/health``; its log and CPU.

    The child gets SIGTERM if the bench process dies; otherwise call :meth:`stop` (in a
    ``finally``) to end it.
    """

    def __init__(self, cmd: list[str], urls: list[str], what: str) -> None:
        self.urls = urls
        self._output: str | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=exit_with_parent
        )
        try:
            deadline = time.monotonic() + 30
            for url in self.urls:
                while True:
                    try:
                        with urllib.request.urlopen(url + "/health", timeout=1) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        pass
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise RuntimeError(f"the {what} did not start:\n" + self.output)
                    time.sleep(0.05)
        except BaseException:  # Ctrl-C while waiting too
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._output is None:
            self.log.seek(0)
            self._output = self.log.read().decode(errors="replace")
            self.log.close()
        return self._output

    @property
    def output(self) -> str:
        if self._output is not None:
            return self._output
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


class MockProcess(ChildProcess):
    """``polyserve mock-engine`` in a child process, with its log and CPU time."""

    def __init__(self, replicas: int = 1, profile: str = "llama-3.1-8b-h100", *extra: str) -> None:
        self.port = free_port_run(replicas)
        self.replicas = replicas
        cmd = [sys.executable, "-m", "polyserve", "mock-engine", "--port", str(self.port)]
        cmd += ["--replicas", str(replicas), "--profile", profile, *extra]
        urls = [f"http://127.0.0.1:{self.port + i}" for i in range(replicas)]
        super().__init__(cmd, urls, "mock engine")

    def lateness(self) -> list[dict[str, float]]:
        """Per-engine step lateness figures from the shutdown log (call after stop)."""
        pat = re.compile(
            r"(\d+) steps of mean ([\d.]+) ms, lateness mean ([\d.]+) ms, p50 ([\d.]+) ms, "
            r"p99 ([\d.]+) ms, max ([\d.]+) ms, clock restarts (\d+)"
        )
        keys = ("steps", "step_ms", "mean_ms", "p50_ms", "p99_ms", "max_ms", "restarts")
        return [
            dict(zip(keys, map(float, m.groups()), strict=True)) for m in pat.finditer(self.output)
        ]


# ------------------------------------------------------------------ the client


async def stream_one(
    session: aiohttp.ClientSession, url: str, prompt_tokens: int, output_tokens: int, t0: float
) -> Sample:
    body = {
        "prompt": " ".join(["tok"] * (prompt_tokens - 1)),  # + BOS = prompt_tokens
        "max_tokens": output_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    sent = time.monotonic() - t0
    times: list[float] = []
    async with session.post(url + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
        tail = b""
        async for chunk in resp.content.iter_any():
            now = time.monotonic() - t0
            data = tail + chunk
            cut = data.rfind(b"\n\n")
            if cut < 0:
                tail = data
                continue
            complete, tail = data[: cut + 2], data[cut + 2 :]
            n = complete.count(b"\n\n") - complete.count(b"data: [DONE]")
            times.extend([now] * n)
    if len(times) != output_tokens:
        raise RuntimeError(f"expected {output_tokens} tokens, got {len(times)}")
    return Sample(prompt_tokens, output_tokens, sent, times)


async def closed_loop(
    urls: list[str],
    concurrency: int,
    n_requests: int,
    seed: int = 0,
    prompt_range: tuple[int, int] = (128, 1024),
    output_range: tuple[int, int] = (32, 256),
    time_limit: float = 60.0,
    ramp: float = 0.0,
) -> tuple[list[Sample], float]:
    """C streams per URL kept open until ``n_requests`` per URL are done (or the time limit).

    With ``ramp`` the streams start spread over that many seconds instead of all at once.
    """
    rng = random.Random(seed)
    specs = [(rng.randint(*prompt_range), rng.randint(*output_range)) for _ in range(n_requests)]
    samples: list[list[Sample]] = [[] for _ in urls]
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=time_limit + 30)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def worker(k: int, j: int, queue: list[tuple[int, int]]) -> None:
            await asyncio.sleep(ramp * j / concurrency)
            while queue and time.monotonic() - t0 < time_limit:
                p, o = queue.pop()
                samples[k].append(await stream_one(session, urls[k], p, o, t0))

        queues = [list(reversed(specs)) for _ in urls]
        await asyncio.gather(
            *(worker(k, j, queues[k]) for k in range(len(urls)) for j in range(concurrency))
        )
    return [s for per_url in samples for s in per_url], time.monotonic() - t0


async def open_loop(
    url: str, specs: list[tuple[float, int, int]], time_limit: float = 120.0
) -> tuple[list[Sample], float]:
    """Send ``(at, prompt_tokens, output_tokens)`` requests at their times, whatever the replies."""
    samples: list[Sample] = []
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=time_limit)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def fire(at: float, p: int, o: int) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            samples.append(await stream_one(session, url, p, o, t0))

        await asyncio.gather(*(fire(*spec) for spec in specs))
    return samples, time.monotonic() - t0


def poisson_specs(
    profile: Profile,
    concurrency: int,
    n_requests: int,
    seed: int,
    prompt_range: tuple[int, int],
    output_range: tuple[int, int],
) -> list[tuple[float, int, int]]:
    """Poisson arrivals at the rate that keeps ``concurrency`` streams open on average.

    The rate is found by bisection so that the engine model, run on exactly these requests,
    averages ``concurrency`` open streams (queueing included).
    """
    rng = random.Random(seed)
    sizes = [(rng.randint(*prompt_range), rng.randint(*output_range)) for _ in range(n_requests)]
    unit_gaps = [rng.expovariate(1.0) for _ in range(n_requests)]

    def specs(rate: float) -> list[tuple[float, int, int]]:
        out, t = [], 0.0
        for (p, o), g in zip(sizes, unit_gaps, strict=True):
            out.append((t, p, o))
            t += g / rate
        return out

    def model_concurrency(rate: float) -> float:
        sp = specs(rate)
        fake = [Sample(p, o, at, []) for at, p, o in sp]
        for sample, times in zip(fake, replay(profile, fake), strict=True):
            sample.token_times = times
        return mean_concurrency(fake)

    lo, hi = 0.01, 10_000.0
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        if model_concurrency(mid) < concurrency:
            lo = mid
        else:
            hi = mid
    return specs(lo)


def mean_concurrency(samples: list[Sample]) -> float:
    """Time-averaged number of open streams between the first send and the last token."""
    start = min(s.sent for s in samples)
    end = max(s.token_times[-1] for s in samples)
    return sum(s.token_times[-1] - s.sent for s in samples) / (end - start)


# ------------------------------------------------------------------ the model's prediction


def replay(profile: Profile, samples: list[Sample]) -> list[list[float]]:
    """Token times of the same requests, arriving at the same times, in the engine model."""
    engine = Engine(profile)
    order = sorted(range(len(samples)), key=lambda i: samples[i].sent)
    reqs: dict[int, Request] = {}
    t = 0.0
    k = 0
    while k < len(order) or engine.has_work:
        if not engine.has_work:
            t = max(t, samples[order[k]].sent)
        while k < len(order) and samples[order[k]].sent <= t:
            i = order[k]
            reqs[i] = Request(i, samples[i].prompt_tokens, samples[i].output_tokens, arrival=t)
            engine.add(reqs[i])
            k += 1
        res = engine.step(t)
        t = res.end if res.duration_ms > 0 else t
    return [engine.token_times(reqs[i]) for i in range(len(samples))]


async def http_floor(url: str, prompt_tokens: int, n: int = 30) -> float:
    """Median round trip of a POST /tokenize with a prompt of that size: the HTTP + JSON cost
    that every measured TTFT carries on top of the engine's time."""
    body = {"prompt": " ".join(["tok"] * (prompt_tokens - 1))}
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            t = time.monotonic()
            async with session.post(url + "/tokenize", json=body) as resp:
                await resp.read()
            times.append(time.monotonic() - t)
    return float(np.median(times))


def scrape_sums(url: str) -> dict[str, float]:
    """``_sum`` and ``_count`` of the mock's TTFT and inter-token histograms."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds"):
            for smp in fam.samples:
                if smp.name.endswith(("_sum", "_count")):
                    out[smp.name] = smp.value
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def compare(samples: list[Sample], predicted: list[list[float]]) -> dict[str, float]:
    ttft_m = [s.token_times[0] - s.sent for s in samples]
    ttft_p = [p[0] - s.sent for s, p in zip(samples, predicted, strict=True)]
    itl_m = [b - a for s in samples for a, b in itertools.pairwise(s.token_times)]
    itl_p = [b - a for p in predicted for a, b in itertools.pairwise(p)]
    tpot_m = [(s.token_times[-1] - s.token_times[0]) / (s.output_tokens - 1) for s in samples]
    tpot_p = [(p[-1] - p[0]) / (len(p) - 1) for p in predicted]
    out: dict[str, float] = {}
    for name, meas, pred in (
        ("ttft", ttft_m, ttft_p),
        ("itl", itl_m, itl_p),
        ("tpot", tpot_m, tpot_p),
    ):
        for q in (50, 99):
            m, p = pct(meas, q), pct(pred, q)
            out[f"{name}_p{q}_measured_ms"] = m * 1e3
            out[f"{name}_p{q}_model_ms"] = p * 1e3
            out[f"{name}_p{q}_err_pct"] = (m - p) / p * 100.0
    return out


PROMPTS = (128, 1024)
OUTPUTS = (16, 128)


def run_level(
    profile_name: str, concurrency: int, n_requests: int, seed: int, closed: bool
) -> dict[str, float]:
    profile = load_profile(profile_name)
    mock = MockProcess(1, profile_name)
    try:
        asyncio.run(closed_loop(mock.urls, 1, 2, seed=99))  # warm-up (imports, first connection)
        floor = asyncio.run(http_floor(mock.urls[0], sum(PROMPTS) // 2))
        cpu0 = mock.cpu_seconds()
        before = scrape_sums(mock.urls[0])
        if closed:
            samples, wall = asyncio.run(
                closed_loop(mock.urls, concurrency, n_requests, seed, PROMPTS, OUTPUTS)
            )
        else:
            specs = poisson_specs(profile, concurrency, n_requests, seed, PROMPTS, OUTPUTS)
            samples, wall = asyncio.run(open_loop(mock.urls[0], specs))
        cpu = mock.cpu_seconds() - cpu0
        after = scrape_sums(mock.urls[0])
    finally:
        mock.stop()
    predicted = replay(profile, samples)
    result = compare(samples, predicted)
    # the mock's own view (its vLLM histograms): mean TTFT and mean inter-token latency
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    ttft_model = float(np.mean([p[0] - s.sent for s, p in zip(samples, predicted, strict=True)]))
    itl_model = float(np.mean([b - a for p in predicted for a, b in itertools.pairwise(p)]))
    ttft_srv = (
        d["vllm:time_to_first_token_seconds_sum"] / d["vllm:time_to_first_token_seconds_count"]
    )
    itl_srv = (
        d["vllm:inter_token_latency_seconds_sum"] / d["vllm:inter_token_latency_seconds_count"]
    )
    p50_model = result["ttft_p50_model_ms"]
    result.update(
        http_floor_ms=floor * 1e3,
        ttft_p50_net_err_pct=(result["ttft_p50_measured_ms"] - floor * 1e3 - p50_model)
        / p50_model
        * 100.0,
        server_ttft_mean_err_pct=(ttft_srv - ttft_model) / ttft_model * 100.0,
        server_itl_mean_err_pct=(itl_srv - itl_model) / itl_model * 100.0,
    )
    result.update(
        concurrency=concurrency,
        achieved=mean_concurrency(samples),
        requests=len(samples),
        tokens=sum(s.output_tokens for s in samples),
        wall_s=wall,
        mock_cpu_pct=cpu / wall * 100.0,
    )
    late = mock.lateness()
    if late:
        result.update(lateness_p50_ms=late[0]["p50_ms"], lateness_p99_ms=late[0]["p99_ms"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--levels", default="1,8,32,128", help="concurrent streams, comma-separated")
    ap.add_argument("--profile", default="llama-3.1-8b-h100")
    ap.add_argument("--requests", type=int, default=3, help="requests per stream (min 20)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--closed", action="store_true", help="closed loop (C clients) instead of Poisson arrivals"
    )
    args = ap.parse_args()
    mode = "closed loop" if args.closed else "Poisson arrivals (open loop)"
    print(
        f"profile {args.profile}; {mode}; prompts {PROMPTS[0]}-{PROMPTS[1]} tokens, "
        f"outputs {OUTPUTS[0]}-{OUTPUTS[1]} tokens (ignore_eos)"
    )
    print(
        f"{'C':>4} {'mean C':>6} {'reqs':>5} {'TTFT p50 meas/model':>20} {'err':>6} {'net':>6} "
        f"{'p99 err':>7} {'ITL p50 meas/model':>19} {'err':>6} {'p99 err':>7} "
        f"{'TPOT p50 err':>12} {'p99 err':>7} {'srv TTFT/ITL mean err':>21} "
        f"{'late p50/p99':>13} {'mock CPU':>8}"
    )
    floors = []
    for c in (int(x) for x in args.levels.split(",")):
        r = run_level(args.profile, c, max(20, c * args.requests), args.seed, args.closed)
        print(
            f"{c:>4} {r['achieved']:>6.1f} {int(r['requests']):>5} "
            f"{r['ttft_p50_measured_ms']:>8.1f}/{r['ttft_p50_model_ms']:<7.1f}ms "
            f"{r['ttft_p50_err_pct']:>+5.1f}% {r['ttft_p50_net_err_pct']:>+5.1f}% "
            f"{r['ttft_p99_err_pct']:>+6.1f}% "
            f"{r['itl_p50_measured_ms']:>7.2f}/{r['itl_p50_model_ms']:<7.2f}ms "
            f"{r['itl_p50_err_pct']:>+5.1f}% {r['itl_p99_err_pct']:>+6.1f}% "
            f"{r['tpot_p50_err_pct']:>+11.1f}% {r['tpot_p99_err_pct']:>+6.1f}% "
            f"{r['server_ttft_mean_err_pct']:>+12.1f}%/{r['server_itl_mean_err_pct']:>+6.1f}% "
            f"{r.get('lateness_p50_ms', float('nan')):>6.1f}/{r.get('lateness_p99_ms', float('nan')):<4.1f}ms "
            f"{r['mock_cpu_pct']:>7.0f}%",
            flush=True,
        )
        floors.append(r["http_floor_ms"])
    print(
        f"HTTP floor (median POST /tokenize round trip, {sum(PROMPTS) // 2}-token prompt): "
        + ", ".join(f"{f:.2f}" for f in floors)
        + " ms; 'net' = TTFT error after subtracting it"
    )


if __name__ == "__main__":
    main()

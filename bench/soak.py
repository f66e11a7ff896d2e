"""A bounded soak of the local fleet: steady load for minutes; attainment, memory, descriptors, losses.

The fleet is the one ``polyserve up`` runs (``polyserve/local``: the default three tiers on A100
mock engines, or ``--config FILE``), started in this process on loopback: the engines are child
processes, the router serves on ``127.0.0.1`` from this process's event loop. **The autoscaler is
off**: the fleet stays at the engines each tier starts with, so "70 % of capacity" is a fixed rate
for the whole run and a change in memory or attainment cannot come from engines coming and going.

Capacity per tier is the project's own fluid capacity (``polyserve.profile.tier_capacity``, what
the autoscaler's ``typical_capacity_rps`` computes) over the lengths the soak sends: the Azure
conversation trace's, capped at ``--max-prompt``/``--max-output``, times the tier's engines. Each
tier then gets an open-loop Poisson stream at ``--load`` times its capacity (a slow answer does not
slow the arrivals), for ``--minutes``. Requests alternate chat and completions; three in four are
streamed. Every request has a client timeout (``--timeout-s``) and the whole run a hard deadline
(the load, then at most the timeout and a margin to drain).

Every answer is classified by the fault suite's accounting (``tests/reliability/harness.py``):
complete, clear error, 429 with Retry-After, or anomaly (a hang, a cut stream, a bad body).
Every ``--sample-s`` a window is recorded: this process's VmRSS and open descriptors (router *and*
load client: they share the process), the same summed over the engine processes, the requests
sent and the outcomes that ended in the window, those still in flight, and per tier the router's
own SLO attainment over the window (``/polyserve/v1/state``'s measured/attained/shed counters:
attained over judged plus shed, as the autoscaler reports it). A last window covers the drain and
ends at rest (``--rest-s`` after the last answer), to compare with the baseline taken before the
load. Descriptors follow the requests in flight (here about three per request: the client's
socket, the router's accepted one, the router's connection to an engine) and the router's pool
of connections to the engines, which keeps its peak size: aiohttp reuses the oldest idle
connection, and the router's per-engine scrape (1 s) and health check (2 s) touch each pooled
connection before its 30 s keep-alive runs out. So each sample also counts those connections
(``upst``: this process's TCP sockets to an engine's port), and the at-rest line separates them
from whatever else stayed open.

At the end: a table per window, and a summary with sent against outcomes (lost must be 0), the
router's own count, RSS and descriptor drift from the first load window to the last and their
slope per minute over the second half, and attainment min/max across the windows. The samples go
to ``out/soak/soak.json``. Exit status 1 if a request was lost, an anomaly occurred, or the
router's books disagree; 130 after Ctrl-C (which stops the load, drains briefly and stops every
engine; the engines also die with this process, ``PR_SET_PDEATHSIG``).

    .venv/bin/python bench/soak.py [--minutes 10] [--load 0.7] [--sample-s 30]   # make soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.reliability

import aiohttp
import numpy as np

from polyserve.autoscale.signals import window_attainment
from polyserve.loadgen.plan import prompt_text
from polyserve.local.config import LocalConfig, load_local_config
from polyserve.local.up import LocalFleet
from polyserve.profile import tier_capacity
from polyserve.router.server import Router
from polyserve.router.state import router_state
from polyserve.sim.workload import shapes_for
from tests.reliability import harness
from tests.reliability.burst import rss_kib

WORKLOAD = "azure-conv"


@dataclass(frozen=True)
class TierLoad:
    name: str
    tpot_ms: float
    ttft_ms: float
    engines: int
    capacity_rps: float  # one engine, over the soak's lengths
    rate_rps: float  # what the soak sends: load x engines x capacity


@dataclass
class Counts:
    sent: int = 0
    complete: int = 0
    error: int = 0
    rejected: int = 0
    anomaly: int = 0

    @property
    def ended(self) -> int:
        return self.complete + self.error + self.rejected + self.anomaly

    def add(self, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)


@dataclass
class Sample:
    window: int
    phase: str  # baseline (before any load) | load | drain (after the last arrival)
    t_s: float  # end of the window, seconds from the start of the load
    sent: int
    complete: int
    error: int
    rejected: int
    anomaly: int
    in_flight: int  # sent and not ended at the end of the window
    upstream: int  # the router's connections to the engines (in use or pooled)
    rss_mib: float  # this process: the router and the load client
    fds: int
    engines: int
    engine_rss_mib: float  # summed over the engine processes
    engine_fds: int
    attainment: dict[str, float | None]  # per tier, over the requests that ended in the window
    judged: dict[str, int]  # per tier: measured + shed in the window (attainment's denominator)


@dataclass
class Soak:
    """The running soak's books: totals, the open window, the requests in flight."""

    fleet: LocalFleet
    router: Router
    t0: float = 0.0
    load_s: float = 0.0  # how long arrivals ran (less than --minutes after Ctrl-C)
    total: Counts = field(default_factory=Counts)
    window: Counts = field(default_factory=Counts)
    samples: list[Sample] = field(default_factory=list)
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)  # error detail -> count
    anomalies: list[str] = field(default_factory=list)  # the first few, in full
    anomaly_kinds: Counter[str] = field(default_factory=Counter)
    _slo: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # measured, attained, shed

    def record(self, kind: str, detail: str, what: str) -> None:
        self.total.add(kind)
        self.window.add(kind)
        if kind == "error":
            self.errors[detail[:100]] += 1
        elif kind == "anomaly":
            self.anomaly_kinds[detail[:60]] += 1
            if len(self.anomalies) < 20:
                self.anomalies.append(f"{what}: {detail}")

    def take_sample(self, phase: str) -> Sample:
        st = router_state(self.router.all_pools(), self.router.now(), time.time())
        attainment: dict[str, float | None] = {}
        judged: dict[str, int] = {}
        for t in st.tiers:
            now = (t.measured_total, t.attained_total, t.shed_total)
            m0, a0, s0 = self._slo.get(t.name, (0, 0, 0))
            self._slo[t.name] = now
            dm, da, ds = now[0] - m0, now[1] - a0, now[2] - s0
            attainment[t.name] = window_attainment(dm, da, ds)
            judged[t.name] = dm + ds
        engines = [e.proc.pid for e in self.fleet.engines.running.values()]
        ports = {e.port for e in self.fleet.engines.running.values()}
        w = self.window
        s = Sample(
            window=len(self.samples),
            phase=phase,
            t_s=round(time.monotonic() - self.t0, 1) if self.t0 else 0.0,
            sent=w.sent,
            complete=w.complete,
            error=w.error,
            rejected=w.rejected,
            anomaly=w.anomaly,
            in_flight=len(self.in_flight),
            upstream=connections_to(os.getpid(), ports),
            rss_mib=round(rss_kib(os.getpid()) / 1024, 2),
            fds=fd_count(os.getpid()),
            engines=len(engines),
            engine_rss_mib=round(sum(_or0(rss_kib, p) for p in engines) / 1024, 2),
            engine_fds=sum(_or0(fd_count, p) for p in engines),
            attainment=attainment,
            judged=judged,
        )
        self.samples.append(s)
        self.window = Counts()
        return s


def fd_count(pid: int) -> int:
    """Open file descriptors of a process (entries of ``/proc/<pid>/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def connections_to(pid: int, ports: set[int]) -> int:
    """A process's TCP sockets whose remote end is one of ``ports`` (its fds' socket inodes
    looked up in ``/proc/<pid>/net/tcp``)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) in ports:
                n += 1
    return n


def _or0(f: Callable[[int], int], pid: int) -> int:
    try:
        return f(pid)
    except (OSError, RuntimeError):  # the process just ended
        return 0


def soak_lengths(max_prompt: int, max_output: int) -> list[tuple[int, int]]:
    return [
        (max(1, min(s.prompt_tokens, max_prompt)), max(1, min(s.output_tokens, max_output)))
        for s in shapes_for(WORKLOAD, None, 0)
    ]


def tier_loads(fleet: LocalFleet, lengths: list[tuple[int, int]], load: float) -> list[TierLoad]:
    prompts = np.array([p for p, _ in lengths])
    outputs = np.array([o for _, o in lengths])
    out = []
    for t in fleet.cfg.tiers:
        cap = tier_capacity(fleet.profile, t.tpot_ms, prompts, outputs)
        out.append(TierLoad(t.name, t.tpot_ms, t.ttft_ms, t.replicas, cap, load * t.replicas * cap))
    return out


def make_req(i: int, model: str, tier: str, prompt: int, output: int) -> harness.Req:
    path = harness.CHAT if i % 2 == 0 else harness.COMPLETIONS
    stream = i % 4 != 3
    text = prompt_text(prompt, i)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": output,
        "stream": stream,
        "ignore_eos": True,
    }
    if path == harness.CHAT:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return harness.Req(i, path, stream, body, {"x-polyserve-tier": tier})


async def _sleep_until(deadline: float, stop: asyncio.Event) -> bool:
    """Sleep until the monotonic ``deadline``; False if ``stop`` was set first."""
    delay = deadline - time.monotonic()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return not stop.is_set()


async def drive(
    soak: Soak,
    session: aiohttp.ClientSession,
    loads: list[TierLoad],
    lengths: list[tuple[int, int]],
    args: argparse.Namespace,
    stop: asyncio.Event,
) -> None:
    """Open-loop Poisson arrivals, each tier at its rate, until the load's end (or ``stop``)."""
    rng = random.Random(args.seed)
    rates = [t.rate_rps for t in loads]
    total = sum(rates)
    duration = args.minutes * 60.0
    model = soak.fleet.model
    base = soak.router.url
    at = 0.0
    i = 0
    while total > 0:
        at += rng.expovariate(total)
        if at >= duration or not await _sleep_until(soak.t0 + at, stop):
            return
        tier = rng.choices(loads, weights=rates)[0]
        prompt, output = lengths[rng.randrange(len(lengths))]
        req = make_req(i, model, tier.name, prompt, output)
        i += 1

        async def one(req: harness.Req = req) -> None:
            try:
                out = await harness.send_one(session, base, req, args.timeout_s)
            except asyncio.CancelledError:
                soak.record("anomaly", "still running when the soak stopped", req.describe())
                raise
            soak.record(out.kind, out.detail, req.describe())

        soak.total.sent += 1
        soak.window.sent += 1
        task = asyncio.ensure_future(one())
        soak.in_flight.add(task)
        task.add_done_callback(soak.in_flight.discard)


async def sample_windows(soak: Soak, sample_s: float, duration: float, stop: asyncio.Event) -> None:
    k = 1
    while True:
        end = min(k * sample_s, duration)
        going = await _sleep_until(soak.t0 + end, stop)
        s = soak.take_sample("load")
        print(row(s, list(s.attainment)), flush=True)
        if not going or end >= duration:
            return
        k += 1


async def settle(router: Router, timeout_s: float) -> bool:
    """Wait until the router holds no request (queued or on a backend)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pools = router.all_pools()
        queued = sum(len(p.queues) for p in pools)
        resident = sum(b.view.residents for p in pools for b in p.backends.values())
        if queued == 0 and resident == 0:
            return True
        await asyncio.sleep(0.1)
    return False


def router_counted(router: Router) -> dict[str, dict[str, int]]:
    """``polyserve_router_requests_total`` per tier and outcome (read in-process)."""
    out: dict[str, dict[str, int]] = {}
    for metric in router.metrics.requests.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and s.value:
                tier = out.setdefault(s.labels["tier"], {})
                tier[s.labels["outcome"]] = tier.get(s.labels["outcome"], 0) + int(s.value)
    return out


HEADER = (
    f"{'win':>3} {'phase':<8} {'t s':>6} {'sent':>5} {'ok':>5} {'err':>4} {'429':>4} {'anom':>4} "
    f"{'infl':>4} {'upst':>4} {'RSS MiB':>8} {'fds':>4} {'eng RSS':>8} {'eng fds':>7}"
)


def row(s: Sample, tiers: list[str]) -> str:
    att = " ".join(
        f"{'-' if s.attainment.get(t) is None else f'{s.attainment[t]:.1%}':>7}" for t in tiers
    )
    return (
        f"{s.window:>3} {s.phase:<8} {s.t_s:>6.1f} {s.sent:>5} {s.complete:>5} {s.error:>4} "
        f"{s.rejected:>4} {s.anomaly:>4} {s.in_flight:>4} {s.upstream:>4} {s.rss_mib:>8.1f} {s.fds:>4} "
        f"{s.engine_rss_mib:>8.1f} {s.engine_fds:>7} {att}"
    )


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope (per minute) of ``(t_s, value)`` points; None for fewer than two."""
    if len(points) < 2 or len({t for t, _ in points}) < 2:
        return None
    t = np.array([p[0] for p in points]) / 60.0
    v = np.array([p[1] for p in points])
    return float(np.polyfit(t, v, 1)[0])


def summarize(
    soak: Soak, loads: list[TierLoad], duration: float, settled: bool, interrupted: bool
) -> tuple[list[str], list[str]]:
    """The summary's lines, and the reasons the soak failed (empty: it passed)."""
    lines: list[str] = []
    failures: list[str] = []
    tot = soak.total
    lost = tot.sent - tot.ended
    counted = router_counted(soak.router)
    n_counted = sum(n for tier in counted.values() for n in tier.values())
    lines.append(
        f"sent {tot.sent} = complete {tot.complete} + error {tot.error} + 429 {tot.rejected}"
        f" + anomaly {tot.anomaly} + lost {lost}"
        f" ({tot.sent / max(soak.load_s, 1e-9):.2f} req/s sent, planned {sum(t.rate_rps for t in loads):.2f})"
    )
    per_tier = "; ".join(f"{t} {dict(sorted(o.items()))}" for t, o in counted.items())
    lines.append(f"router counted {n_counted}: {per_tier}")
    if soak.errors:
        lines.append("errors: " + "; ".join(f"{n} x {d}" for d, n in soak.errors.most_common(5)))
    if lost:
        failures.append(f"{lost} requests lost (sent without an outcome)")
    if tot.anomaly:
        failures.append(f"{tot.anomaly} anomalies: {dict(soak.anomaly_kinds)}")
        lines.extend(f"  {a}" for a in soak.anomalies)
    if n_counted != tot.sent:
        failures.append(f"the router counted {n_counted} requests, the client sent {tot.sent}")
    if not settled:
        failures.append("the router still held requests after the drain")

    load = [s for s in soak.samples if s.phase == "load"]
    if load:
        first, last = load[0], load[-1]
        half = [(s.t_s, s) for s in load if s.t_s >= duration / 2]
        for label, key in (
            ("RSS, this process (router + load client)", "rss_mib"),
            ("open fds, this process", "fds"),
            ("RSS, engines (sum)", "engine_rss_mib"),
            ("open fds, engines (sum)", "engine_fds"),
        ):
            a, b = getattr(first, key), getattr(last, key)
            slope = slope_per_min([(t, getattr(s, key)) for t, s in half])
            unit = " MiB" if "rss" in key else ""
            slope_txt = "n/a (fewer than 2 samples)" if slope is None else f"{slope:+.2f}{unit}/min"
            lines.append(
                f"{label}: first window {a:.1f}{unit}, last {b:.1f}{unit} ({b - a:+.1f}{unit});"
                f" second-half slope {slope_txt}"
            )
        lines.append(
            f"in flight (fds follow it: about 3 per request here, 1 per engine):"
            f" first window {first.in_flight}, last {last.in_flight};"
            f" the router's connections to the engines: first {first.upstream}, last {last.upstream}"
        )
        base = soak.samples[0]
        drain = [s for s in soak.samples if s.phase == "drain"]
        if drain:
            d = drain[-1]
            pooled = d.upstream - base.upstream
            lines.append(
                f"at rest after the drain vs the baseline: RSS {d.rss_mib:.1f} MiB"
                f" ({d.rss_mib - base.rss_mib:+.1f}), fds {d.fds} ({d.fds - base.fds:+d}, of which"
                f" {pooled:+d} the router's pooled connections to the engines, rest"
                f" {d.fds - base.fds - pooled:+d}); engines RSS {d.engine_rss_mib:.1f} MiB"
                f" ({d.engine_rss_mib - base.engine_rss_mib:+.1f}), fds {d.engine_fds}"
                f" ({d.engine_fds - base.engine_fds:+d})"
            )
        for t in loads:
            vals = [s.attainment[t.name] for s in load if s.attainment.get(t.name) is not None]
            vs = [v for v in vals if v is not None]
            judged = sum(s.judged.get(t.name, 0) for s in load)
            span = f"min {min(vs):.1%}, max {max(vs):.1%}" if vs else "no request judged"
            lines.append(
                f"attainment {t.name} ({t.tpot_ms:g}/{t.ttft_ms:g} ms) across {len(vs)} windows:"
                f" {span} ({judged} judged)"
            )
    if interrupted:
        failures.append("interrupted (Ctrl-C or SIGTERM)")
    return lines, failures


async def run(args: argparse.Namespace) -> int:
    cfg: LocalConfig = load_local_config(args.config)
    cfg = cfg.model_copy(update={"port": 0, "host": "127.0.0.1", "autoscale": False})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    duration = args.minutes * 60.0
    lengths = soak_lengths(args.max_prompt, args.max_output)
    fleet = LocalFleet(cfg, announce=lambda line: print(line, flush=True))
    try:
        router = await fleet.start()
        loads = tier_loads(fleet, lengths, args.load)
        print(f"fleet: {len(fleet.engines.running)} engines ({cfg.profile}), router {router.url}")
        for t in loads:
            print(
                f"  {t.name}: {t.engines} engines x {t.capacity_rps:.2f} req/s capacity"
                f" ({WORKLOAD}, prompts <= {args.max_prompt}, outputs <= {args.max_output})"
                f" -> {t.rate_rps:.2f} req/s at {args.load:.0%}"
            )
        soak = Soak(fleet, router)
        tiers = [t.name for t in loads]
        print(HEADER + " " + " ".join(f"{t:>7}" for t in tiers), flush=True)
        print(row(soak.take_sample("baseline"), tiers), flush=True)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            soak.t0 = time.monotonic()
            sampler = asyncio.ensure_future(sample_windows(soak, args.sample_s, duration, stop))
            await drive(soak, session, loads, lengths, args, stop)
            soak.load_s = min(duration, time.monotonic() - soak.t0)
            await sampler
            # The drain: every request ends within its timeout; the hard deadline is a margin on
            # that (and a short one after Ctrl-C). What is still running then is an anomaly.
            interrupted = stop.is_set()
            grace = 10.0 if interrupted else args.timeout_s + 15.0
            end = time.monotonic() + grace
            while soak.in_flight and time.monotonic() < end:
                left = max(0.0, min(1.0, end - time.monotonic()))
                await asyncio.wait(list(soak.in_flight), timeout=left)
                if stop.is_set() and not interrupted:  # Ctrl-C during the drain: hurry
                    interrupted, end = True, min(end, time.monotonic() + 10.0)
            for task in list(soak.in_flight):
                task.cancel()
            await asyncio.gather(*soak.in_flight, return_exceptions=True)
        # At rest: the client's connections are closed, the router holds no request. What stays
        # open above the baseline, less the router's pooled connections to the engines, leaked.
        settled = await settle(router, 10.0)
        await _sleep_until(time.monotonic() + args.rest_s, stop)
        drain = soak.take_sample("drain")
        print(row(drain, tiers), flush=True)
        lines, failures = summarize(soak, loads, duration, settled, interrupted)
    finally:
        await fleet.close()
    print()
    for line in lines:
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "soak.json"
    report = {
        "config": {
            "minutes": args.minutes,
            "load": args.load,
            "sample_s": args.sample_s,
            "timeout_s": args.timeout_s,
            "seed": args.seed,
            "workload": WORKLOAD,
            "max_prompt": args.max_prompt,
            "max_output": args.max_output,
            "profile": cfg.profile,
            "autoscale": False,
            "tiers": [asdict(t) for t in loads],
        },
        "samples": [asdict(s) for s in soak.samples],
        "totals": asdict(soak.total),
        "router_counted": router_counted(router),
        "summary": lines,
        "failures": failures,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"samples: {path}")
    if failures:
        print("SOAK FAILED: " + "; ".join(failures))
        return 130 if interrupted else 1
    print("soak passed: no request lost, no anomaly")
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of load")
    ap.add_argument("--load", type=float, default=0.7, help="share of each tier's capacity")
    ap.add_argument("--sample-s", type=float, default=30.0, help="seconds per window")
    ap.add_argument("--timeout-s", type=float, default=120.0, help="client timeout per request")
    ap.add_argument("--max-prompt", type=int, default=4096, help="prompt tokens cap")
    ap.add_argument("--max-output", type=int, default=512, help="output tokens cap")
    ap.add_argument("--rest-s", type=float, default=5.0, help="idle seconds before the last sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", type=Path, default=None, help="local fleet file (polyserve up)")
    ap.add_argument("--out", type=Path, default=Path("out/soak"), help="where soak.json goes")
    args = ap.parse_args()
    if args.minutes <= 0 or args.load <= 0 or args.sample_s <= 0 or args.timeout_s <= 0:
        ap.error("--minutes, --load, --sample-s and --timeout-s must be positive")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()

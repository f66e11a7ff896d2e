"""A burst of many times a fleet's capacity at a ``polyserve router`` child process, with its memory.

The fleet: mock engines whose profile runs ``max_num_seqs`` requests at most (every step 5 ms), and
the router's tier on the same profile, so the router knows the capacity (engines x max_num_seqs).
Each wave sends ``per_wave`` requests at once; the router's resident set size (VmRSS from
``/proc/<pid>/status``) and its queue length (``/polyserve/v1/state``) are sampled meanwhile.
Shared by the fault suite (small, generous bounds) and ``bench/burst.py`` (the figures).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from polyserve.mockengine import MockEngineSettings, MockEngineThread
from polyserve.mockengine.testing import free_port_run
from tests.mockengine.conftest import fast_profile
from tests.reliability import harness

TIER = "burst"


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class BurstResult:
    capacity: int
    queue_limit: int
    rss_start_kib: int  # after start-up and a few warm-up requests
    rss_peak_kib: int = 0  # highest sample while the waves ran
    rss_after_kib: list[int] = field(default_factory=list)  # after each wave, once it settled
    max_pending: int = 0  # the router's queue, all tiers, highest sample
    tallies: list[harness.Tally] = field(default_factory=list)
    counted: float = 0.0  # polyserve_router_requests_total over the waves, all outcomes

    @property
    def sent(self) -> int:
        return sum(t.sent for t in self.tallies)


async def _state(session: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with session.get(url + "/polyserve/v1/state") as resp:
        data: dict[str, object] = await resp.json()
        return data


async def _counted(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("polyserve_router_requests_total{")
    )


async def _drive(
    url: str, pid: int, waves: int, per_wave: int, result: BurstResult, timeout_s: float
) -> None:
    async with aiohttp.ClientSession() as session:

        async def pending_and_busy() -> tuple[int, int]:
            st = await _state(session, url)
            tiers = st["tiers"]
            backends = st["backends"]
            assert isinstance(tiers, list) and isinstance(backends, list)
            return sum(t["pending"] for t in tiers), sum(b["requests"] for b in backends)

        warm = harness.mix(8, fast_profile().model, tiers=(TIER,), max_tokens=(4, 8))
        (await harness.send_all(url, warm, 4, timeout_s)).check()
        result.tallies.clear()
        result.rss_start_kib = rss_kib(pid)
        for wave in range(waves):
            stop = asyncio.Event()

            async def sample(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    result.rss_peak_kib = max(result.rss_peak_kib, rss_kib(pid))
                    pending, _ = await pending_and_busy()
                    result.max_pending = max(result.max_pending, pending)
                    await asyncio.sleep(0.05)

            sampler = asyncio.ensure_future(sample(stop))
            reqs = harness.mix(
                per_wave, fast_profile().model, tiers=(TIER,), max_tokens=(16, 32), seed=wave
            )
            try:
                tally = await harness.send_all(url, reqs, per_wave, timeout_s)
            finally:
                stop.set()
                await sampler
            result.tallies.append(tally)
            deadline = time.monotonic() + 10.0
            while await pending_and_busy() != (0, 0):
                if time.monotonic() > deadline:
                    raise AssertionError("the router's books did not empty after a wave")
                await asyncio.sleep(0.05)
            result.rss_after_kib.append(rss_kib(pid))
        result.counted = await _counted(session, url) - len(warm)


def run_burst(
    workdir: Path,
    waves: int = 3,
    per_wave: int = 80,
    engines: int = 2,
    max_num_seqs: int = 4,
    queue_limit: int = 16,
    timeout_s: float = 30.0,
) -> BurstResult:
    profile = fast_profile(max_num_seqs=max_num_seqs)
    path = workdir / "burst-profile.yaml"
    path.write_text(yaml.safe_dump(json.loads(profile.model_dump_json())))
    result = BurstResult(engines * max_num_seqs, queue_limit, 0)
    with MockEngineThread(MockEngineSettings(port=0, replicas=engines), profile) as fleet:
        port = free_port_run(1)
        cmd = [sys.executable, "-m", "polyserve", "router", "--no-auth", "--port", str(port)]
        cmd += ["--profile", str(path), "--tier", f"{TIER}:50:1000"]
        cmd += ["--queue-limit", str(queue_limit), "--log-level", "warning"]
        cmd += [f"--backend={u}@{TIER}" for u in fleet.urls]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_up(url, proc, 30.0)
            asyncio.run(_drive(url, proc.pid, waves, per_wave, result, timeout_s))
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=15)
        if b"Traceback" in out:
            raise AssertionError(out.decode(errors="replace")[-3000:])
    return result


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the router exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the router did not come up in {timeout_s} s")

"""A burst at the router: 10x the fleet's capacity at once, in waves; the router's memory.

Two mock engines (``max_num_seqs`` 4, every step 5 ms) behind a ``polyserve router`` child process
whose tier runs on the same profile (capacity 8 requests), ``--queue-limit 16``. Each wave sends
80 requests at once (a mix of streamed and whole chat/completions, 16-32 output tokens); what
does not fit the running cap and the queue gets 429 + Retry-After. Printed: every request's
outcome per wave, the router's highest queue length, and its resident set size (VmRSS from
/proc/<pid>/status) at the start, at the peak, and after each wave once its books were empty.

    .venv/bin/python bench/burst.py [--waves N] [--per-wave N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.reliability

from tests.reliability.burst import run_burst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--waves", type=int, default=10)
    ap.add_argument("--per-wave", type=int, default=80)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = run_burst(Path(tmp), waves=args.waves, per_wave=args.per_wave)
    print(f"capacity {res.capacity}, queue limit {res.queue_limit}, {args.per_wave} per wave")
    print(
        f"{'wave':>4} {'sent':>5} {'ok':>4} {'429':>4} {'error':>5} {'lost':>4} {'s':>5} {'RSS after MiB':>13}"
    )
    for i, (t, rss) in enumerate(zip(res.tallies, res.rss_after_kib, strict=True)):
        c = t.counts()
        print(
            f"{i + 1:>4} {t.sent:>5} {c['complete']:>4} {c['rejected']:>4} {c['error']:>5} "
            f"{c['anomaly']:>4} {t.wall_s:>5.1f} {rss / 1024:>13.1f}"
        )
    print(f"router counted {res.counted:.0f} of {res.sent} sent; highest queue {res.max_pending}")
    print(
        f"router VmRSS: start {res.rss_start_kib / 1024:.1f} MiB, peak {res.rss_peak_kib / 1024:.1f}"
        f" MiB, after the last wave {res.rss_after_kib[-1] / 1024:.1f} MiB"
        f" ({(res.rss_after_kib[-1] - res.rss_start_kib) / 1024:+.1f} MiB)"
    )


if __name__ == "__main__":
    main()

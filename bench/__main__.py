"""`make bench`: run every benchmark script in this folder in turn (each prints its own figures)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent

for script in sorted(HERE.glob("*.py")):
    if script.name.startswith("_"):
        continue
    print(f"\n== {script.name}", flush=True)
    sys.argv = [str(script)]
    runpy.run_path(str(script), run_name="__main__")

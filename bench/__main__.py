"""`make bench`: run every benchmark script in this folder in turn (each prints its own figures).

The soak (``soak.py``, ten minutes by default) has its own target, ``make soak``, and is left out.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent
OWN_TARGET = {"soak.py"}  # run by its own make target

for script in sorted(HERE.glob("*.py")):
    if script.name.startswith("_") or script.name in OWN_TARGET:
        continue
    print(f"\n== {script.name}", flush=True)
    sys.argv = [str(script)]
    runpy.run_path(str(script), run_name="__main__")

"""vLLM's surface (metrics, routes, CLI flags, protocol shapes) as extracted from a pinned wheel.

``vllm-<version>.json`` is written by ``tools/vllm_surface/extract.py``: facts only (names, types,
numbers, file:line in the wheel), from vLLM's Apache-2.0 sources.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

PINNED = "0.33.0"


def load(version: str = PINNED) -> dict[str, Any]:
    """The extraction for ``version`` (shipped with the package)."""
    text = resources.files(__name__).joinpath(f"vllm-{version}.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data

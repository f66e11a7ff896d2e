"""Counting tokens in a backend's SSE stream as it passes through the router (pure).

The router forwards the backend's bytes untouched and reads them on the side: each ``data:`` event
whose choice carries output (completion ``text``, chat ``delta.content`` or tool-call deltas) is one
step's token; vLLM's chat role chunk, the usage-only chunk (``"choices": []``) and ``[DONE]`` are
not. When the stream carries usage, its ``completion_tokens`` is the exact count at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from polyserve.mockengine.protocol import SSEDecoder


def _has_output(choice: dict[str, Any]) -> bool:
    if "delta" in choice:
        delta = choice.get("delta") or {}
        return bool(
            delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content")
        )
    return bool(choice.get("text"))


@dataclass
class StreamTally:
    tokens: int = 0  # output events seen
    usage_tokens: int | None = None  # completion_tokens from a usage chunk, when one came
    finish_reason: str | None = None
    done: bool = False  # [DONE] seen
    error: str | None = None  # an error event from the backend
    _decoder: SSEDecoder = field(default_factory=SSEDecoder)

    def feed(self, data: bytes) -> int:
        """Read more bytes; returns how many output events they completed."""
        new = 0
        for payload in self._decoder.feed(data):
            if payload.strip() == "[DONE]":
                self.done = True
                continue
            try:
                obj = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if "error" in obj:
                err = obj["error"]
                self.error = str(err.get("message", err) if isinstance(err, dict) else err)
                continue
            usage = obj.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                self.usage_tokens = usage["completion_tokens"]
            for choice in obj.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                if _has_output(choice):
                    new += 1
                if choice.get("finish_reason"):
                    self.finish_reason = str(choice["finish_reason"])
        self.tokens += new
        return new

    @property
    def output_tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.tokens

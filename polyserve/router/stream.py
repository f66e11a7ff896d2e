"""Counting tokens in a backend's SSE stream as it passes through the router (pure).

The router forwards the backend's bytes untouched and reads them on the side: each ``data:`` event
whose choice carries output (completion ``text``; a chat delta's ``content``, ``reasoning`` (vLLM
0.33's reasoning parsers), ``reasoning_content`` (older vLLM and other servers) or tool calls) is
one step's token; vLLM's chat role chunk, the usage-only chunk (``"choices": []``) and ``[DONE]`` are
not. When the stream carries usage, its ``completion_tokens`` is the exact count at the end.
Mid-stream chunks in vLLM's compact JSON are judged from their text (parsing every token's JSON
was a third of the router's CPU); anything else is parsed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from polyserve.wire.openai import SSEDecoder

#: a chat delta's fields whose text is output (a token)
_DELTA_TEXTS = ("content", "reasoning", "reasoning_content")
#: what the fast path looks for of the first two: a string value, an empty one
_FAST_TEXTS = tuple((f'"{k}":"', f'"{k}":""') for k in _DELTA_TEXTS[:2])


def _fast_verdict(payload: str) -> bool | None:
    """Whether a mid-stream chunk in vLLM's compact JSON carries output, read from its text
    without parsing (the hot path: one call per token); None when it must be parsed (the last
    chunk, usage, errors, tool calls, other servers' spacing)."""
    if (
        '"finish_reason":null' not in payload
        or '"usage":{' in payload
        or '"error"' in payload
        or payload.count('"index":') != 1
    ):
        return None
    if '"text":"' in payload:
        return '"text":""' not in payload
    # "content": is a suffix of "reasoning_content": (parsed: one delta may carry both)
    if '"delta":{' in payload and '"tool_calls"' not in payload and '_content":' not in payload:
        return any(text in payload and empty not in payload for text, empty in _FAST_TEXTS)
    return None


def _has_output(choice: dict[str, Any]) -> bool:
    if "delta" in choice:
        delta = choice.get("delta") or {}
        return bool(delta.get("tool_calls")) or any(delta.get(k) for k in _DELTA_TEXTS)
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
            fast = _fast_verdict(payload)
            if fast is not None:
                new += fast
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

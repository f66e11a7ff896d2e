"""What the router reads of a client's request and how it refuses one: pure checks, no waiting.

A request refused before any backend produced output raises :class:`Refused`; the router's
middleware turns it into an OpenAI-shaped error (and a ``Retry-After`` when it may be retried).
The checks here are the body's JSON, the generation schema (coerced as vLLM does), ``max_tokens``
and ``n``, and the prompt's length in tokens; :data:`UNPLACED` says how a ticket the policy never
placed is answered.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError

from polyserve.wire import openai as proto
from polyserve.wire import tokenizer

Kind = Literal["chat", "completion"]


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=proto.dumps(obj), status=status, content_type="application/json", headers=headers
    )


#: Why a ticket was never placed -> (status, message, outcome).
UNPLACED: dict[str, tuple[int, str, str]] = {
    "deadline": (429, "The request's first-token deadline can no longer be met.", "rejected"),
    "no_backend": (503, "No backend is available for the request's tier.", "unavailable"),
    "tier_removed": (503, "The request's tier was removed.", "unavailable"),
    "model_removed": (503, "The model is no longer served.", "unavailable"),
    "shutdown": (503, "The router is shutting down.", "unavailable"),
    "queue_timeout": (
        503,
        "No backend took the request in time (router queue timeout).",
        "unavailable",
    ),
}


#: a JSON string escape that may be a lone UTF-16 surrogate (a cheap test before the full one)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _not_json(constant: str) -> Any:
    """``NaN`` and ``Infinity`` are Python's JSON extensions, not JSON: refused."""
    raise ValueError(f"{constant} is not JSON")


class Refused(Exception):
    """A request answered with an error before any backend produced output."""

    def __init__(
        self, status: int, message: str, outcome: str, param: str | None = None, retry: bool = False
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.outcome, self.param, self.retry = (
            status,
            message,
            outcome,
            param,
            retry,
        )


async def read_json(request: web.Request) -> dict[str, Any]:
    """The client's body as a JSON object, or Refused (400)."""
    return parse_json(await request.read())


def parse_json(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object: strict UTF-8, no NaN or Infinity, no lone surrogates."""
    try:
        # strict UTF-8: json.loads(bytes) would let UTF-8-encoded surrogates through
        body = json.loads(raw.decode(), parse_constant=_not_json)
        if _SURROGATE_ESCAPE.search(raw):  # a lone surrogate cannot be answered or sent:
            proto.dumps(body)  # UnicodeEncodeError
    except ValueError:
        msg = "The request body is not valid JSON (UTF-8, no NaN or Infinity, no lone surrogates)."
        raise Refused(400, msg, "client_error") from None
    except RecursionError:
        raise Refused(400, "The request body is nested too deeply.", "client_error") from None
    if not isinstance(body, dict):
        raise Refused(400, "The request body must be a JSON object.", "client_error")
    return body


def parse_generation(body: dict[str, Any], kind: Kind) -> proto.SamplingFields:
    """The body as a chat or completion request, typed as in the OpenAPI document and coerced as
    vLLM coerces it (pydantic's lax mode: ``"max_tokens": "10"`` and ``10.0`` are 10,
    ``"stream": 1`` is true): a client that works against vLLM works through the router. The
    router acts on the coerced values and forwards the client's body as it came (vLLM coerces it
    alike); its own rules (:func:`checked_max_tokens`) apply to the coerced values."""
    schema: type[BaseModel] = (
        proto.ChatCompletionRequest if kind == "chat" else proto.CompletionRequest
    )
    try:
        parsed = schema.model_validate(body)
    except ValidationError as e:
        raise Refused(400, proto.validation_message(e), "client_error") from None
    assert isinstance(parsed, proto.SamplingFields)
    return parsed


def checked_max_tokens(parsed: proto.SamplingFields) -> int | None:
    """The requested output limit (None: not given), once ``max_tokens`` and ``n`` are checked."""
    max_tokens = parsed.requested_max_tokens()
    if max_tokens is not None and max_tokens < 1:
        raise Refused(
            400,
            f"max_tokens must be at least 1, got {max_tokens}.",
            "client_error",
            "max_tokens",
        )
    if parsed.n not in (None, 1):
        raise Refused(400, "The router serves one choice per request (n=1).", "client_error", "n")
    return max_tokens


def prompt_tokens(parsed: BaseModel) -> int:
    """The prompt's length in tokens (what placement sizes the prefill by)."""
    if isinstance(parsed, proto.ChatCompletionRequest):
        return tokenizer.chat_prompt_tokens(parsed.message_texts(), parsed.add_generation_prompt)
    assert isinstance(parsed, proto.CompletionRequest)
    try:
        prompt = parsed.single_prompt()
    except proto.ApiError as e:
        raise Refused(400, e.message, "client_error", e.param) from None
    if isinstance(prompt, str):
        return tokenizer.completion_prompt_tokens(prompt, parsed.add_special_tokens)
    return len(prompt)


def prompt_text(parsed: BaseModel) -> str:
    """The prompt as text, for ``log_prompts`` only (off by default: prompts are user data)."""
    if isinstance(parsed, proto.ChatCompletionRequest):
        return "\n".join(f"{role}: {text}" for role, text in parsed.message_texts())
    prompt = getattr(parsed, "prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)
